"""The Zarr (v3) run store: one group per run, no pickles, one commit record per region written last.

A store is split into regions, one per candidate group (``synthesis.groups``, see
:mod:`dsv.synthesis.groups`); each region has exactly one writer (the rank that owns the group), so ranks
never write the same array or the same metadata document. Rank 0 alone writes the root metadata.

Layout (schema 3)::

    <store>/                 group; attributes["dsv"] = metadata (schema, groups, config, hash,
                             summary, results); written by rank 0 only
      groups/<g>/            the region of group g; attributes["dsv_region"] = its commit record:
                             committed_iteration, history_length, state_slot, state (JSON scalars
                             of the checkpoint), summary (once the group finished)
        candidates/targets   float32 (n, K)         soft targets (rows sum to 1)
        candidates/labels    int64   (n,)           argmax of the targets
        state/a, state/b     two checkpoint slots, written in turn; state_slot names the good one:
          x                  float32 (n, C, H, W)   candidates in model input space
          lambda             float32 (n,)
          alive              bool    (n,)
          adam_<p>_exp_avg(_sq)                     Adam moments of x and lambda
          rng_torch, rng_cuda, rng_numpy, rng_python  RNG states as integer arrays
        history/iteration    int64   (T,)
        history/<term>       float32 (T,)           every loss term, entropy, accuracy, alive
        history/lambda       float32 (T, n)
      exports/               PNG and NPZ files written by the export stage

Schema 2 stores (one region: the root itself, its commit record inside attributes["dsv"]) are
still read. A checkpoint writes the history rows and the slot that is not committed, then the
commit record (one atomic write of the region's ``zarr.json``). Appending in Zarr writes the new
shape before the data, so a reader trusts only the committed lengths; a crash at any moment
leaves the previous checkpoint."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import zarr

from dsv.config.names import is_plain_file_name
from dsv.errors import StoreError
from dsv.store.checkpoint import fault_point

SCHEMA_VERSION = 3
OLDEST_READABLE_SCHEMA = 2
HISTORY_CHUNK = 256
REGION_RECORD = "dsv_region"
# commit-record keys RunStore.meta derives from the regions of a schema-3 store (never written at its root)
DERIVED_KEYS = ("committed_iteration", "history_length")
AccessMode = Literal["r", "r+", "a", "w", "w-"]  # zarr's modes of opening a group


def is_store(path: str | Path) -> bool:
    """True when ``path`` is a dsv run store (a Zarr group carrying dsv metadata)."""
    meta = Path(path) / "zarr.json"
    if not meta.is_file():
        return False
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc.get("attributes", {}).get("dsv"), dict)


# zarr types a member of a group as array or group, an array's contents as any array-like or a
# scalar, an attribute as any JSON value: the layout above says which each one is
def _array(group: zarr.Group, name: str) -> zarr.Array:
    """The array ``name`` of ``group``."""
    return cast(zarr.Array, group[name])


def _group(group: zarr.Group, name: str) -> zarr.Group:
    """The group ``name`` of ``group``."""
    return cast(zarr.Group, group[name])


def _values(group: zarr.Group, name: str, rows: int | None = None) -> np.ndarray:
    """The array ``name`` of ``group`` read whole, or its first ``rows``."""
    arr = _array(group, name)
    return cast(np.ndarray, arr[...] if rows is None else arr[:rows])


def _attribute(group: zarr.Group, key: str) -> dict[str, Any]:
    """The JSON object stored as attribute ``key`` of ``group``."""
    return cast(dict[str, Any], group.attrs[key])


def _put_array(group: zarr.Group, name: str, values: np.ndarray) -> None:
    """Write ``values`` as array ``name`` of ``group``, recreating it when shape or dtype changed."""
    if values.dtype == np.float64:
        values = values.astype(np.float32)
    if name in group:
        arr = _array(group, name)
        if tuple(arr.shape) == values.shape and arr.dtype == values.dtype:
            arr[...] = values
            return
    chunks = (1, *values.shape[1:]) if values.ndim == 4 else values.shape
    group.create_array(name, shape=values.shape, dtype=values.dtype, chunks=chunks, overwrite=True)
    _array(group, name)[...] = values


def remove_store(path: str | Path) -> None:
    """Delete a run store; refuses anything that is not one (never deletes a user's folder)."""
    path = Path(path)
    if not is_store(path):
        raise StoreError(f"{path}: not a dsv store; refusing to delete it")
    shutil.rmtree(path)


# ---- reading a grouped store as one run -------------------------------------------------------


def concatenate_candidates(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Every array of each group's candidates, concatenated in group (= candidate) order."""
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def combine_histories(parts: list[dict[str, np.ndarray]], sizes: list[int]) -> dict[str, np.ndarray]:
    """The groups' histories as one: the rows all groups committed; ``lambda`` (T, n_g)
    concatenated to (T, N), ``alive`` summed, every other term the mean weighted by group size
    (each term is a per-candidate mean within its group)."""
    rows = min((len(p.get("iteration", ())) for p in parts), default=0)
    if rows == 0:
        return {}
    weights = np.asarray(sizes, dtype=np.float64) / float(sum(sizes))
    out: dict[str, np.ndarray] = {"iteration": parts[0]["iteration"][:rows]}
    for name in sorted(set.intersection(*(set(p) for p in parts)) - {"iteration"}):
        columns = [p[name][:rows] for p in parts]
        if name == "lambda":
            out[name] = np.concatenate(columns, axis=1)
        elif name == "alive":
            out[name] = np.sum(columns, axis=0).astype(np.float32)
        else:
            out[name] = np.tensordot(weights, np.stack(columns), axes=1).astype(np.float32)
    return out


class Region:
    """One writer's part of a store: the candidates, checkpoint slots, history and commit record
    of one candidate group. ``record_key`` names the attribute holding the commit record."""

    def __init__(self, path: Path, group: zarr.Group, record_key: str, label: str):
        self.path = path  # the store's path (for messages and resume hints)
        self.group = group
        self.record_key = record_key
        self.label = label  # "groups/3", or "" for the root of a schema-2 store

    @property
    def record(self) -> dict[str, Any]:
        return dict(cast(dict[str, Any], self.group.attrs.get(self.record_key, {})))

    def _write_record(self, record: dict[str, Any]) -> None:
        self.group.attrs[self.record_key] = record

    @property
    def committed_iteration(self) -> int:
        return int(self.record.get("committed_iteration", 0))

    @property
    def history_length(self) -> int:
        return int(self.record.get("history_length", 0))

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
        return int(_array(self.group, "candidates/labels").shape[0])

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
        g.create_array("targets", shape=targets.shape, dtype="float32", chunks=targets.shape, overwrite=True)
        g.create_array("labels", shape=targets.shape[:1], dtype="int64", chunks=targets.shape[:1], overwrite=True)
        _array(g, "targets")[...] = targets.astype(np.float32)
        _array(g, "labels")[...] = targets.argmax(axis=1).astype(np.int64)
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

    def read_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The arrays of the committed checkpoint and its scalars."""
        record = self.record
        slot = record.get("state_slot")
        if slot not in ("a", "b") or f"state/{slot}" not in self.group:
            raise StoreError(f"{self.path}{' ' + self.label if self.label else ''}: holds no committed state yet")
        group = _group(self.group, f"state/{slot}")
        return {name: _values(group, name) for name in sorted(group.array_keys())}, dict(record.get("state", {}))

    def candidates(self) -> dict[str, np.ndarray]:
        if "candidates" not in self.group:
            raise StoreError(f"{self.path}{' ' + self.label if self.label else ''}: holds no candidates yet")
        arrays, _ = self.read_state()
        g = _group(self.group, "candidates")
        out = {"x": arrays["x"], "lambda": arrays["lambda"], "alive": arrays["alive"].astype(bool)}
        out.update({name: _values(g, name) for name in ("targets", "labels")})
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
                dtype = "int64" if name == "iteration" else "float32"
                h.create_array(
                    name,
                    shape=(0, *values.shape[1:]),
                    dtype=dtype,
                    chunks=(HISTORY_CHUNK, *values.shape[1:]),
                )
            arr = _array(h, name)
            if arr.shape[0] != start + count:  # also cuts rows an interrupted write left behind
                arr.resize((start + count, *values.shape[1:]))
            arr[start : start + count] = values
        return start + count

    def history(self) -> dict[str, np.ndarray]:
        n = self.history_length
        if n == 0 or "history" not in self.group:
            return {}
        h = _group(self.group, "history")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            names = sorted(h.array_keys())
        return {name: _values(h, name, n) for name in names}


class RunStore:
    """A run store: the root metadata (rank 0 writes it) and one :class:`Region` per group."""

    def __init__(self, path: Path, group: zarr.Group):
        self.path = path
        self.group = group

    # ---- opening -------------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path, meta: dict[str, Any], groups: int = 1) -> RunStore:
        """A new store of ``groups`` empty regions (each filled by the rank owning it)."""
        path = Path(path)
        if path.exists():
            raise StoreError(f"{path}: already exists")
        path.parent.mkdir(parents=True, exist_ok=True)
        group = zarr.open_group(str(path), mode="w-", zarr_format=3)
        full = {"schema_version": SCHEMA_VERSION, "groups": int(groups), "summary": {}, **meta}
        for key in DERIVED_KEYS:
            full.pop(key, None)
        regions = group.require_group("groups")
        for g in range(groups):  # created here, by one process: ranks then write inside their own only
            regions.require_group(str(g)).attrs[REGION_RECORD] = {"committed_iteration": 0, "history_length": 0}
        group.attrs["dsv"] = full
        return cls(path, group)

    @classmethod
    def open(cls, path: str | Path, mode: AccessMode = "r") -> RunStore:
        path = Path(path)
        if not path.exists():
            raise StoreError(f"{path}: no such store")
        if not is_store(path):
            raise StoreError(f"{path}: not a dsv store (no dsv metadata in zarr.json)")
        group = zarr.open_group(str(path), mode=mode, zarr_format=3)
        version = _attribute(group, "dsv").get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise StoreError(
                f"{path}: written with store schema {version}, this dsv reads schema {SCHEMA_VERSION}; "
                "upgrade dsv to read it"
            )
        if version < OLDEST_READABLE_SCHEMA:
            raise StoreError(
                f"{path}: written with the older store schema {version} (this dsv reads "
                f"{OLDEST_READABLE_SCHEMA} to {SCHEMA_VERSION}); rerun its pipeline with --fresh"
            )
        return cls(path, group)

    @property
    def schema_version(self) -> int:
        return int(_attribute(self.group, "dsv")["schema_version"])

    # ---- regions ---------------------------------------------------------------------------------

    @property
    def group_count(self) -> int:
        if self.schema_version < 3:
            return 1
        return int(_attribute(self.group, "dsv").get("groups", 1))

    def region(self, index: int) -> Region:
        """The region of group ``index`` (a schema-2 store is one region: its root)."""
        if not 0 <= index < self.group_count:
            raise StoreError(f"{self.path}: has {self.group_count} group(s), no group {index}")
        if self.schema_version < 3:
            return Region(self.path, self.group, "dsv", "")
        label = f"groups/{index}"
        if label not in self.group:
            raise StoreError(f"{self.path}: {label}: missing")
        return Region(self.path, _group(self.group, label), REGION_RECORD, label)

    def regions(self) -> list[Region]:
        return [self.region(g) for g in range(self.group_count)]

    def _only_region(self) -> Region:
        if self.group_count != 1:
            raise StoreError(f"{self.path}: has {self.group_count} groups; write through store.region(g)")
        return self.region(0)

    # ---- metadata ------------------------------------------------------------------------------

    @property
    def meta(self) -> dict[str, Any]:
        """The root metadata; in a schema-3 store with ``committed_iteration`` and
        ``history_length`` derived from the regions (the smallest of each)."""
        meta = dict(_attribute(self.group, "dsv"))
        if self.schema_version >= 3:
            regions = self.regions()
            meta["committed_iteration"] = min(r.committed_iteration for r in regions)
            meta["history_length"] = min(r.history_length for r in regions)
        return meta

    def _write_meta(self, meta: dict[str, Any]) -> None:
        if self.schema_version >= 3:
            meta = {k: v for k, v in meta.items() if k not in DERIVED_KEYS}
        self.group.attrs["dsv"] = meta

    def update_meta(self, **values: Any) -> None:
        meta = dict(_attribute(self.group, "dsv"))
        meta.update(values)
        self._write_meta(meta)

    @property
    def results(self) -> dict[str, Any]:
        """What the stages after synthesis measured (JSON values by key; ``show --json`` lists them)."""
        return dict(_attribute(self.group, "dsv").get("results", {}))

    def put_result(self, key: str, value: Any) -> None:
        """Record one stage result (plain JSON: numbers, strings, lists, dicts) in one atomic write."""
        meta = dict(_attribute(self.group, "dsv"))
        meta["results"] = {**meta.get("results", {}), key: value}
        self._write_meta(meta)

    # ---- candidates, state and history over every region ---------------------------------------

    def init_candidates(self, *args, **kwargs) -> None:
        """:meth:`Region.init_candidates` of a one-group store."""
        self._only_region().init_candidates(*args, **kwargs)

    def commit(self, *args, **kwargs) -> None:
        """:meth:`Region.commit` of a one-group store."""
        self._only_region().commit(*args, **kwargs)

    def read_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """:meth:`Region.read_state` of a one-group store."""
        return self._only_region().read_state()

    @property
    def has_candidates(self) -> bool:
        """Whether every group holds candidates (false for a store that only the select stage used)."""
        return all("candidates" in r.group for r in self.regions())

    def candidates(self) -> dict[str, np.ndarray]:
        """Every group's committed candidates, in candidate order."""
        return concatenate_candidates([r.candidates() for r in self.regions()])

    @property
    def history_length(self) -> int:
        return int(self.meta.get("history_length", 0))

    def history(self) -> dict[str, np.ndarray]:
        """The history of a one-group store; of several groups, their rows combined
        (see :func:`combine_histories`)."""
        regions = self.regions()
        if len(regions) == 1:
            return regions[0].history()
        return combine_histories([r.history() for r in regions], [r.size for r in regions])

    # ---- exports -------------------------------------------------------------------------------

    def export_path(self, filename: str) -> Path:
        """Where a pipeline's export files go: inside the store, never elsewhere."""
        if not is_plain_file_name(filename):
            raise StoreError(f"export file name {filename!r} must be a plain file name")
        folder = self.path / "exports"
        folder.mkdir(exist_ok=True)
        return folder / filename
