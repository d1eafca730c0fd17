"""The statistics of the analyse stage: the per-class sum of lambda against class-wise accuracy
(Pearson rho) and the plots of entropy over the synthesis and of that correlation."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dsv.store.export import pyplot


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


def plot_entropy(iterations: np.ndarray, entropy: np.ndarray, path: Path) -> Path:
    plt = pyplot()
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
    plt = pyplot()
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
