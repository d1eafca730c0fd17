"""The ``train`` stage: fit the base classifier when its model source gave it no weights, or reuse
the weights cached for the same model, training table, data and seed (never overwritten)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import attrs
import torch

from dsv import config as cfg
from dsv.builtin.models import load_state_dict
from dsv.builtin.retrainers import Normalized
from dsv.errors import ConfigError
from dsv.pipeline import Stage, StageContext
from dsv.store import RunStore

log = logging.getLogger("dsv")


@attrs.define(kw_only=True)
class TrainConfig:
    retrainer: cfg.PluginSpec = attrs.field(factory=lambda: cfg.PluginSpec(name="adam"))
    cache_dir: str = "stores/models"


def cache_path(context: StageContext, table: TrainConfig) -> Path:
    """Where the weights of this model, training table, data and seed are cached."""
    data = context.require_data()
    key = {
        # the input domain does not change the trained weights
        "model": attrs.asdict(context.config.model, filter=lambda a, _: a.name != "input_range"),
        "train": cfg.CONVERTER.unstructure(table.retrainer),
        "data": data.fingerprint,
        "seed": context.seed,
        "torch": torch.__version__.split("+")[0],
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    name = context.config.model.source.replace(":", "_").replace("/", "_")
    return Path(table.cache_dir) / f"{name}-{digest}.pt"


def run(context: StageContext, store: RunStore | None) -> list[Path]:
    """Train the model when it needs weights (and record its test accuracy for the store)."""
    loaded = context.model
    if not loaded.trainable:
        return []
    table: TrainConfig | None = context.table("train")
    if table is None:
        raise ConfigError(
            f"{context.source}: model {context.config.model.source!r} has no weights: add a [train] "
            "table and the 'train' stage, or give model.weights_path"
        )
    cache = cache_path(context, table)
    if cache.exists():
        log.info("reusing trained weights %s", cache)
        loaded.module.load_state_dict(load_state_dict(cache))
    else:
        retrainer = cfg.build(
            table.retrainer, context.plugins.registry("retrainers"), source=context.source, path="train.retrainer"
        )
        data = context.require_data()
        retrainer.fit(
            loaded.module,
            Normalized(data.train, data.mean, data.std),
            device=context.device,
            seed=context.seed,
            progress=context.progress,
        )
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        torch.save({k: v.detach().cpu() for k, v in loaded.module.state_dict().items()}, tmp)
        tmp.rename(cache)
    loaded.module.cpu().eval()
    loaded.trainable = False
    context.facts["base_test_accuracy"] = context.test_accuracy(loaded.module)
    return []


def check(table: TrainConfig, config: cfg.PipelineConfig) -> list[str]:
    if "train" in config.run.stages and config.data is None:
        return ["train: the train stage needs a [data] table"]
    return []


STAGE = Stage(name="train", run=run, order=0, table=TrainConfig, resumable=False, phase="model", check=check)
