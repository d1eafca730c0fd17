"""The Zarr (v3) run store: one group per run, no pickles, one commit record per region written last.

A store is split into regions, one per candidate group (``synthesis.groups``, see
:mod:`dsv.synthesis.groups`); each region has exactly one writer (the rank that owns the group), so ranks
never write the same array or the same metadata document. Rank 0 alone writes the root metadata.

Layout (schema 4; schema 3 is the same without checksums, see :mod:`dsv.store.arrays`)::

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
      writer.lock            the writer's OS lock (:mod:`dsv.store.lock`); host and pid inside

Schema 2 stores (one region: the root itself, its commit record inside attributes["dsv"]) are
still read. A checkpoint writes the history rows and the slot that is not committed, then the
commit record (one atomic write of the region's ``zarr.json``). Appending in Zarr writes the new
shape before the data, so a reader trusts only the committed lengths; a crash at any moment
leaves the previous checkpoint.

A new store is built under a temporary name next to its path (``.<name>.creating-<pid>-...``)
and renamed into place once its metadata is complete, so a store path holds either nothing or a
whole store; what an interrupted creation leaves behind is removed by the next run of it."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import zarr

from dsv.config.names import is_plain_file_name
from dsv.errors import StoreError
from dsv.store import lock
from dsv.store.arrays import (
    CHECKSUMMED_SCHEMA,
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

SCHEMA_VERSION = 4
OLDEST_READABLE_SCHEMA = 2
OLDEST_CONTINUABLE_SCHEMA = 3  # schema 3 differs only in what each array carries, not in layout
REGION_RECORD = "dsv_region"
# commit-record keys RunStore.meta derives from the regions of a schema-3 store (never written at its root)
DERIVED_KEYS = ("committed_iteration", "history_length")
AccessMode = Literal["r", "r+", "a", "w", "w-"]  # zarr's modes of opening a group


def _root_document(path: Path) -> dict[str, Any] | None:
    """The parsed ``zarr.json`` of ``path``, or None when there is none or it is not a JSON object."""
    try:
        doc = json.loads((path / "zarr.json").read_bytes())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def is_store(path: str | Path) -> bool:
    """True when ``path`` is a dsv run store (a Zarr group carrying dsv metadata)."""
    doc = _root_document(Path(path))
    attributes = doc.get("attributes") if doc is not None else None
    return isinstance(attributes, dict) and isinstance(attributes.get("dsv"), dict)


def is_half_created(path: str | Path) -> bool:
    """True when ``path`` is what an interrupted creation of an older dsv left (it wrote
    ``zarr.json`` first and the dsv metadata last): Zarr group documents only, no data."""
    path = Path(path)
    doc = _root_document(path)
    if doc is None or doc.get("node_type") != "group" or is_store(path):
        return False
    files = [p for p in path.rglob("*") if not p.is_dir()]
    return all(p.name in ("zarr.json", lock.LOCK_FILE) for p in files)


def _building_prefix(path: Path) -> str:
    return f".{path.name}.creating-"


def remove_abandoned_builds(path: str | Path) -> None:
    """Remove the temporary folders of creations of ``path`` whose process is gone (their lock
    is free); a build in progress in a live process is left alone."""
    path = Path(path)
    for folder in path.parent.glob(_building_prefix(path) + "*"):
        if not folder.is_dir():
            continue
        try:
            fd = lock.lock_folder(folder)
        except StoreError:
            continue  # still being built by a live process
        try:
            shutil.rmtree(folder)
        finally:
            os.close(fd)


# zarr types a member of a group as array or group, an array's contents as any array-like or a
# scalar, an attribute as any JSON value: the layout above says which each one is
def _array(group: zarr.Group, name: str) -> zarr.Array:
    """The array ``name`` of ``group``."""
    return cast(zarr.Array, group[name])


def _group(group: zarr.Group, name: str) -> zarr.Group:
    """The group ``name`` of ``group``."""
    return cast(zarr.Group, group[name])


def _attribute(group: zarr.Group, key: str) -> dict[str, Any]:
    """The JSON object stored as attribute ``key`` of ``group``."""
    return cast(dict[str, Any], group.attrs[key])


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


def remove_store(path: str | Path) -> None:
    """Delete a run store, or what an interrupted creation left at its path; refuses anything
    else (never deletes a user's folder) and a store another process is writing (its lock)."""
    path = Path(path)
    if not (is_store(path) or is_half_created(path)):
        raise StoreError(f"{path}: not a dsv store; refusing to delete it")
    lock.acquire(path)
    # renamed away first, under the lock: the path never holds a half-deleted store
    trash = path.parent / f".{path.name}.removing-{os.getpid()}-{secrets.token_hex(4)}"
    os.rename(path, trash)
    lock.release(path)
    shutil.rmtree(trash)


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


class RunStore:
    """A run store: the root metadata (rank 0 writes it) and one :class:`Region` per group."""

    def __init__(self, path: Path, group: zarr.Group):
        self.path = path
        self.group = group

    # ---- opening -------------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path, meta: dict[str, Any], groups: int = 1) -> RunStore:
        """A new store of ``groups`` empty regions (each filled by the rank owning it), built
        under a temporary name and renamed into place whole; this process then holds its writer
        lock (:mod:`dsv.store.lock`)."""
        path = Path(path)
        if path.exists():
            raise StoreError(f"{path}: already exists")
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned_builds(path)
        building = path.parent / f"{_building_prefix(path)}{os.getpid()}-{secrets.token_hex(4)}"
        building.mkdir()
        fd = lock.lock_folder(building)
        try:
            group = zarr.open_group(str(building), mode="a", zarr_format=3)
            full = {"schema_version": SCHEMA_VERSION, "groups": int(groups), "summary": {}, **meta}
            for key in DERIVED_KEYS:
                full.pop(key, None)
            regions = group.require_group("groups")
            for g in range(groups):  # created here, by one process: ranks then write inside their own only
                regions.require_group(str(g)).attrs[REGION_RECORD] = {"committed_iteration": 0, "history_length": 0}
            group.attrs["dsv"] = full
            fault_point("in-creation", 0)
            try:
                os.rename(building, path)  # fails when another process created the path meanwhile
            except OSError:
                raise StoreError(f"{path}: already exists (created by another process just now)") from None
        except BaseException as exc:
            os.close(fd)
            shutil.rmtree(building, ignore_errors=True)
            if isinstance(exc, OSError) and not exc.filename:
                raise OSError(exc.errno, exc.strerror, str(path)) from None
            raise
        lock.adopt(fd, path)
        return cls(path, zarr.open_group(str(path), mode="r+", zarr_format=3))

    @classmethod
    def open(cls, path: str | Path, mode: AccessMode = "r", *, writer: bool = False) -> RunStore:
        """The store at ``path``; ``writer`` takes its writer lock first (refused while another
        process holds it). A damaged root is a StoreError naming its ``zarr.json``."""
        path = Path(path)
        if not path.exists():
            raise StoreError(f"{path}: no such store")
        if not is_store(path):
            if (path / "zarr.json").is_file() and _root_document(path) is None:
                raise StoreError(f"{path}/zarr.json: not a JSON object; the store's root metadata is damaged")
            if is_half_created(path):
                raise StoreError(
                    f"{path}: a store whose creation was interrupted (no dsv metadata); "
                    "run its pipeline again (or with --fresh) to replace it"
                )
            raise StoreError(f"{path}: not a dsv store (no dsv metadata in zarr.json)")
        if writer:
            lock.acquire(path)
        try:
            group = zarr.open_group(str(path), mode=mode, zarr_format=3)
        except Exception as exc:
            raise StoreError(f"{path}/zarr.json: unreadable group metadata ({type(exc).__name__}: {exc})") from None
        version = _attribute(group, "dsv").get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise StoreError(
                f"{path}: written with store schema {version}, this dsv reads schema {SCHEMA_VERSION}; "
                "upgrade dsv to read it"
            )
        if isinstance(version, bool) or version < OLDEST_READABLE_SCHEMA:
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
        groups = _attribute(self.group, "dsv").get("groups", 1)
        if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
            raise StoreError(f"{self.path}/zarr.json: groups: expected an integer >= 1, got {groups!r}")
        return groups

    def region(self, index: int) -> Region:
        """The region of group ``index`` (a schema-2 store is one region: its root)."""
        if not 0 <= index < self.group_count:
            raise StoreError(f"{self.path}: has {self.group_count} group(s), no group {index}")
        strict = self.schema_version >= CHECKSUMMED_SCHEMA
        if self.schema_version < 3:
            return Region(self.path, self.group, "dsv", "", strict)
        label = f"groups/{index}"
        return Region(self.path, open_group(self.group, label, f"{self.path}: {label}"), REGION_RECORD, label, strict)

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

    def check(self) -> None:
        """Read what ``show`` reports from, checked (the committed state, candidates and history
        of every region): the first damage found is a StoreError naming the array."""
        for region in self.regions():
            if "candidates" in region.group:
                region.candidates()
            region.history()

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
