"""The ``synthesize`` stage: DeepKKT on the candidates of the ``[synthesis]`` table, into the run
store. A new run, or the continuation of the one in the store (each candidate group from its last
checkpoint, with the same result as if it had never stopped). Every rank runs the groups it owns;
rank 0 writes the shared metadata."""

from __future__ import annotations

from pathlib import Path

from dsv.pipeline import Stage, StageContext
from dsv.store import RunStore
from dsv.synthesis import distributed
from dsv.synthesis.build import build_run, seed_everything, target_matrix
from dsv.synthesis.engine import SynthesisRun
from dsv.synthesis.execution import execute_groups
from dsv.synthesis.groups import group_seed, group_slices


def group_run(context: StageContext, group: int) -> SynthesisRun:
    """The run of candidate group ``group`` (:mod:`dsv.synthesis.groups`), every RNG seeded for it."""
    loaded = context.model
    s = context.config.synthesis
    count = len(target_matrix(s.targets, s.classes, s.candidates_per_class, loaded.spec.num_classes, context.source))
    seed = group_seed(context.seed, group)
    seed_everything(seed)
    return build_run(
        loaded.module,
        loaded.spec,
        s,
        plugins=context.plugins,
        device=context.device,
        seed=seed,
        data=context.data(),
        source=context.source,
        progress=context.progress and distributed.is_main_rank(),
        candidates=group_slices(count, s.groups, source=context.source)[group],
        plugin_options=context.config.plugin_options,
    )


def run(context: StageContext, store: RunStore | None) -> list[Path]:
    execute_groups(
        lambda g: group_run(context, g),
        context.config.synthesis.groups,
        context.store_meta(),
        store_path=context.store_path,
        fresh=context.fresh,
        logging=context.config.logging,
    )
    return []


# its table is the core [synthesis] table, which the API and the generation stages share
STAGE = Stage(name="synthesize", run=run, order=100, phase="store")
