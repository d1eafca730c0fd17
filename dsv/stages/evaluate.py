"""The ``evaluate`` stage. Each part measures what it has inputs for: the retrained models' test
accuracy (after the retrain stage; result ``retrained``), and an independent classifier's names of
the candidates (with an ``[evaluate]`` table; result ``verifier``, see
:mod:`dsv.evaluation.verifier`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from dsv import config as cfg
from dsv.errors import ConfigError
from dsv.evaluation.retraining import accuracy_on, fresh_model, load_weights, mean_std
from dsv.evaluation.verifier import score, verifier_probabilities
from dsv.pipeline import Stage, StageContext
from dsv.plugins import LoadedModel
from dsv.store import RunStore

RESULT_KEY = "verifier"


@attrs.define(kw_only=True)
class EvaluateConfig:
    """The independent classifier that checks the generated images (a model source, as [model])."""

    #: the verifier's model source (as ``model.source``), independent of the model synthesized from
    model: str = "efficientnet-lite2"
    #: its weights file (as ``model.weights_path``); empty: the source's own
    weights_path: str = ""
    #: options of its model source (as ``model.options``)
    options: dict[str, Any] = attrs.field(factory=dict)
    #: candidates per forward pass of the verifier
    batch_size: int = 16


def evaluate_retrained(context: StageContext, store: RunStore) -> None:
    """Test accuracy of every model the retrain stage wrote: result ``retrained`` (mean, std and
    each seed's accuracy). Nothing to do when the store holds no retrained models."""
    info = store.results.get("retrain")
    if not info:
        return
    images, labels = context.held_out()
    num_classes = len(context.require_data().classes)
    accuracies = []
    for name in info["weights"]:
        model = load_weights(fresh_model(context.model.module, 0), store.export_path(name))
        accuracies.append(accuracy_on(model, images, labels, num_classes)[0])
    store.put_result(
        "retrained",
        {**mean_std(accuracies), "accuracies": accuracies, "source": info["source"], "images": info["images"]},
    )


def load_verifier(context: StageContext, e: EvaluateConfig) -> LoadedModel:
    """The [evaluate] table's model, built from the model registry like [model]."""
    loaded = context.build_model(e.model, e.options, e.weights_path, "evaluate.model")
    return LoadedModel(loaded.module.eval(), loaded.spec)


def evaluate_verifier(context: StageContext, store: RunStore) -> None:
    """The verifier part; nothing without an [evaluate] table."""
    e = context.table("evaluate")
    if e is None:
        return
    verifier = load_verifier(context, e)
    meta = store.meta
    classes: list[Any] = list(meta.get("classes", []))
    if verifier.spec.num_classes != len(classes):
        raise ConfigError(
            f"{context.source}: evaluate.model: {e.model!r} has {verifier.spec.num_classes} classes, "
            f"the generator {len(classes)}; the verifier must name the same classes"
        )
    candidates = store.candidates()
    probs = verifier_probabilities(
        candidates["x"], meta["mean"], meta["std"], verifier, batch_size=e.batch_size, device=context.device
    )
    store.put_result(RESULT_KEY, {"model": e.model, **score(probs, candidates["targets"], classes)})


def run(context: StageContext, store: RunStore | None) -> list[Path]:
    assert store is not None
    evaluate_retrained(context, store)
    evaluate_verifier(context, store)
    return []


def check(evaluate: EvaluateConfig, config: cfg.PipelineConfig) -> list[str]:
    if evaluate.batch_size < 1:
        return [f"evaluate.batch_size: must be at least 1, got {evaluate.batch_size}"]
    return []


STAGE = Stage(name="evaluate", run=run, order=400, table=EvaluateConfig, check=check)
