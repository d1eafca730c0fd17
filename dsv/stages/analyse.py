"""The ``analyse`` stage: entropy over the synthesis (complementary slackness pushes candidates to
the decision boundary, so their prediction entropy rises) and the per-class sum of lambda against
the base model's class-wise test accuracy (Pearson rho), as PNG plots and stage results; the
statistics are :mod:`dsv.evaluation.analysis`."""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np

from dsv import config as cfg
from dsv.errors import DsvError
from dsv.evaluation.analysis import class_lambda_sums, pearson, plot_entropy, plot_lambda_accuracy
from dsv.evaluation.retraining import accuracy_on
from dsv.pipeline import Stage, StageContext
from dsv.store import RunStore


@attrs.define(kw_only=True)
class AnalyseConfig:
    """Entropy over the synthesis, per-class sum of lambda against class-wise test accuracy."""

    #: whose multipliers are summed per class: ``select``'s (real samples), ``synthesis``'s (the
    #: candidates), or ``auto`` (select's when it ran)
    lambda_source: str = "auto"
    #: plot of the mean entropy over the synthesis, written inside the run store; empty for none
    entropy_png: str = "entropy.png"
    #: plot of each class's sum of lambda against its test accuracy (with Pearson's rho), written
    #: inside the run store; empty for none
    lambda_png: str = "lambda_accuracy.png"


def lambdas_and_labels(store: RunStore, source: str) -> tuple[np.ndarray, np.ndarray, str]:
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


def run(context: StageContext, store: RunStore | None) -> list[Path]:
    """The analyse stage: results ``entropy_start``, ``entropy_end`` (when a synthesis ran),
    ``pearson_lambda_accuracy`` and ``class_lambda_accuracy``; the two plots."""
    assert store is not None
    a = context.table("analyse") or AnalyseConfig()
    files = []
    history = store.history() if store.has_candidates else {}
    entropy = history.get("entropy")
    if entropy is not None and len(entropy):
        store.put_result("entropy_start", float(entropy[0]))
        store.put_result("entropy_end", float(entropy[-1]))
        if a.entropy_png:
            files.append(plot_entropy(history["iteration"], entropy, store.export_path(a.entropy_png)))
    classes = list(context.require_data().classes)
    images, labels = context.held_out()
    _, per_class = accuracy_on(context.model.module.cpu(), images, labels, len(classes))
    lambdas, lambda_labels, source = lambdas_and_labels(store, a.lambda_source)
    sums = class_lambda_sums(lambdas, lambda_labels, len(classes))
    rho = pearson(sums, per_class)
    store.put_result("pearson_lambda_accuracy", rho)
    store.put_result(
        "class_lambda_accuracy",
        {"lambda_source": source, "lambda_sum": sums.tolist(), "test_accuracy": [float(v) for v in per_class]},
    )
    if a.lambda_png:
        files.append(plot_lambda_accuracy(sums, per_class, classes, rho, store.export_path(a.lambda_png)))
    return files


def check(analyse: AnalyseConfig, config: cfg.PipelineConfig) -> list[str]:
    """Range checks of the [analyse] table."""
    problems: list[str] = []
    if analyse.lambda_source not in ("auto", "select", "synthesis"):
        problems.append(
            f"analyse.lambda_source: expected 'auto', 'select' or 'synthesis', got {analyse.lambda_source!r}"
        )
    problems += cfg.file_name_problems(
        "analyse", {"entropy_png": analyse.entropy_png, "lambda_png": analyse.lambda_png}
    )
    return problems


STAGE = Stage(name="analyse", run=run, order=500, table=AnalyseConfig, needs_data=True, check=check)
