"""What lies at a store path: a dsv run store, what an interrupted creation left, or nothing.

A new store is built under a temporary name next to its path (``.<name>.creating-<pid>-...``,
see :meth:`dsv.store.run_store.RunStore.create`) and renamed into place whole; this module tells a
store from a half-created one, removes the builds of processes that are gone and deletes a store
without ever leaving half of one at its path."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from dsv.errors import StoreError
from dsv.store import lock


def root_document(path: Path) -> dict[str, Any] | None:
    """The parsed ``zarr.json`` of ``path``, or None when there is none or it is not a JSON object."""
    try:
        doc = json.loads((path / "zarr.json").read_bytes())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def is_store(path: str | Path) -> bool:
    """True when ``path`` is a dsv run store (a Zarr group carrying dsv metadata)."""
    doc = root_document(Path(path))
    attributes = doc.get("attributes") if doc is not None else None
    return isinstance(attributes, dict) and isinstance(attributes.get("dsv"), dict)


def is_half_created(path: str | Path) -> bool:
    """True when ``path`` is what an interrupted creation of an older dsv left (it wrote
    ``zarr.json`` first and the dsv metadata last): Zarr group documents only, no data."""
    path = Path(path)
    doc = root_document(path)
    if doc is None or doc.get("node_type") != "group" or is_store(path):
        return False
    files = [p for p in path.rglob("*") if not p.is_dir()]
    return all(p.name in ("zarr.json", lock.LOCK_FILE) for p in files)


def building_prefix(path: Path) -> str:
    return f".{path.name}.creating-"


def remove_abandoned_builds(path: str | Path) -> None:
    """Remove the temporary folders of creations of ``path`` whose process is gone (their lock
    is free); a build in progress in a live process is left alone."""
    path = Path(path)
    for folder in path.parent.glob(building_prefix(path) + "*"):
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
