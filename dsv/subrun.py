"""Small syntheses that a stage runs inside a pipeline's run store (the interpolation, the edits).

Each is a run store of its own in ``<store>/generated/<name>``, made by the same
:func:`dsv.pipeline.build_run` and :func:`dsv.execution.execute` as the main synthesis, so it
checkpoints and resumes the same way. Its config hash covers the main run's hash and the
[synthesis] table it ran; a sub-run of another config is replaced (it is derived data, and it
lives inside the pipeline's own store).
"""

from __future__ import annotations

from pathlib import Path

import attrs
from typing import TYPE_CHECKING

import dsv
from dsv import config as cfg
from dsv.errors import ConfigError
from dsv.execution import Hints, execute
from dsv.pipeline import build_run, model_fingerprint
from dsv.rawconfig import config_hash
from dsv.store import RunStore, is_store, remove_store

if TYPE_CHECKING:
    from dsv.pipeline import Pipeline

SUBRUN_GROUP = "generated"


def run_subsynthesis(pipeline: "Pipeline", store: RunStore, name: str, synthesis: cfg.SynthesisConfig,
                     *, source: str) -> RunStore:
    """Run (or resume, or reuse when complete) the synthesis ``synthesis`` of the pipeline's model
    in ``<store>/generated/<name>``; ``source`` names the table for error messages."""
    loaded = pipeline.loaded_model
    synthesis = attrs.evolve(synthesis, groups=1)  # a sub-run is small: one group, on this process
    raw = cfg.CONVERTER.unstructure(synthesis)
    meta = {
        "name": f"{pipeline.config.run.name}/{name}",
        "dsv_version": dsv.__version__,
        "config": {"synthesis": raw, "parent": store.meta.get("config_hash")},
        "config_hash": config_hash({"synthesis": raw, "parent": store.meta.get("config_hash")}),
        "config_source": source,
        "classes": list(loaded.spec.classes),
        "mean": list(loaded.spec.mean),
        "std": list(loaded.spec.std),
        "model": pipeline.config.model.source,
        "model_fingerprint": model_fingerprint(loaded.module),
    }
    path = Path(store.path) / SUBRUN_GROUP / name
    run = build_run(loaded.module, loaded.spec, synthesis, plugins=pipeline.plugins, device=pipeline.device,
                    seed=pipeline.config.run.seed, data=pipeline.data(), source=source, progress=pipeline.progress)
    replace = is_store(path) and RunStore.open(path).meta.get("config_hash") != meta["config_hash"]
    if replace:
        remove_store(path)
    sub, _ = execute(run, meta, store_path=path, hints=Hints(resume=f"dsv-pipeline run {pipeline.source}"))
    return sub


def check_class(pipeline: "Pipeline", key: str, index: int) -> None:
    """A class index of a generation table must be one of the model's classes (known only now)."""
    count = len(pipeline.loaded_model.spec.classes)
    if index >= count:
        raise ConfigError(f"{pipeline.source}: {key}: class {index} is out of range (the model has {count} classes)")
