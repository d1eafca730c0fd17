"""Running synthesis engines into a run store: create or continue the store, run each group.

:func:`execute` runs one ungrouped run (the Python API, and anything holding one
:class:`~dsv.synthesis.engine.SynthesisRun`); :func:`execute_groups` runs the candidate groups of a
pipeline on every rank (see :mod:`dsv.synthesis.groups` and :mod:`dsv.synthesis.distributed`). Both go through
:func:`run_group`, which runs one group's engine in that group's region of the store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np

import dsv
from dsv import config as cfg
from dsv.errors import Interrupted, StoreError
from dsv.store import (
    SCHEMA_VERSION,
    Region,
    RunStore,
    is_half_created,
    is_store,
    lock,
    remove_store,
    run_summary,
    summary,
)
from dsv.store.checkpoint import StopSignals
from dsv.store.run_store import OLDEST_CONTINUABLE_SCHEMA
from dsv.synthesis import distributed, tensorboard
from dsv.synthesis.engine import SynthesisRun, build_engine
from dsv.synthesis.groups import combine_summaries, owned_groups

log = logging.getLogger("dsv")


@attrs.define(frozen=True)
class Hints:
    """How messages name the switches a caller has: ``--fresh`` on the CLI, ``fresh=True`` in the API."""

    fresh: str = "--fresh"
    store: str = "run.store or --store"
    resume: str = "dsv-pipeline resume {path}"


def existing_store(path: Path, meta: dict[str, Any], fresh: bool, hints: Hints = Hints()) -> RunStore | None:
    """The store to continue, or None to create one. An existing store is resumed when its
    config (``meta["config_hash"]``) and model match, replaced when ``fresh`` (only ever a dsv
    store), refused otherwise."""
    if not path.exists():
        return None
    if is_half_created(path):
        log.warning("%s: left half-created by an interrupted run (no dsv metadata); replacing it", path)
        remove_store(path)
        return None
    if not is_store(path):
        raise StoreError(f"{path}: exists and is not a dsv store; choose another {hints.store}")
    if fresh:
        remove_store(path)  # refused while another process writes it (its lock)
        return None
    store = RunStore.open(path, mode="a", writer=True)
    store.check()  # continue only from an undamaged checkpoint
    stored = store.meta
    if stored.get("config_hash") != meta["config_hash"]:
        resumable = stored.get("config_resumable", cfg.LEGACY_RESUMABLE)
        changes = cfg.changed_keys(stored.get("config", {}), meta["config"], tuple(resumable))
        listed = "".join(f"\n  {c}" for c in changes) or " (none in the keys; the hash scheme differs)"
        raise StoreError(
            f"{path}: holds a run of another config; changed keys:{listed}\n"
            f"pass {hints.fresh} to start over, or choose another {hints.store} for a new store"
        )
    if stored.get("model_fingerprint") not in (None, meta["model_fingerprint"]):
        raise StoreError(
            f"{path}: the model's weights differ from those the run started with "
            f"({stored.get('model_fingerprint')} != {meta['model_fingerprint']}); pass {hints.fresh} to start over"
        )
    if store.schema_version < OLDEST_CONTINUABLE_SCHEMA:
        raise StoreError(
            f"{path}: written with store schema {store.schema_version}; it can be read, not continued "
            f"(this dsv writes schema {SCHEMA_VERSION}); pass {hints.fresh} to start over"
        )
    return store


def open_run_store(path: Path, meta: dict[str, Any], fresh: bool, groups: int, hints: Hints = Hints()) -> RunStore:
    """The store a run writes: the existing one of the same run, or a new one of ``groups``
    regions. Only one process (rank 0) calls this: it writes the shared metadata."""
    store = existing_store(Path(path), meta, fresh, hints)
    if store is None:
        return RunStore.create(path, meta, groups=groups)
    store.update_meta(dsv_version=dsv.__version__)
    return store


def run_group(
    run: SynthesisRun,
    region: Region | None,
    meta: dict[str, Any],
    *,
    logging: cfg.LoggingConfig | None = None,
    hints: Hints = Hints(),
) -> dict[str, Any]:
    """Run the engine of ``run`` in ``region``: from iteration 0 when the region is empty,
    from its last checkpoint otherwise (with the same result as if it had never stopped), or
    without a store (``region`` None; the history then stays in ``run.pending``). ``logging``
    attaches TensorBoard (:mod:`dsv.synthesis.tensorboard`). Returns the group's run summary (also
    recorded in the region); ``run`` ends holding the final state either way. The lifecycle
    hooks see each group as one run."""
    total = run.iterations
    started = time.perf_counter()
    try:
        start = 0
        if region is not None:
            if region.record.get("state_slot") is None:
                region.init_candidates(
                    run.x.detach().cpu().numpy(),
                    run.lambdas.detach().cpu().numpy(),
                    run.targets.cpu().numpy(),
                    run.alive.cpu().numpy(),
                    state=run.state(),
                )
            else:
                start = region.committed_iteration
                run.restore(*region.read_state(), iteration=start)
                if start >= total and region.summary:
                    log.info("%s %s: synthesis already complete (%d iterations)", region.path, region.label, start)
                    return region.summary
                log.info("%s %s: resuming after iteration %d of %d", region.path, region.label, start, total)
        run.store = region
        run.hooks.call_lifecycle("dsv_run_started", run=run)
        with StopSignals() as signals:
            run.stop_signals = signals
            if start < total:
                _run_engine(run, start, logging, meta["mean"], meta["std"])
        if signals.received is not None:
            where = (
                f"checkpoint written to {region.path}.\nResume with: {hints.resume.format(path=region.path)}"
                if region is not None
                else "nothing was saved (no store was given)"
            )
            raise Interrupted(
                f"{signals.name} received: stopped after iteration {run.committed_iteration} of {total}, {where}",
                exit_code=128 + int(signals.received),
            )
        final = run.summary()
        if region is not None:
            region.set_summary(final)
    finally:
        run.stop_signals = None
        detach_terms(run.losses + run.priors)
        if region is not None and run.store is region:  # the time this session spent on the group
            region.add_seconds(time.perf_counter() - started)
    shown = (
        run_summary(final, run.pending.get("entropy"), run.committed_iteration, None)
        if region is None
        else run_summary(
            region.summary, region.history().get("entropy"), region.committed_iteration, meta.get("config_hash")
        )
    )
    run.hooks.call_lifecycle("dsv_run_finished", run=run, summary=shown)
    return final


def _run_engine(run: SynthesisRun, start: int, logging: cfg.LoggingConfig | None, mean, std) -> None:
    engine = build_engine(run, start_iteration=start)
    logged = logging is not None and bool(logging.tensorboard)
    logger = tensorboard.attach(engine, run, logging, mean, std) if logged else None
    try:
        engine.run(data=None, max_epochs=1, epoch_length=run.iterations)
    finally:
        if logger is not None:
            logger.close()


def execute(
    run: SynthesisRun,
    meta: dict[str, Any],
    *,
    store_path: Path | None = None,
    fresh: bool = False,
    logging: cfg.LoggingConfig | None = None,
    hints: Hints = Hints(),
) -> tuple[RunStore | None, dict[str, Any]]:
    """Run the engine of one ungrouped ``run``: in a new store at ``store_path`` (with ``meta``),
    continuing the run already there, or without a store. Returns the store and the run
    summary (``show --json``'s keys); ``run`` ends holding the final state either way. The
    store's writer lock is held until it returns."""
    with lock.session():
        return _execute(run, meta, store_path=store_path, fresh=fresh, logging=logging, hints=hints)


def _execute(
    run: SynthesisRun,
    meta: dict[str, Any],
    *,
    store_path: Path | None,
    fresh: bool,
    logging: cfg.LoggingConfig | None,
    hints: Hints,
) -> tuple[RunStore | None, dict[str, Any]]:
    try:
        if logging is not None and logging.tensorboard:
            tensorboard.require()  # before a store exists
        store = open_run_store(Path(store_path), meta, fresh, 1, hints) if store_path is not None else None
    except BaseException:
        detach_terms(run.losses + run.priors)
        raise
    final = run_group(run, store.region(0) if store is not None else None, meta, logging=logging, hints=hints)
    if store is None:
        return None, run_summary(final, run.pending.get("entropy"), run.committed_iteration, None)
    store.update_meta(summary=final)
    return store, summary(store)


def execute_groups(
    build: Callable[[int], SynthesisRun],
    groups: int,
    meta: dict[str, Any],
    *,
    store_path: Path,
    fresh: bool = False,
    logging: cfg.LoggingConfig | None = None,
    hints: Hints = Hints(),
) -> RunStore:
    """Every rank: run the groups it owns (:func:`dsv.synthesis.groups.owned_groups`), each in its own
    region of the store at ``store_path``. ``build(g)`` makes the run of group g. Rank 0 creates
    (or reopens) the store and, once every rank is done, writes the combined summary."""
    mine = owned_groups(groups, distributed.rank(), distributed.world_size())
    if not mine:
        log.warning(
            "rank %d: no group to run (%d groups for %d processes)",
            distributed.rank(),
            groups,
            distributed.world_size(),
        )
    pending = build(mine[0] if mine else 0)  # every config error surfaces before a store exists
    try:
        if logging is not None and logging.tensorboard:
            tensorboard.require()
        if distributed.is_main_rank():
            store = open_run_store(Path(store_path), meta, fresh, groups, hints)
        distributed.barrier()  # the store and its regions exist from here on
        if not distributed.is_main_rank():
            store = RunStore.open(store_path, mode="a")
    except BaseException:
        detach_terms(pending.losses + pending.priors)
        raise
    if not mine:
        detach_terms(pending.losses + pending.priors)
    for i, g in enumerate(mine):
        run = pending if i == 0 else build(g)
        run_group(run, store.region(g), meta, logging=_group_logging(logging, g, groups), hints=hints)
    distributed.barrier()  # every region holds its group's final state
    if distributed.is_main_rank():
        regions = store.regions()
        store.update_meta(summary=combine_summaries([r.summary for r in regions], [r.size for r in regions]))
    return store


def _group_logging(logging: cfg.LoggingConfig | None, group: int, groups: int) -> cfg.LoggingConfig | None:
    """Each group logs into its own TensorBoard folder (one writer per folder)."""
    if logging is None or not logging.tensorboard or groups == 1:
        return logging
    return attrs.evolve(logging, tensorboard=str(Path(logging.tensorboard) / f"group{group}"))


def memory_history(run: SynthesisRun) -> dict[str, np.ndarray]:
    """The history a run without a store kept in memory, typed as a store keeps it."""
    return {
        name: np.asarray(rows, dtype=np.int64 if name == "iteration" else np.float32)
        for name, rows in sorted(run.pending.items())
    }


def detach_terms(named: list[tuple[str, Any]]) -> None:
    """Call ``detach()`` of every term that has one (it must be safe on a term never attached)."""
    for _, term in named:
        if hasattr(term, "detach"):
            term.detach()
