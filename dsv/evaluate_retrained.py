"""The retrained-accuracy part of the evaluate stage: test accuracy of the retrained models."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from dsv.pipeline import Pipeline
    from dsv.store import RunStore


def accuracy_on(model: nn.Module, images: Tensor, labels: Tensor, num_classes: int,
                batch_size: int = 250) -> tuple[float, np.ndarray]:
    """(overall accuracy, accuracy of each class) of ``model`` on ``images`` (model input space);
    a class without test images gets nan."""
    right = torch.zeros(num_classes)
    total = torch.zeros(num_classes)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            xb, yb = images[start:start + batch_size], labels[start:start + batch_size]
            hit = (model(xb).argmax(1) == yb).float()
            right.index_add_(0, yb, hit)
            total.index_add_(0, yb, torch.ones_like(hit))
    per_class = (right / total).numpy()
    per_class[total.numpy() == 0] = np.nan
    return float(right.sum() / total.sum().clamp(min=1)), per_class


def held_out_tensors(pipeline: "Pipeline") -> tuple[Tensor, Tensor]:
    """The test split in model input space."""
    from dsv.retrain import normalize

    data = pipeline.data()
    images, labels = data.tensors("test")
    return normalize(images, data.mean, data.std), labels


def mean_std(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "seeds": int(len(arr))}


def evaluate_retrained(pipeline: "Pipeline", store: "RunStore") -> list[Path]:
    """Test accuracy of every model the retrain stage wrote: result ``retrained`` (mean, std and
    each seed's accuracy). Nothing to do (returns []) when the store holds no retrained models."""
    from dsv.retrain import fresh_model, load_weights

    info = store.results.get("retrain")
    if not info:
        return []
    images, labels = held_out_tensors(pipeline)
    num_classes = len(pipeline.data().classes)
    accuracies = []
    for name in info["weights"]:
        model = load_weights(fresh_model(pipeline.loaded_model.module, 0), store.export_path(name))
        accuracies.append(accuracy_on(model, images, labels, num_classes)[0])
    store.put_result("retrained", {**mean_std(accuracies), "accuracies": accuracies,
                                   "source": info["source"], "images": info["images"]})
    return []
