"""The analyse stage: entropy over the synthesis (complementary slackness pushes candidates to the
decision boundary, so their prediction entropy rises) and the per-class sum of lambda against the
base model's class-wise test accuracy (Pearson rho), as PNG plots and stage results."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dsv.distill_config import AnalyseConfig
from dsv.errors import DsvError

if TYPE_CHECKING:
    from dsv.pipeline import Pipeline
    from dsv.store import RunStore


def class_lambda_sums(lambdas: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Sum of the (non-negative) multipliers of each class."""
    return np.bincount(labels, weights=np.clip(lambdas, 0.0, None), minlength=num_classes)[:num_classes]


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; nan when either side is constant or has fewer than 2 finite pairs."""
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = np.asarray(a, float)[keep], np.asarray(b, float)[keep]
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def lambdas_and_labels(pipeline: "Pipeline", store: "RunStore", source: str) -> tuple[np.ndarray, np.ndarray, str]:
    """The multipliers the table names: the select stage's (fitted on real samples) or the
    synthesized candidates' (dead ones count 0); ``auto`` prefers the select stage's."""
    select = store.results.get("select")
    if source in ("auto", "select") and select:
        with np.load(store.export_path(select["npz"]), allow_pickle=False) as z:
            return z["pool_lambda"], z["pool_labels"].astype(np.int64), "select"
    if source == "select":
        raise DsvError(f"{store.path}: analyse.lambda_source = 'select' but the select stage has not run")
    if not store.has_candidates:
        raise DsvError(f"{store.path}: no multipliers to analyse (neither select nor synthesize ran)")
    c = store.candidates()
    return np.where(c["alive"], c["lambda"], 0.0), c["labels"].astype(np.int64), "synthesis"


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_entropy(iterations: np.ndarray, entropy: np.ndarray, path: Path) -> Path:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot(iterations, entropy)
    ax.set_xlabel("iteration")
    ax.set_ylabel("mean prediction entropy (nats)")
    ax.set_title("entropy of the candidates")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_lambda_accuracy(sums: np.ndarray, accuracy: np.ndarray, classes: list[str], rho: float, path: Path) -> Path:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(4.5, 3.6))
    ax.scatter(sums, accuracy)
    for name, x, y in zip(classes, sums, accuracy):
        ax.annotate(name, (x, y), fontsize=6)
    ax.set_xlabel("sum of lambda of the class")
    ax.set_ylabel("class-wise test accuracy")
    ax.set_title(f"Pearson rho = {rho:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def analyse(pipeline: "Pipeline", store: "RunStore") -> list[Path]:
    """The analyse stage: results ``entropy_start``, ``entropy_end`` (when a synthesis ran),
    ``pearson_lambda_accuracy`` and ``class_lambda_accuracy``; the two plots."""
    from dsv.evaluate_retrained import accuracy_on, held_out_tensors

    a = pipeline.config.analyse or AnalyseConfig()
    files = []
    history = store.history() if store.has_candidates else {}
    entropy = history.get("entropy")
    if entropy is not None and len(entropy):
        store.put_result("entropy_start", float(entropy[0]))
        store.put_result("entropy_end", float(entropy[-1]))
        if a.entropy_png:
            files.append(plot_entropy(history["iteration"], entropy, store.export_path(a.entropy_png)))
    classes = list(pipeline.data().classes)
    images, labels = held_out_tensors(pipeline)
    _, per_class = accuracy_on(pipeline.loaded_model.module.cpu(), images, labels, len(classes))
    lambdas, lambda_labels, source = lambdas_and_labels(pipeline, store, a.lambda_source)
    sums = class_lambda_sums(lambdas, lambda_labels, len(classes))
    rho = pearson(sums, per_class)
    store.put_result("pearson_lambda_accuracy", rho)
    store.put_result("class_lambda_accuracy", {"lambda_source": source, "lambda_sum": sums.tolist(),
                                               "test_accuracy": [float(v) for v in per_class]})
    if a.lambda_png:
        files.append(plot_lambda_accuracy(sums, per_class, classes, rho, store.export_path(a.lambda_png)))
    return files
