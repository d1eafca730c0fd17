"""The ``evaluate`` stage. Each part measures what it has inputs for: the retrained models' test
accuracy (after the retrain stage; result ``retrained``), and independent classifiers' names of
the candidates (with an ``[evaluate]`` table; see :mod:`dsv.evaluation.verifier`): result
``verifiers`` holds one entry per verifier (by model name), result ``verifier`` the first one's
(what the report shows). Two verifiers that disagree are a finding: both are recorded."""

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
ALL_RESULTS_KEY = "verifiers"


@attrs.define(kw_only=True)
class EvaluateConfig:
    """The independent classifiers that check the generated images (model sources, as [model])."""

    #: the verifier's model source (as ``model.source``), independent of the model synthesized from
    model: str = "efficientnet-lite2"
    #: several verifiers, each scored on its own (``["efficientnet-lite1", "efficientnet-lite2"]``);
    #: when given it replaces ``model``, and ``weights_path`` and ``options`` apply to each of them
    models: list[str] = attrs.field(factory=list)
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


def verifier_names(e: EvaluateConfig) -> list[str]:
    """The verifiers of an [evaluate] table: ``models``, or ``model`` alone."""
    return list(e.models) or [e.model]


def load_verifier(context: StageContext, e: EvaluateConfig, name: str | None = None) -> LoadedModel:
    """One of the [evaluate] table's models (the first by default), built from the model registry
    like [model]."""
    name = name or verifier_names(e)[0]
    key = "evaluate.models" if e.models else "evaluate.model"
    loaded = context.build_model(name, e.options, e.weights_path, key)
    return LoadedModel(loaded.module.eval(), loaded.spec)


def verifier_probabilities_of(context: StageContext, x, mean, std) -> dict[str, Any]:
    """Each [evaluate] verifier's softmax (by model name) of model-space images ``x``; empty
    without an [evaluate] table (the strips and edits are then shown unscored)."""
    e = context.table("evaluate")
    if e is None:
        return {}
    return {
        name: verifier_probabilities(
            x, mean, std, load_verifier(context, e, name), batch_size=e.batch_size, device=context.device
        )
        for name in verifier_names(e)
    }


def evaluate_verifier(context: StageContext, store: RunStore) -> None:
    """The verifier part; nothing without an [evaluate] table."""
    e = context.table("evaluate")
    if e is None:
        return
    meta = store.meta
    classes: list[Any] = list(meta.get("classes", []))
    candidates = store.candidates()
    results = {}
    for name in verifier_names(e):
        verifier = load_verifier(context, e, name)
        if verifier.spec.num_classes != len(classes):
            key = "evaluate.models" if e.models else "evaluate.model"
            raise ConfigError(
                f"{context.source}: {key}: {name!r} has {verifier.spec.num_classes} classes, "
                f"the generator {len(classes)}; the verifier must name the same classes"
            )
        probs = verifier_probabilities(
            candidates["x"], meta["mean"], meta["std"], verifier, batch_size=e.batch_size, device=context.device
        )
        results[name] = {"model": name, **score(probs, candidates["targets"], classes)}
    store.put_result(RESULT_KEY, next(iter(results.values())))
    store.put_result(ALL_RESULTS_KEY, results)


def run(context: StageContext, store: RunStore | None) -> list[Path]:
    assert store is not None
    evaluate_retrained(context, store)
    evaluate_verifier(context, store)
    return []


def check(evaluate: EvaluateConfig, config: cfg.PipelineConfig) -> list[str]:
    problems = []
    if evaluate.batch_size < 1:
        problems.append(f"evaluate.batch_size: must be at least 1, got {evaluate.batch_size}")
    if len(set(evaluate.models)) != len(evaluate.models):
        problems.append(f"evaluate.models: a verifier is named twice in {evaluate.models}")
    if len(evaluate.models) > 1 and evaluate.weights_path:
        problems.append("evaluate.weights_path: one weights file cannot fit several verifiers (evaluate.models)")
    return problems


STAGE = Stage(name="evaluate", run=run, order=400, table=EvaluateConfig, check=check)
