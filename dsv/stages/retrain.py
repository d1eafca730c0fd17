"""The ``retrain`` stage: ``retrain.seeds`` fresh models (the ``[model]`` source with new weights)
trained on the DSVs or on the select stage's coreset, under the protocol of
:mod:`dsv.evaluation.retraining`; their weights go into the run store as ``retrained-<seed>.npz``
for the evaluate stage."""

from __future__ import annotations

from pathlib import Path

import attrs
import torch
from torch import Tensor

from dsv import config as cfg
from dsv.errors import DsvError
from dsv.evaluation.retraining import build_augmentations, build_retrainer, retrain_models, save_weights
from dsv.kkt.selection import top_lambda_candidates
from dsv.pipeline import Stage, StageContext
from dsv.plugins import normalize
from dsv.stages.select import read_coreset
from dsv.store import RunStore

WEIGHTS_PREFIX = "retrained-"


@attrs.define(kw_only=True)
class RetrainConfig:
    """Train fresh models (the [model] source with new weights) on a DSV set or on a coreset."""

    #: how each fresh model is trained (``adam``, ``sgd``, ``sam``, ``teacher``, or a plugin's)
    retrainer: cfg.PluginSpec = attrs.field(
        factory=lambda: cfg.PluginSpec(name="adam", options={"epochs": 300, "batch_size": 256, "lr": 1e-3})
    )
    #: what the models train on: ``candidates`` (the synthesized DSVs) or ``coreset`` (the select
    #: stage's)
    source: str = "candidates"
    #: with ``source = "coreset"``: which exported size (0: the largest)
    top_k: int = 0
    #: fresh models trained, one per seed; the accuracy is their mean
    seeds: int = 3
    #: augmentations applied to each training batch, each ``{ name = ..., <options> }``
    augmentations: list[cfg.PluginSpec] = attrs.field(factory=list)
    #: also train on candidates whose lambda went negative
    keep_dead: bool = False


def training_set(context: StageContext, store: RunStore, r: RetrainConfig) -> tuple[Tensor, Tensor]:
    """The images (model input space) and labels the retrain table names."""
    if r.source == "candidates":
        if not store.has_candidates:
            raise DsvError(f"{store.path}: retrain.source = 'candidates' needs a synthesized run in the store")
        c = store.candidates()
        pool = top_lambda_candidates(
            torch.from_numpy(c["lambda"]),
            torch.from_numpy(c["alive"]),
            torch.from_numpy(c["labels"]),
            context.config.synthesis.keep_per_class,
        ).numpy()
        keep = pool if r.keep_dead else pool[c["alive"][pool]]
        return torch.from_numpy(c["x"][keep]), torch.from_numpy(c["labels"][keep]).long()
    select = context.table("select")
    images, labels = read_coreset(store, select.npz if select else "coreset.npz", r.top_k)
    data = context.require_data()
    return normalize(images, data.mean, data.std), labels


def run(context: StageContext, store: RunStore | None) -> list[Path]:
    assert store is not None
    r = context.table("retrain") or RetrainConfig()
    images, labels = training_set(context, store, r)
    retrainer = build_retrainer(r.retrainer, context.plugins, context.source, "retrain.retrainer")
    augs = build_augmentations(r.augmentations, context.plugins, context.source, "retrain")
    seeds = [context.seed * 1000 + i for i in range(r.seeds)]
    models = retrain_models(
        context.model.module,
        images,
        labels,
        retrainer,
        augmentations=augs,
        seeds=seeds,
        device=context.device,
        progress=context.progress,
        teacher=context.model.module,
    )
    files = [save_weights(m, store.export_path(f"{WEIGHTS_PREFIX}{s}.npz")) for m, s in zip(models, seeds)]
    store.put_result(
        "retrain", {"source": r.source, "images": int(len(images)), "seeds": seeds, "weights": [f.name for f in files]}
    )
    return files


def check(retrain: RetrainConfig, config: cfg.PipelineConfig) -> list[str]:
    """Range checks of the [retrain] table."""
    problems: list[str] = []
    if retrain.seeds < 1:
        problems.append(f"retrain.seeds: must be at least 1, got {retrain.seeds}")
    if retrain.source not in ("candidates", "coreset"):
        problems.append(f"retrain.source: expected 'candidates' or 'coreset', got {retrain.source!r}")
    if retrain.top_k < 0:
        problems.append(f"retrain.top_k: must be at least 0 (0: the largest), got {retrain.top_k}")
    return problems


STAGE = Stage(name="retrain", run=run, order=300, table=RetrainConfig, needs_data=True, check=check)
