"""The Zarr (v3) run store: one group per run, no pickles, committed lengths written last.

Layout::

    <store>/                 group; attributes["dsv"] = metadata (schema, config, hash, summary,
                             committed iteration and history length)
      candidates/x           float32 (N, C, H, W)   candidates in model input space
      candidates/lambda      float32 (N,)
      candidates/targets     float32 (N, K)         soft targets (rows sum to 1)
      candidates/labels      int64   (N,)           argmax of the targets
      candidates/alive       bool    (N,)
      history/iteration      int64   (T,)
      history/<term>         float32 (T,)           every loss term, entropy, accuracy, alive
      history/lambda         float32 (T, N)
      exports/               PNG and NPZ files written by the export stage

Appending in Zarr writes the new shape before the data, so a reader trusts only
``history_length`` in the attributes, which is written after the data.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from dsv.errors import StoreError

SCHEMA_VERSION = 1
HISTORY_CHUNK = 256


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


def remove_store(path: str | Path) -> None:
    """Delete a run store; refuses anything that is not one (never deletes a user's folder)."""
    path = Path(path)
    if not is_store(path):
        raise StoreError(f"{path}: not a dsv store; refusing to delete it")
    shutil.rmtree(path)


class RunStore:
    def __init__(self, path: Path, group: zarr.Group):
        self.path = path
        self.group = group

    # ---- opening -------------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path, meta: dict[str, Any]) -> "RunStore":
        path = Path(path)
        if path.exists():
            raise StoreError(f"{path}: already exists")
        path.parent.mkdir(parents=True, exist_ok=True)
        group = zarr.open_group(str(path), mode="w-", zarr_format=3)
        full = {
            "schema_version": SCHEMA_VERSION,
            "committed_iteration": 0,
            "history_length": 0,
            "summary": {},
            **meta,
        }
        group.attrs["dsv"] = full
        return cls(path, group)

    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> "RunStore":
        path = Path(path)
        if not path.exists():
            raise StoreError(f"{path}: no such store")
        if not is_store(path):
            raise StoreError(f"{path}: not a dsv store (no dsv metadata in zarr.json)")
        group = zarr.open_group(str(path), mode=mode, zarr_format=3)
        version = group.attrs["dsv"].get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise StoreError(
                f"{path}: written with store schema {version}, this dsv reads up to {SCHEMA_VERSION}; "
                "upgrade dsv to read it"
            )
        return cls(path, group)

    # ---- metadata ------------------------------------------------------------------------------

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.group.attrs["dsv"])

    def update_meta(self, **values: Any) -> None:
        meta = self.meta
        meta.update(values)
        self.group.attrs["dsv"] = meta

    # ---- candidates ----------------------------------------------------------------------------

    def init_candidates(self, x: np.ndarray, lambdas: np.ndarray, targets: np.ndarray, alive: np.ndarray) -> None:
        g = self.group.require_group("candidates")
        n = x.shape[0]
        g.create_array("x", shape=x.shape, dtype="float32", chunks=(1, *x.shape[1:]), overwrite=True)
        g.create_array("lambda", shape=(n,), dtype="float32", chunks=(n,), overwrite=True)
        g.create_array("targets", shape=targets.shape, dtype="float32", chunks=targets.shape, overwrite=True)
        g.create_array("labels", shape=(n,), dtype="int64", chunks=(n,), overwrite=True)
        g.create_array("alive", shape=(n,), dtype="bool", chunks=(n,), overwrite=True)
        g["targets"][...] = targets.astype(np.float32)
        g["labels"][...] = targets.argmax(axis=1).astype(np.int64)
        self.write_candidates(x, lambdas, alive)

    def write_candidates(self, x: np.ndarray, lambdas: np.ndarray, alive: np.ndarray) -> None:
        g = self.group["candidates"]
        if tuple(g["x"].shape) != tuple(x.shape):  # resolution schedule changed the size
            g.create_array("x", shape=x.shape, dtype="float32", chunks=(1, *x.shape[1:]), overwrite=True)
        g["x"][...] = x.astype(np.float32)
        g["lambda"][...] = lambdas.astype(np.float32)
        g["alive"][...] = alive.astype(bool)

    def candidates(self) -> dict[str, np.ndarray]:
        if "candidates" not in self.group:
            raise StoreError(f"{self.path}: holds no candidates yet")
        g = self.group["candidates"]
        return {name: g[name][...] for name in ("x", "lambda", "targets", "labels", "alive")}

    # ---- histories -----------------------------------------------------------------------------

    def append_history(self, rows: dict[str, np.ndarray]) -> int:
        """Append rows (every array with the same first dimension, one row per recorded iteration).

        Data first, then ``history_length`` in the attributes: a reader never sees a row whose
        data were not written.
        """
        if not rows:
            return self.history_length
        h = self.group.require_group("history")
        start = self.history_length
        count = len(next(iter(rows.values())))
        for name, values in rows.items():
            values = np.asarray(values)
            if name not in h:
                dtype = "int64" if name == "iteration" else "float32"
                h.create_array(
                    name, shape=(0, *values.shape[1:]), dtype=dtype,
                    chunks=(HISTORY_CHUNK, *values.shape[1:]),
                )
            arr = h[name]
            if arr.shape[0] != start + count:
                arr.resize((start + count, *values.shape[1:]))
            arr[start: start + count] = values
        self.update_meta(history_length=start + count)
        return start + count

    @property
    def history_length(self) -> int:
        return int(self.meta.get("history_length", 0))

    def history(self) -> dict[str, np.ndarray]:
        n = self.history_length
        if n == 0 or "history" not in self.group:
            return {}
        h = self.group["history"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            names = sorted(h.array_keys())
        return {name: h[name][:n] for name in names}

    # ---- exports -------------------------------------------------------------------------------

    def export_path(self, filename: str) -> Path:
        """Where a pipeline's export files go: inside the store, never elsewhere."""
        if Path(filename).name != filename or filename in ("", ".", ".."):
            raise StoreError(f"export file name {filename!r} must be a plain file name")
        folder = self.path / "exports"
        folder.mkdir(exist_ok=True)
        return folder / filename
