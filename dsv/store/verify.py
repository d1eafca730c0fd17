"""``dsv-pipeline verify``: is a run store whole? Schema, commit record, every committed array.

Every array the commit record points to is read in full, so a truncated or corrupted chunk shows
up as a problem naming that array; nothing here raises on a damaged store.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from dsv import config as cfg
from dsv.errors import DsvError
from dsv.store.run_store import Region, RunStore

STATE_ARRAYS = ("x", "lambda", "alive", "rng_torch", "rng_numpy", "rng_python")


@attrs.define
class Report:
    path: Path
    problems: list[str] = attrs.field(factory=list)
    facts: dict[str, Any] = attrs.field(factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def _read(report: Report, group, name: str, label: str, rows: int | None = None) -> np.ndarray | None:
    """Read one array whole (or its first ``rows``), recording a problem instead of raising."""
    try:
        if name not in group:
            report.problems.append(f"{label}: missing")
            return None
        arr = group[name]
        if rows is not None and arr.shape[0] < rows:
            report.problems.append(f"{label}: has {arr.shape[0]} rows, the commit record says {rows}")
            return None
        return arr[:rows] if rows is not None else arr[...]
    except Exception as exc:  # any decoding failure of a damaged chunk is a finding, not a crash
        report.problems.append(f"{label}: cannot be read ({type(exc).__name__}: {exc})")
        return None


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


def verify_region(report: Report, region: Region) -> int:
    """Record every problem of one group's region; returns its candidate count (0 if unreadable)."""
    where = f"{region.label}/" if region.label else ""
    record = region.record
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
    assert isinstance(committed, int)  # checked above
    candidates = _group(report, region, "candidates")
    state = _group(report, region, f"state/{slot}")
    if candidates is None or state is None:
        return 0
    targets = _read(report, candidates, "targets", f"{where}candidates/targets")
    labels = _read(report, candidates, "labels", f"{where}candidates/labels")
    reads = {name: _read(report, state, name, f"{where}state/{slot}/{name}") for name in STATE_ARRAYS}
    for name in sorted(state.array_keys()):
        if name not in reads:
            reads[name] = _read(report, state, name, f"{where}state/{slot}/{name}")
    if len(report.problems) > before:
        return 0
    # no problem recorded: every read returned its array
    assert targets is not None and labels is not None
    arrays = {name: a for name, a in reads.items() if a is not None}
    n = len(labels)
    _check(
        report,
        targets.shape[0] == n and np.array_equal(targets.argmax(1), labels),
        f"{where}candidates/targets: does not match {where}candidates/labels",
    )
    x, lam = arrays["x"], arrays["lambda"]
    _check(report, x.ndim == 4 and x.shape[0] == n, f"{where}state/{slot}/x: shape {x.shape}, expected ({n}, C, H, W)")
    _check(
        report,
        lam.shape == (n,) and arrays["alive"].shape == (n,),
        f"{where}state/{slot}: lambda {lam.shape} and alive {arrays['alive'].shape} must both be ({n},)",
    )
    _check(report, bool(np.isfinite(x).all()), f"{where}state/{slot}/x: holds non-finite values")
    _check(report, bool(np.isfinite(lam).all()), f"{where}state/{slot}/lambda: holds non-finite values")
    for p, ref in (("x", x), ("lambda", lam)):
        for moment in ("exp_avg", "exp_avg_sq"):
            a = arrays.get(f"adam_{p}_{moment}")
            if a is not None:
                _check(
                    report,
                    a.shape == ref.shape,
                    f"{where}state/{slot}/adam_{p}_{moment}: shape {a.shape} != {ref.shape}",
                )
    if length:
        history = _group(report, region, "history")
        if history is None:
            return n
        iterations = _read(report, history, "iteration", f"{where}history/iteration", rows=length)
        for name in sorted(history.array_keys()):
            if name != "iteration":
                _read(report, history, name, f"{where}history/{name}", rows=length)
        if iterations is not None:
            _check(report, bool(np.all(np.diff(iterations) > 0)), f"{where}history/iteration: not strictly increasing")
            _check(
                report,
                int(iterations[-1]) <= committed,
                f"{where}history/iteration: ends at {int(iterations[-1])}, after the committed iteration {committed}",
            )
    return n


def _group(report: Report, region: Region, name: str):
    label = f"{region.label}/{name}" if region.label else name
    try:
        if name not in region.group:
            report.problems.append(f"{label}: missing")
            return None
        return region.group[name]
    except Exception as exc:
        report.problems.append(f"{label}: cannot be opened ({type(exc).__name__}: {exc})")
        return None


def describe(report: Report, echo: Callable[[str], None] = print) -> None:
    if report.ok:
        f = report.facts
        groups = f" in {f['groups']} groups" if f.get("groups", 1) > 1 else ""
        echo(
            f"ok: {report.path}: schema {f['schema_version']}, iteration {f['committed_iteration']} of "
            f"{f.get('iterations', '?')}, {f.get('candidates', 0)} candidates{groups}, "
            f"{f['history_length']} history rows"
        )
        return
    echo(f"{report.path}: {len(report.problems)} problem(s)")
    for problem in report.problems:
        echo(f"  {problem}")
