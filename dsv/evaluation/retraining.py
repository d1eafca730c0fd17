"""Retraining under one protocol: fresh models (the ``[model]`` source with new weights) trained by
a retrainer plugin on a DSV set, a coreset or a baseline, and their test accuracy. Every method a
stage or a benchmark compares goes through :func:`retrain_models` and :func:`accuracy_on`; the
weights are kept as plain NPZ arrays (no pickles)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from dsv import config as cfg
from dsv.errors import DsvError
from dsv.plugins import DsvPluginManager


class Augmented(nn.Module):
    """``model`` behind a chain of augmentations that act in training mode only (a retrainer
    then trains on augmented batches and is evaluated on clean ones)."""

    def __init__(self, model: nn.Module, augmentations: Sequence[Callable[[Tensor], Tensor]]):
        super().__init__()
        self.model = model
        self.augmentations = list(augmentations)

    def augment(self, x: Tensor) -> Tensor:
        for augmentation in self.augmentations:
            x = augmentation(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.model(self.augment(x) if self.training else x)


def fresh_model(template: nn.Module, seed: int) -> nn.Module:
    """A copy of ``template`` with newly initialized weights (every layer's ``reset_parameters``)."""
    model = copy.deepcopy(template).cpu()
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters"):  # a method; torch types other attributes as Tensor | Module
            cast(Callable[[], None], module.reset_parameters)()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def retrain_models(
    template: nn.Module,
    images: Tensor,
    labels: Tensor,
    retrainer: Any,
    *,
    augmentations: Sequence[Callable] = (),
    seeds: Sequence[int] = (0, 1, 2),
    device: torch.device | str = "cpu",
    progress: bool = False,
    teacher: nn.Module | None = None,
) -> list[nn.Module]:
    """One fresh model per seed, fitted by ``retrainer`` to ``images`` (model input space) and
    hard ``labels`` (or, for a retrainer that ``needs_teacher``, to ``teacher``'s predictions);
    returned in eval mode, without the augmentations."""
    if len(images) == 0:
        raise DsvError("retrain: no images to train on")
    dataset = TensorDataset(images.detach().float().cpu(), labels.long().cpu())
    models = []
    for seed in seeds:
        model = fresh_model(template, seed)
        extra = {"teacher": teacher} if getattr(retrainer, "needs_teacher", False) else {}
        retrainer.fit(Augmented(model, augmentations), dataset, device=device, seed=seed, progress=progress, **extra)
        models.append(model.cpu().eval())
    return models


def build_retrainer(spec: cfg.PluginSpec, plugins: DsvPluginManager, source: str, path: str) -> Any:
    return cfg.build(spec, plugins.registry("retrainers"), source=source, path=path)


def build_augmentations(
    specs: Sequence[cfg.PluginSpec], plugins: DsvPluginManager, source: str, table: str
) -> list[Any]:
    return [
        cfg.build(s, plugins.registry("augmentations"), source=source, path=f"{table}.augmentations[{i}]")
        for i, s in enumerate(specs)
    ]


def save_weights(model: nn.Module, path: Path) -> Path:
    np.savez(path, **{k: v.detach().cpu().numpy() for k, v in model.state_dict().items()})
    return path


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    with np.load(path, allow_pickle=False) as arrays:
        model.load_state_dict({k: torch.from_numpy(arrays[k]) for k in arrays.files})
    return model.eval()


def accuracy_on(
    model: nn.Module, images: Tensor, labels: Tensor, num_classes: int, batch_size: int = 250
) -> tuple[float, np.ndarray]:
    """(overall accuracy, accuracy of each class) of ``model`` on ``images`` (model input space);
    a class without test images gets nan."""
    right = torch.zeros(num_classes)
    total = torch.zeros(num_classes)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            xb, yb = images[start : start + batch_size], labels[start : start + batch_size]
            hit = (model(xb).argmax(1) == yb).float()
            right.index_add_(0, yb, hit)
            total.index_add_(0, yb, torch.ones_like(hit))
    per_class = (right / total).numpy()
    per_class[total.numpy() == 0] = np.nan
    return float(right.sum() / total.sum().clamp(min=1)), per_class


def mean_std(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "seeds": int(len(arr))}
