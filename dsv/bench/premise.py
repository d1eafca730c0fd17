"""DeepKKT's premise against training: bias-free ReLU MLPs on a few Fashion-MNIST images, trained by
full-batch gradient descent (:class:`dsv.training.FullBatchGD`) from several initial scales, the
premise (:func:`dsv.kkt.premise.measure_premise`) measured every ``check_every`` epochs: the
residual against epochs and against the initial scale (benchmarks/premise.py prints the table)."""

from __future__ import annotations

import time
from typing import Any

import torch

from dsv.builtin.datasets import fashion_mnist
from dsv.kkt.premise import measure_premise
from dsv.models import MLP
from dsv.models.sources import pixel_mean
from dsv.plugins import normalize
from dsv.training import FullBatchGD, normalized

HEADER = (
    f"{'init':>8} {'epochs':>7} {'residual':>9} {'best':>7} {'@epoch':>7} {'on margin':>9} "
    f"{'nonzero λ':>9} {'λ off':>6} {'stopped':>7} {'test acc':>8} {'s':>6}"
)


def train_one(
    *,
    classes: list[int],
    per_class: int,
    width: int,
    depth: int,
    init_scale: float,
    lr: float,
    normalized_steps: bool,
    epochs: int,
    check_every: int,
    stop_residual: float,
    margin: str,
    decay_epochs: int = 0,
    stop_off_margin: float = 0.1,
    center_pixels: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Train one MLP from ``init_scale`` and measure its premise along the way and at the end
    (``center_pixels``: the training images' per-pixel mean subtracted inside the model)."""
    data = fashion_mnist(classes=classes, per_class=per_class, center=True)
    torch.manual_seed(seed)
    model = MLP(
        data.channels,
        data.size,
        data.num_classes,
        width=width,
        depth=depth,
        bias=False,
        init_scale=init_scale,
        center_head=True,
        input_mean=pixel_mean(data) if center_pixels else None,
    )
    retrainer = FullBatchGD(
        lr=lr,
        decay_epochs=decay_epochs,
        stop_off_margin=stop_off_margin,
        epochs=epochs,
        normalized=normalized_steps,
        check_every=check_every,
        stop_residual=stop_residual,
        premise_margin=margin,
    )
    started = time.perf_counter()
    retrainer.fit(model, normalized(data.train, data.mean, data.std), seed=seed, progress=False)
    seconds = time.perf_counter() - started
    images, labels = data.tensors("train")
    final = measure_premise(model, normalize(images, data.mean, data.std), labels, margin=margin)
    test_x, test_y = data.tensors("test")
    with torch.no_grad():
        accuracy = float((model(normalize(test_x, data.mean, data.std)).argmax(1) == test_y).float().mean())
    history = list(retrainer.history)
    best = min(history, key=lambda h: h["residual"]) if history else {"residual": final.residual, "epoch": 0}
    return {
        "init_scale": init_scale,
        "classes": classes,
        "n": len(labels),
        "width": width,
        "depth": depth,
        "lr": lr,
        "decay_epochs": decay_epochs,
        "center_pixels": center_pixels,
        "normalized": normalized_steps,
        "margin": final.margin,
        "epochs": history[-1]["epoch"] if history else epochs,
        "stopped": bool(history) and retrainer.holds(final),
        "residual": final.residual,
        "best_residual": best["residual"],
        "best_epoch": best["epoch"],
        "on_margin": final.on_margin,
        "nonzero_lambda": final.nonzero_lambda,
        "lambda_off_margin": final.lambda_off_margin,
        "misclassified": final.misclassified,
        "test_accuracy": accuracy,
        "seconds": seconds,
        "history": history,
    }


def format_row(row: dict[str, Any]) -> str:
    return (
        f"{row['init_scale']:>8.0e} {row['epochs']:>7} {row['residual']:>9.4f} {row['best_residual']:>7.4f} "
        f"{row['best_epoch']:>7} {row['on_margin']:>9} {row['nonzero_lambda']:>9} "
        f"{row['lambda_off_margin']:>6.3f} {'yes' if row['stopped'] else 'no':>7} {row['test_accuracy']:>8.3f} "
        f"{row['seconds']:>6.0f}"
    )


def format_history(row: dict[str, Any], every: int = 1) -> str:
    """The residual against epochs of one run, one ``epoch:residual`` per measurement (every
    ``every``-th of them)."""
    return " ".join(f"{h['epoch']}:{h['residual']:.3f}" for h in row["history"][every - 1 :: every])
