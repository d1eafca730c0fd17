"""``dsv-pipeline verify``: is a run store whole? Schema, commit record, every committed array.

Every array the commit record points to is read in full, so a truncated or corrupted chunk shows
up as a problem naming that array; nothing here raises on a damaged store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import attrs
import numpy as np

from dsv import config as cfg
from dsv.errors import DsvError
from dsv.store import SCHEMA_VERSION, RunStore

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
    except DsvError as exc:
        report.problems.append(str(exc))
        return report
    except Exception as exc:  # unreadable zarr.json and the like
        report.problems.append(f"{path}: cannot be opened as a Zarr group ({type(exc).__name__}: {exc})")
        return report
    report.facts["schema_version"] = SCHEMA_VERSION
    committed, length, slot = meta.get("committed_iteration"), meta.get("history_length"), meta.get("state_slot")
    for key, value in (("committed_iteration", committed), ("history_length", length)):
        _check(report, isinstance(value, int) and value >= 0, f"metadata {key}: expected an integer >= 0, got {value!r}")
    _check(report, slot in ("a", "b"), f"metadata state_slot: expected 'a' or 'b', got {slot!r}")
    config = meta.get("config")
    if isinstance(config, dict):
        _check(report, cfg.config_hash(config) == meta.get("config_hash"),
               f"metadata config_hash: {meta.get('config_hash')!r} does not match the stored config "
               f"({cfg.config_hash(config)})")
        total = config.get("synthesis", {}).get("iterations")
        report.facts["iterations"] = total
    else:
        report.problems.append("metadata config: missing")
    if report.problems:
        return report
    report.facts.update(committed_iteration=committed, history_length=length)

    candidates = _group(report, store, "candidates")
    state = _group(report, store, f"state/{slot}")
    if candidates is None or state is None:
        return report
    targets = _read(report, candidates, "targets", "candidates/targets")
    labels = _read(report, candidates, "labels", "candidates/labels")
    arrays = {name: _read(report, state, name, f"state/{slot}/{name}") for name in STATE_ARRAYS}
    for name in sorted(state.array_keys()):
        if name not in arrays:
            arrays[name] = _read(report, state, name, f"state/{slot}/{name}")
    if report.problems:
        return report
    n = len(labels)
    report.facts["candidates"] = n
    _check(report, targets.shape[0] == n and np.array_equal(targets.argmax(1), labels),
           "candidates/targets: does not match candidates/labels")
    x, lam = arrays["x"], arrays["lambda"]
    _check(report, x.ndim == 4 and x.shape[0] == n, f"state/{slot}/x: shape {x.shape}, expected ({n}, C, H, W)")
    _check(report, lam.shape == (n,) and arrays["alive"].shape == (n,),
           f"state/{slot}: lambda {lam.shape} and alive {arrays['alive'].shape} must both be ({n},)")
    _check(report, bool(np.isfinite(x).all()), f"state/{slot}/x: holds non-finite values")
    _check(report, bool(np.isfinite(lam).all()), f"state/{slot}/lambda: holds non-finite values")
    for p, ref in (("x", x), ("lambda", lam)):
        for moment in ("exp_avg", "exp_avg_sq"):
            a = arrays.get(f"adam_{p}_{moment}")
            if a is not None:
                _check(report, a.shape == ref.shape, f"state/{slot}/adam_{p}_{moment}: shape {a.shape} != {ref.shape}")

    if length:
        history = _group(report, store, "history")
        if history is None:
            return report
        iterations = _read(report, history, "iteration", "history/iteration", rows=length)
        for name in sorted(history.array_keys()):
            if name != "iteration":
                _read(report, history, name, f"history/{name}", rows=length)
        if iterations is not None:
            _check(report, bool(np.all(np.diff(iterations) > 0)), "history/iteration: not strictly increasing")
            _check(report, int(iterations[-1]) <= committed,
                   f"history/iteration: ends at {int(iterations[-1])}, after the committed iteration {committed}")
    return report


def _group(report: Report, store: RunStore, name: str):
    try:
        if name not in store.group:
            report.problems.append(f"{name}: missing")
            return None
        return store.group[name]
    except Exception as exc:
        report.problems.append(f"{name}: cannot be opened ({type(exc).__name__}: {exc})")
        return None


def describe(report: Report, echo: Callable[[str], None] = print) -> None:
    if report.ok:
        f = report.facts
        echo(f"ok: {report.path}: schema {f['schema_version']}, iteration {f['committed_iteration']} of "
             f"{f.get('iterations', '?')}, {f.get('candidates', 0)} candidates, {f['history_length']} history rows")
        return
    echo(f"{report.path}: {len(report.problems)} problem(s)")
    for problem in report.problems:
        echo(f"  {problem}")
