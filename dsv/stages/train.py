"""The ``train`` stage: fit the base classifier when its model source gave it no weights, or reuse
the weights cached for the same model, training table, data and seed (never overwritten)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import attrs
import torch

from dsv import config as cfg
from dsv.errors import ConfigError
from dsv.evaluation.retraining import Augmented, build_augmentations
from dsv.models import load_state_dict
from dsv.pipeline import Stage, StageContext
from dsv.store import RunStore
from dsv.training import SupervisedRetrainer, normalized

log = logging.getLogger("dsv")


UNTIL_KEYS = ("train_accuracy", "train_loss")


def _check_until(_instance, attribute, value: dict[str, float]) -> None:
    for key, bound in value.items():
        if key not in UNTIL_KEYS:
            raise ValueError(f"unknown criterion {key!r} (known: {', '.join(UNTIL_KEYS)})")
        if key == "train_accuracy" and not 0.0 < bound <= 1.0:
            raise ValueError(f"train_accuracy must be in (0, 1], got {bound}")
        if key == "train_loss" and not bound > 0.0:
            raise ValueError(f"train_loss must be > 0, got {bound}")


@attrs.define(kw_only=True)
class TrainConfig:
    """``until``: train until every criterion holds on the whole training split, checked after
    each epoch (``{ train_accuracy = 0.999 }``, ``{ train_loss = 0.01 }``), for at most
    ``max_epochs`` (0: the retrainer's ``epochs``). Without it the retrainer's epochs are trained."""

    #: how the base model is trained (``adam``, ``sgd``, ``sam``, or a plugin's)
    retrainer: cfg.PluginSpec = attrs.field(factory=lambda: cfg.PluginSpec(name="adam"))
    #: train until every criterion holds on the whole training split, checked after each epoch
    #: (``{ train_accuracy = 0.999 }``, ``{ train_loss = 0.01 }``); empty: the retrainer's epochs
    until: dict[str, float] = attrs.field(factory=dict, validator=_check_until)
    #: augmentations of the training batches (e.g. the paper's flip and crop for its base ConvNet),
    #: each ``{ name = ..., <options> }``; applied in training mode only
    augmentations: list[cfg.PluginSpec] = attrs.field(factory=list)
    #: with ``until``: at most this many epochs (0: the retrainer's ``epochs``)
    max_epochs: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    #: where trained weights are cached, by model, training table, data and seed (never overwritten)
    cache_dir: str = "stores/models"


def cache_path(context: StageContext, table: TrainConfig) -> Path:
    """Where the weights of this model, training table, data and seed are cached."""
    data = context.require_data()
    key = {
        # the input domain does not change the trained weights
        "model": attrs.asdict(context.config.model, filter=lambda a, _: a.name != "input_range"),
        "train": cfg.CONVERTER.unstructure(table.retrainer),
        # (only when set: the weights cached for a plain table keep their name)
        **({"until": table.until, "max_epochs": table.max_epochs} if table.until else {}),
        **(
            {"augmentations": [cfg.CONVERTER.unstructure(a) for a in table.augmentations]}
            if table.augmentations
            else {}
        ),
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
    data = context.require_data()
    train_set = normalized(data.train, data.mean, data.std)
    record = cache.with_suffix(".json")  # how training went: epochs, final training accuracy and loss
    if cache.exists():
        log.info("reusing trained weights %s", cache)
        loaded.module.load_state_dict(load_state_dict(cache))
        facts = _read_record(record)
    else:
        retrainer = cfg.build(
            table.retrainer, context.plugins.registry("retrainers"), source=context.source, path="train.retrainer"
        )
        epochs = {"done": 0}
        stop: Callable[[torch.nn.Module, int], bool] | None = None
        if table.until:
            if not isinstance(retrainer, SupervisedRetrainer):
                raise ConfigError(
                    f"{context.source}: train.until: retrainer {table.retrainer.name!r} cannot stop on a criterion"
                )

            def until(model: torch.nn.Module, epoch: int) -> bool:
                epochs["done"] = epoch
                fit = training_fit(model, train_set, context.device)
                log.info("epoch %d: training accuracy %.4f, loss %.4f", epoch, fit["accuracy"], fit["loss"])
                return _met(table.until, fit)

            stop = until

        augmentations = build_augmentations(table.augmentations, context.plugins, context.source, "train")
        retrainer.fit(
            Augmented(loaded.module, augmentations) if augmentations else loaded.module,
            train_set,
            device=context.device,
            seed=context.seed,
            progress=context.progress,
            **({"epochs": table.max_epochs or retrainer.epochs, "stop": stop} if stop is not None else {}),
        )
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        torch.save({k: v.detach().cpu() for k, v in loaded.module.state_dict().items()}, tmp)
        tmp.rename(cache)
        facts = {"epochs": epochs["done"] or getattr(retrainer, "epochs", None)}
    loaded.module.cpu().eval()
    loaded.trainable = False
    if "train_accuracy" not in facts:
        fit = training_fit(loaded.module, train_set, "cpu")
        facts.update(train_accuracy=fit["accuracy"], train_loss=fit["loss"])
        _write_record(record, facts)
    if table.until and not _met(table.until, {"accuracy": facts["train_accuracy"], "loss": facts["train_loss"]}):
        log.warning(
            "train.until %s not reached in %s epochs (training accuracy %.4f, loss %.4f)",
            table.until,
            facts.get("epochs"),
            facts["train_accuracy"],
            facts["train_loss"],
        )
    test_accuracy = context.test_accuracy(loaded.module)
    context.facts["base_test_accuracy"] = test_accuracy
    context.facts["base_model"] = {**facts, "test_accuracy": test_accuracy}
    return []


def training_fit(
    model: torch.nn.Module, dataset: torch.utils.data.Dataset, device, batch_size: int = 500
) -> dict[str, float]:
    """Accuracy and mean cross entropy of ``model`` (eval mode) on the whole training split."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    right, loss, n = 0, 0.0, 0
    model.eval()
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            right += int((logits.argmax(1) == y).sum())
            loss += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
            n += len(y)
    return {"accuracy": right / n, "loss": loss / n}


def _met(until: dict[str, float], fit: dict[str, float]) -> bool:
    return all(
        fit["accuracy"] >= bound if key == "train_accuracy" else fit["loss"] <= bound for key, bound in until.items()
    )


def _read_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _write_record(path: Path, facts: dict) -> None:
    if path.exists():  # never overwritten, like the weights next to it
        return
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(facts, indent=1))
    tmp.rename(path)


def check(table: TrainConfig, config: cfg.PipelineConfig) -> list[str]:
    if "train" in config.run.stages and config.data is None:
        return ["train: the train stage needs a [data] table"]
    if table.max_epochs and not table.until:
        return ["train.max_epochs: only used with train.until (set the retrainer's epochs instead)"]
    return []


STAGE = Stage(name="train", run=run, order=0, table=TrainConfig, resumable=False, phase="model", check=check)
