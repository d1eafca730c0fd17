"""One region of a run store: the candidates, checkpoint slots, history and commit record of one
candidate group, written by the one rank that owns the group (layout: :mod:`dsv.store.run_store`).

Writing (:meth:`Region.commit`) puts history rows and the uncommitted checkpoint slot first and
the commit record last; reading (:meth:`Region.read_state`, :meth:`Region.candidates`,
:meth:`Region.history`) trusts only what that record names, and checks it through
:mod:`dsv.store.arrays`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np
import zarr

from dsv.errors import StoreError
from dsv.store.arrays import (
    HISTORY_ROWS,
    array_names,
    chunk_rows,
    create_array,
    open_array,
    open_group,
    read_array,
    writable,
)
from dsv.store.checkpoint import fault_point


# zarr types a member of a group as array or group, an array's contents as any array-like or a
# scalar: the layout says which each one is
def _array(group: zarr.Group, name: str) -> zarr.Array:
    """The array ``name`` of ``group``."""
    return cast(zarr.Array, group[name])


def _put_array(group: zarr.Group, name: str, values: np.ndarray) -> None:
    """Write ``values`` as array ``name`` of ``group``, recreating it when shape or dtype changed
    or when it was written without a checksum (by schema 3)."""
    if values.dtype == np.float64:
        values = values.astype(np.float32)
    if name in group:
        arr = _array(group, name)
        if tuple(arr.shape) == values.shape and arr.dtype == values.dtype and _has_checksum(arr):
            writable(arr)[...] = values
            return
    create_array(group, name, values.shape, values.dtype)[...] = values


def _has_checksum(arr: zarr.Array) -> bool:
    return any(type(c).__name__ == "Crc32cCodec" for c in arr.metadata.codecs)  # type: ignore[union-attr]


class Region:
    """One writer's part of a store: the candidates, checkpoint slots, history and commit record
    of one candidate group. ``record_key`` names the attribute holding the commit record;
    ``strict`` (schema 4 on) makes every read check that each chunk of it was written."""

    def __init__(self, path: Path, group: zarr.Group, record_key: str, label: str, strict: bool = True):
        self.path = path  # the store's path (for messages and resume hints)
        self.group = group
        self.record_key = record_key
        self.label = label  # "groups/3", or "" for the root of a schema-2 store
        self.strict = strict

    def where(self, name: str) -> str:
        """``name`` inside this region, as messages give it: ``<store>: groups/0/state/a/x``."""
        return f"{self.path}: {self.label + '/' if self.label else ''}{name}"

    @property
    def record(self) -> dict[str, Any]:
        record = self.group.attrs.get(self.record_key, {})
        if not isinstance(record, dict):
            raise StoreError(f"{self.where('zarr.json')}: the commit record is not a JSON object")
        return dict(cast(dict[str, Any], record))

    def _write_record(self, record: dict[str, Any]) -> None:
        self.group.attrs[self.record_key] = record

    def _count(self, key: str) -> int:
        value = self.record.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise StoreError(f"{self.where('zarr.json')}: {key}: expected an integer >= 0, got {value!r}")
        return value

    @property
    def committed_iteration(self) -> int:
        return self._count("committed_iteration")

    @property
    def history_length(self) -> int:
        return self._count("history_length")

    @property
    def summary(self) -> dict[str, Any]:
        """The group's final summary; empty until the group ran to its end."""
        return dict(self.record.get("summary") or {})

    def set_summary(self, summary: dict[str, Any]) -> None:
        record = self.record
        record["summary"] = summary
        self._write_record(record)

    @property
    def seconds(self) -> float:
        """Wall time the synthesis of this group took, summed over the sessions that ran it."""
        return float(self.record.get("seconds", 0.0))

    def add_seconds(self, seconds: float) -> None:
        record = self.record
        record["seconds"] = float(record.get("seconds", 0.0)) + float(seconds)
        self._write_record(record)

    @property
    def size(self) -> int:
        candidates = open_group(self.group, "candidates", self.where("candidates"))
        return int(open_array(candidates, "labels", self.where("candidates/labels")).shape[0])

    # ---- candidates and the committed state -----------------------------------------------

    def init_candidates(
        self,
        x: np.ndarray,
        lambdas: np.ndarray,
        targets: np.ndarray,
        alive: np.ndarray,
        state: tuple[dict[str, np.ndarray], dict[str, Any]] | None = None,
    ) -> None:
        """The fixed targets and labels, and the state at iteration 0 as the first commit."""
        g = self.group.require_group("candidates")
        create_array(g, "targets", targets.shape, "float32")[...] = targets.astype(np.float32)
        create_array(g, "labels", targets.shape[:1], "int64")[...] = targets.argmax(axis=1).astype(np.int64)
        arrays, scalars = state if state is not None else ({}, {})
        self.commit(0, {"x": x, "lambda": lambdas, "alive": alive, **arrays}, scalars, {})

    def commit(
        self,
        iteration: int,
        arrays: dict[str, np.ndarray],
        scalars: dict[str, Any],
        history_rows: dict[str, np.ndarray],
    ) -> None:
        """Write one checkpoint: history rows, then every state array into the slot that is *not*
        committed, then the commit record (one atomic metadata write). A crash anywhere before
        the last write leaves the previous checkpoint intact and authoritative."""
        record = self.record
        try:
            length = self._write_history(history_rows, int(record.get("history_length", 0)))
            slot = "b" if record.get("state_slot") == "a" else "a"
            group = self.group.require_group(f"state/{slot}")
            for i, (name, values) in enumerate(arrays.items()):
                _put_array(group, name, np.asarray(values))
                if i == 0:
                    fault_point("in-checkpoint", iteration)
            stale = set(group.array_keys()) - set(arrays)
            for name in stale:  # e.g. Adam moments of a shape that no longer exists
                del group[name]
            record.update(committed_iteration=int(iteration), history_length=length, state_slot=slot, state=scalars)
            self._write_record(record)
        except OSError as exc:  # zarr's writes name no file: name the region (the CLI adds what to do)
            raise OSError(exc.errno, exc.strerror, str(self.path / self.label)) from None

    def _slot(self) -> tuple[str, zarr.Group]:
        slot = self.record.get("state_slot")
        if slot not in ("a", "b") or f"state/{slot}" not in self.group:
            raise StoreError(f"{self.path}{' ' + self.label if self.label else ''}: holds no committed state yet")
        return slot, open_group(self.group, f"state/{slot}", self.where(f"state/{slot}"))

    def read_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The arrays of the committed checkpoint and its scalars, checked (every chunk, every
        checksum, the shapes that belong together): damage is a StoreError naming the array."""
        slot, group = self._slot()
        arrays = {
            name: read_array(group, name, self.where(f"state/{slot}/{name}"), strict=self.strict)
            for name in array_names(group, self.where(f"state/{slot}"))
        }
        for name in ("x", "lambda", "alive"):
            if name not in arrays:
                raise StoreError(f"{self.where(f'state/{slot}/{name}')}: missing")
        x, lam, alive = arrays["x"], arrays["lambda"], arrays["alive"]
        n = len(lam)
        if x.ndim != 4 or x.shape[0] != n or lam.shape != (n,) or alive.shape != (n,):
            raise StoreError(
                f"{self.where(f'state/{slot}')}: x {x.shape}, lambda {lam.shape} and alive {alive.shape} "
                "do not describe the same candidates; the store is damaged"
            )
        for p, ref in (("x", x), ("lambda", lam)):
            for moment in ("exp_avg", "exp_avg_sq"):
                a = arrays.get(f"adam_{p}_{moment}")
                if a is not None and a.shape != ref.shape:
                    raise StoreError(
                        f"{self.where(f'state/{slot}/adam_{p}_{moment}')}: shape {a.shape}, {p} has {ref.shape}; "
                        "the store is damaged"
                    )
        if not np.isfinite(lam).all():
            raise StoreError(f"{self.where(f'state/{slot}/lambda')}: holds non-finite values; the store is damaged")
        negative = np.flatnonzero(alive.astype(bool) & (lam < 0))
        if len(negative):
            raise StoreError(
                f"{self.where(f'state/{slot}/lambda')}: candidate {int(negative[0])} is alive with lambda "
                f"{float(lam[negative[0]]):.4g} < 0 (dual feasibility); the store is damaged"
            )
        return arrays, dict(self.record.get("state", {}))

    def candidates(self) -> dict[str, np.ndarray]:
        if "candidates" not in self.group:
            raise StoreError(f"{self.path}{' ' + self.label if self.label else ''}: holds no candidates yet")
        arrays, _ = self.read_state()
        g = open_group(self.group, "candidates", self.where("candidates"))
        out = {"x": arrays["x"], "lambda": arrays["lambda"], "alive": arrays["alive"].astype(bool)}
        n = len(out["lambda"])
        out["targets"] = read_array(
            g, "targets", self.where("candidates/targets"), strict=self.strict, dtype="f", shape=(n, None)
        )
        out["labels"] = read_array(
            g, "labels", self.where("candidates/labels"), strict=self.strict, dtype="iu", shape=(n,)
        )
        return out

    # ---- histories -----------------------------------------------------------------------------

    def _write_history(self, rows: dict[str, np.ndarray], start: int) -> int:
        """Write rows (one per recorded iteration) from row ``start`` on; returns the new length.

        Appending writes the new shape before the data; the length a reader trusts is the
        ``history_length`` of the commit record, written after both.
        """
        if not rows:
            return start
        h = self.group.require_group("history")
        count = len(next(iter(rows.values())))
        for name, values in rows.items():
            values = np.asarray(values)
            if name not in h:
                dtype = np.dtype("int64" if name == "iteration" else "float32")
                shape = (0, *values.shape[1:])
                create_array(h, name, shape, dtype, rows=chunk_rows(shape[1:], dtype.itemsize, HISTORY_ROWS))
            arr = writable(_array(h, name))
            if arr.shape[0] != start + count:  # also cuts rows an interrupted write left behind
                arr.resize((start + count, *values.shape[1:]))
            arr[start : start + count] = values
        return start + count

    def history(self) -> dict[str, np.ndarray]:
        n = self.history_length
        if n == 0 or "history" not in self.group:
            return {}
        h = open_group(self.group, "history", self.where("history"))
        out = {
            name: read_array(h, name, self.where(f"history/{name}"), rows=n, strict=self.strict)
            for name in array_names(h, self.where("history"))
        }
        iterations = out.get("iteration")
        if iterations is None:
            raise StoreError(f"{self.where('history/iteration')}: missing")
        if len(iterations) and (np.any(np.diff(iterations) <= 0) or int(iterations[-1]) > self.committed_iteration):
            raise StoreError(
                f"{self.where('history/iteration')}: not increasing up to the committed iteration "
                f"{self.committed_iteration}; the store is damaged"
            )
        return out
