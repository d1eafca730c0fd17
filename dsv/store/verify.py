"""``dsv-pipeline verify``: is a run store whole? Schema, commit record, every committed array.

Every array the commit record points to is read in full through the same checked reads that
``show``, ``export``, ``resume`` and the stages use (:mod:`dsv.store.arrays`): a deleted,
truncated or altered chunk, garbage metadata or an edited shape shows up as a problem naming the
array; nothing here raises on a damaged store.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from dsv import config as cfg
from dsv.errors import DsvError
from dsv.store.arrays import CHECKSUMMED_SCHEMA
from dsv.store.region import Region
from dsv.store.run_store import RunStore


@attrs.define
class Report:
    path: Path
    problems: list[str] = attrs.field(factory=list)
    facts: dict[str, Any] = attrs.field(factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def _check(report: Report, condition: bool, message: str) -> None:
    if not condition:
        report.problems.append(message)


def verify(path: str | Path) -> Report:
    report = Report(Path(path))
    try:
        store = RunStore.open(path)
        meta = store.meta
        regions = store.regions()
    except DsvError as exc:
        report.problems.append(str(exc))
        return report
    except Exception as exc:  # unreadable zarr.json and the like
        report.problems.append(f"{path}: cannot be opened as a Zarr group ({type(exc).__name__}: {exc})")
        return report
    report.facts["schema_version"] = store.schema_version
    report.facts["groups"] = len(regions)
    report.facts["checksums"] = store.schema_version >= CHECKSUMMED_SCHEMA
    config = meta.get("config")
    if isinstance(config, dict):
        recomputed = cfg.config_hash(config, tuple(meta.get("config_resumable", cfg.LEGACY_RESUMABLE)))
        _check(
            report,
            recomputed == meta.get("config_hash"),
            f"metadata config_hash: {meta.get('config_hash')!r} does not match the stored config ({recomputed})",
        )
        report.facts["iterations"] = config.get("synthesis", {}).get("iterations")
    else:
        report.problems.append("metadata config: missing")
    if report.problems:
        return report
    counts = [verify_region(report, region) for region in regions]
    if not report.problems:
        report.facts.update(
            committed_iteration=meta["committed_iteration"],
            history_length=meta["history_length"],
            candidates=sum(counts),
        )
    return report


def _attempt(report: Report, read: Callable[[], Any]) -> Any:
    """``read()``, or None with its StoreError (or any failure of a damaged store) recorded."""
    try:
        return read()
    except DsvError as exc:
        report.problems.append(str(exc))
    except Exception as exc:  # a failure the reads did not foresee is still a finding, not a crash
        report.problems.append(f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
    return None


def verify_region(report: Report, region: Region) -> int:
    """Record every problem of one group's region: its commit record, every array of the
    committed checkpoint read whole (every chunk on disk, every checksum, shapes that belong
    together, an alive candidate's lambda >= 0), the candidates, the committed history rows of
    every history array. Returns the region's candidate count (0 if unreadable)."""
    where = f"{region.label}/" if region.label else ""
    record = _attempt(report, lambda: region.record)
    if record is None:
        return 0
    committed, length, slot = record.get("committed_iteration"), record.get("history_length"), record.get("state_slot")
    before = len(report.problems)
    for key, value in (("committed_iteration", committed), ("history_length", length)):
        _check(
            report,
            isinstance(value, int) and value >= 0,
            f"{where or 'metadata '}{key}: expected an integer >= 0, got {value!r}",
        )
    _check(report, slot in ("a", "b"), f"{where or 'metadata '}state_slot: expected 'a' or 'b', got {slot!r}")
    if len(report.problems) > before:
        return 0
    candidates = _attempt(report, region.candidates)
    _attempt(report, region.history)
    if candidates is None:
        return 0
    n = len(candidates["labels"])
    _check(
        report,
        np.array_equal(candidates["targets"].argmax(1), candidates["labels"]),
        f"{region.where('candidates/targets')}: does not match {where}candidates/labels",
    )
    _check(
        report, bool(np.isfinite(candidates["x"]).all()), f"{region.where(f'state/{slot}/x')}: holds non-finite values"
    )
    return n


def describe(report: Report, echo: Callable[[str], None] = print) -> None:
    if report.ok:
        f = report.facts
        groups = f" in {f['groups']} groups" if f.get("groups", 1) > 1 else ""
        echo(
            f"ok: {report.path}: schema {f['schema_version']}, iteration {f['committed_iteration']} of "
            f"{f.get('iterations', '?')}, {f.get('candidates', 0)} candidates{groups}, "
            f"{f['history_length']} history rows"
            + ("" if f.get("checksums") else " (written before checksums: checked for structure only)")
        )
        return
    echo(f"{report.path}: {len(report.problems)} problem(s)")
    for problem in report.problems:
        echo(f"  {problem}")
