"""The retrain stage: train fresh models on a DSV set or a coreset, under one protocol.

Every method a benchmark compares goes through :func:`retrain_models`: the same model (the
``[model]`` source with new weights), the same retrainer plugin, the same augmentations, the same
seeds. The trained weights are written into the run store as ``retrained-<seed>.npz`` (plain
arrays, no pickles) for the evaluate stage.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from dsv import config as cfg
from dsv.distill_config import RetrainConfig
from dsv.errors import DsvError

if TYPE_CHECKING:
    from dsv.pipeline import Pipeline
    from dsv.store import RunStore

WEIGHTS_PREFIX = "retrained-"


class Augmented(nn.Module):
    """``model`` behind a chain of augmentations that act in training mode only (a retrainer
    then trains on augmented batches and is evaluated on clean ones)."""

    def __init__(self, model: nn.Module, augmentations: Sequence[Callable[[Tensor], Tensor]]):
        super().__init__()
        self.model = model
        self.augmentations = list(augmentations)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            for augment in self.augmentations:
                x = augment(x)
        return self.model(x)


def fresh_model(template: nn.Module, seed: int) -> nn.Module:
    """A copy of ``template`` with newly initialized weights (every layer's ``reset_parameters``)."""
    model = copy.deepcopy(template).cpu()
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def retrain_models(template: nn.Module, images: Tensor, labels: Tensor, retrainer: Any, *,
                   augmentations: Sequence[Callable] = (), seeds: Sequence[int] = (0, 1, 2),
                   device: torch.device | str = "cpu", progress: bool = False) -> list[nn.Module]:
    """One fresh model per seed, fitted by ``retrainer`` to ``images`` (model input space) and
    hard ``labels``; returned in eval mode, without the augmentations."""
    if len(images) == 0:
        raise DsvError("retrain: no images to train on")
    dataset = TensorDataset(images.detach().float().cpu(), labels.long().cpu())
    models = []
    for seed in seeds:
        model = fresh_model(template, seed)
        retrainer.fit(Augmented(model, augmentations), dataset, device=device, seed=seed, progress=progress)
        models.append(model.cpu().eval())
    return models


def build_retrainer(spec: cfg.PluginSpec, plugins, source: str, path: str) -> Any:
    return cfg.build(spec, plugins.registry("retrainers"), source=source, path=path)


def build_augmentations(specs: Sequence[cfg.PluginSpec], plugins, source: str, table: str) -> list:
    return [cfg.build(s, plugins.registry("augmentations"), source=source, path=f"{table}.augmentations[{i}]")
            for i, s in enumerate(specs)]


def training_set(pipeline: "Pipeline", store: "RunStore", r: RetrainConfig) -> tuple[Tensor, Tensor]:
    """The images (model input space) and labels the retrain table names."""
    if r.source == "candidates":
        if not store.has_candidates:
            raise DsvError(f"{store.path}: retrain.source = 'candidates' needs a synthesized run in the store")
        c = store.candidates()
        keep = np.ones_like(c["alive"]) if r.keep_dead else c["alive"]
        return torch.from_numpy(c["x"][keep]), torch.from_numpy(c["labels"][keep]).long()
    from dsv.select import read_coreset

    select = pipeline.config.select
    images, labels = read_coreset(store, select.npz if select else "coreset.npz", r.top_k)
    data = pipeline.data()
    return normalize(images, data.mean, data.std), labels


def normalize(images: Tensor, mean, std) -> Tensor:
    """Images in [0, 1] -> model input space."""
    return (images - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def save_weights(model: nn.Module, path: Path) -> Path:
    np.savez(path, **{k: v.detach().cpu().numpy() for k, v in model.state_dict().items()})
    return path


def load_weights(model: nn.Module, path: Path) -> nn.Module:
    with np.load(path, allow_pickle=False) as arrays:
        model.load_state_dict({k: torch.from_numpy(arrays[k]) for k in arrays.files})
    return model.eval()


def retrain(pipeline: "Pipeline", store: "RunStore") -> list[Path]:
    """The retrain stage: ``retrain.seeds`` fresh models trained on the DSVs or the coreset."""
    r = pipeline.config.retrain or RetrainConfig()
    images, labels = training_set(pipeline, store, r)
    retrainer = build_retrainer(r.retrainer, pipeline.plugins, pipeline.source, "retrain.retrainer")
    augs = build_augmentations(r.augmentations, pipeline.plugins, pipeline.source, "retrain")
    seeds = [pipeline.config.run.seed * 1000 + i for i in range(r.seeds)]
    models = retrain_models(pipeline.loaded_model.module, images, labels, retrainer, augmentations=augs,
                            seeds=seeds, device=pipeline.device, progress=pipeline.progress)
    files = [save_weights(m, store.export_path(f"{WEIGHTS_PREFIX}{s}.npz")) for m, s in zip(models, seeds)]
    store.put_result("retrain", {"source": r.source, "images": int(len(images)), "seeds": seeds,
                                 "weights": [f.name for f in files]})
    return files
