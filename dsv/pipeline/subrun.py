"""Small syntheses that a stage runs inside a pipeline's run store (the interpolation, the edits).

Each is a run store of its own in ``<store>/generated/<name>``, made by the same
:func:`dsv.synthesis.build.build_run` and :func:`dsv.synthesis.execution.execute` as the main synthesis, so it
checkpoints and resumes the same way. Its config hash covers the main run's hash and the
[synthesis] table it ran; a sub-run of another config is replaced (it is derived data, and it
lives inside the pipeline's own store).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from dsv import config as cfg
from dsv.errors import ConfigError
from dsv.pipeline.stage import StageContext
from dsv.store import RunStore, is_store, remove_store
from dsv.store.meta import run_meta
from dsv.synthesis.build import build_run
from dsv.synthesis.execution import Hints, execute

SUBRUN_GROUP = "generated"


def run_subsynthesis(
    context: StageContext,
    store: RunStore,
    name: str,
    synthesis: cfg.SynthesisConfig,
    *,
    source: str,
    init: Any = None,
    priors: list[Any] | None = None,
    describe: dict[str, Any] | None = None,
) -> RunStore:
    """Run (or resume, or reuse when complete) the synthesis ``synthesis`` of the pipeline's model
    in ``<store>/generated/<name>``; ``source`` names the table for error messages. ``init``: a
    ready-made initializer used in place of ``synthesis.init``, which then only describes it (in
    the sub-run's config and its hash). ``priors``: ready-made priors added to ``synthesis.priors``,
    described by ``describe`` (what they are, in the sub-run's config and its hash)."""
    loaded = context.model
    synthesis = attrs.evolve(synthesis, groups=1)  # a sub-run is small: one group, on this process
    config = {"synthesis": cfg.CONVERTER.unstructure(synthesis), "parent": store.meta.get("config_hash")}
    if describe:
        config["extra"] = describe
    built = synthesis if init is None else attrs.evolve(synthesis, init=init)
    if priors:
        built = attrs.evolve(built, priors=[*built.priors, *priors])
    meta = run_meta(
        name=f"{context.config.run.name}/{name}",
        config=config,
        config_hash=cfg.config_hash(config),
        source=source,
        spec=loaded.spec,
        model=context.config.model.source,
        module=loaded.module,
    )
    path = Path(store.path) / SUBRUN_GROUP / name
    run = build_run(
        loaded.module,
        loaded.spec,
        built,
        plugins=context.plugins,
        device=context.device,
        seed=context.seed,
        data=context.data(),
        source=source,
        progress=context.progress,
        plugin_options=context.config.plugin_options,
    )
    replace = is_store(path) and RunStore.open(path).meta.get("config_hash") != meta["config_hash"]
    if replace:
        remove_store(path)
    sub, _ = execute(run, meta, store_path=path, hints=Hints(resume=f"dsv-pipeline run {context.source}"))
    assert sub is not None
    return sub


def check_class(context: StageContext, key: str, index: int) -> None:
    """A class index of a generation table must be one of the model's classes (known only now)."""
    count = len(context.model.spec.classes)
    if index >= count:
        raise ConfigError(f"{context.source}: {key}: class {index} is out of range (the model has {count} classes)")
