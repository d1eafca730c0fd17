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
leaves the previous checkpoint (:mod:`dsv.store.region` reads and writes one region).

A new store is built under a temporary name next to its path (``.<name>.creating-<pid>-...``)
and renamed into place once its metadata is complete, so a store path holds either nothing or a
whole store; what an interrupted creation leaves behind is removed by the next run of it
(:mod:`dsv.store.folders` tells these apart)."""

from __future__ import annotations

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
from dsv.store.arrays import CHECKSUMMED_SCHEMA, open_group
from dsv.store.checkpoint import fault_point
from dsv.store.folders import (
    building_prefix,
    is_half_created,
    is_store,
    remove_abandoned_builds,
    root_document,
)
from dsv.store.region import Region

SCHEMA_VERSION = 4
OLDEST_READABLE_SCHEMA = 2
OLDEST_CONTINUABLE_SCHEMA = 3  # schema 3 differs only in what each array carries, not in layout
REGION_RECORD = "dsv_region"
# commit-record keys RunStore.meta derives from the regions of a schema-3 store (never written at its root)
DERIVED_KEYS = ("committed_iteration", "history_length")
AccessMode = Literal["r", "r+", "a", "w", "w-"]  # zarr's modes of opening a group


# zarr types an attribute as any JSON value: the layout above says which each one is
def _attribute(group: zarr.Group, key: str) -> dict[str, Any]:
    """The JSON object stored as attribute ``key`` of ``group``."""
    return cast(dict[str, Any], group.attrs[key])


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
        building = path.parent / f"{building_prefix(path)}{os.getpid()}-{secrets.token_hex(4)}"
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
            if (path / "zarr.json").is_file() and root_document(path) is None:
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
