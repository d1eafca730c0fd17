"""How the store writes its arrays and how it reads them back without trusting the disk.

Every array a schema-4 store writes carries zarr v3's ``crc32c`` codec after its compressor, is
chunked by bytes (rows of about :data:`CHUNK_BYTES`, so 300 candidates of 8x8 are one chunk, not
300) and has every chunk written, also one equal to the fill value (``write_empty_chunks``). A
reader can then tell damage from data: a missing chunk file inside the committed rows, a chunk
whose checksum fails, a shape that disagrees with its neighbours or garbage metadata is a
:class:`~dsv.errors.StoreError` naming the array, never zeros.

Stores written before (schema 2 and 3: no checksum, chunks equal to the fill value skipped) are
read with every structural check except the missing-chunk one (an absent chunk there may be
zeros the writer skipped).

One writer per chunk: every array belongs to one region (``groups/<g>/``, the candidate group
one rank owns), since groups never share an array; so a chunk, whatever its size, never holds
rows of two ranks, and a checkpoint writes files inside its own region's folder only.

Why chunks by bytes and not zarr v3 sharding (``benchmarks/store_layout.py``, 1000 candidates
of 3x224x224, three runs each on a shared machine): the same bytes on disk (3.11 GiB either
way), 299 files against 78, but a checkpoint took 7.3 to 8.4 s with these chunks and 12.3 to
14.9 s with shards of 1 GiB (inner chunks of 1 MiB). Files of 16 MiB are no burden to a file
system, and a chunk here is a file, so a missing one is found without reading a shard index.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, cast

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from dsv.errors import StoreError

# rows per chunk are chosen so that one chunk holds about this many bytes (at least one row)
CHUNK_BYTES = 16 * 2**20
HISTORY_ROWS = 256  # most rows of one history chunk (a checkpoint rewrites its last chunk)
CHECKSUMMED_SCHEMA = 4  # the first schema whose arrays carry crc32c and have every chunk written


def chunk_rows(row_shape: tuple[int, ...], itemsize: int, most: int | None = None) -> int:
    """Rows of one chunk for rows of ``row_shape``: about :data:`CHUNK_BYTES` (at least one,
    at most ``most``)."""
    rows = max(1, CHUNK_BYTES // max(itemsize * math.prod(row_shape), 1))
    return int(rows if most is None else max(1, min(rows, most)))


def create_array(
    group: zarr.Group, name: str, shape: tuple[int, ...], dtype: Any, rows: int | None = None
) -> zarr.Array:
    """A new array of ``group`` in the layout above (replacing one of that name)."""
    dtype = np.dtype(dtype)
    if not shape:
        chunks: tuple[int, ...] = ()
    else:
        first = rows if rows is not None else min(chunk_rows(shape[1:], dtype.itemsize), max(shape[0], 1))
        chunks = (max(1, first), *(max(1, s) for s in shape[1:]))
    return group.create_array(
        name,
        shape=shape,
        dtype=dtype,
        chunks=chunks,
        compressors=[ZstdCodec(level=0), Crc32cCodec()],
        config={"write_empty_chunks": True},
        overwrite=True,
    )


def writable(arr: zarr.Array) -> zarr.Array:
    """``arr`` set to write every chunk, also one equal to the fill value (the setting is not
    stored with the array: each opened array needs it again)."""
    return arr.with_config({"write_empty_chunks": True})


def store_root(group: zarr.Group) -> Path:
    """The folder of the local store ``group`` belongs to."""
    return Path(str(group.store_path.store.root))  # type: ignore[attr-defined]  # a LocalStore


def missing_chunks(root: Path, arr: zarr.Array, rows: int) -> list[str]:
    """Chunk files of the first ``rows`` rows of ``arr`` that are not on disk."""
    shape = tuple(arr.shape)
    if not shape:
        keys = [arr.metadata.encode_chunk_key(())]
    else:
        chunks = tuple(arr.chunks)
        counts = [math.ceil(rows / chunks[0]) if rows else 0] + [
            math.ceil(s / c) for s, c in zip(shape[1:], chunks[1:])
        ]
        keys = [arr.metadata.encode_chunk_key(tuple(int(i) for i in c)) for c in np.ndindex(*counts)]
    folder = root / arr.path
    return [key for key in keys if not (folder / key).is_file()]


def open_array(group: zarr.Group, name: str, label: str) -> zarr.Array:
    """The array ``name`` of ``group``; a missing or unreadable one is a StoreError naming ``label``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if name not in group:
                raise StoreError(f"{label}: missing")
            node = group[name]
    except StoreError:
        raise
    except Exception as exc:  # garbage zarr.json, unknown codec, ...: damage, not a bug of dsv
        raise StoreError(f"{label}/zarr.json: unreadable array metadata ({_reason(exc)})") from None
    if not isinstance(node, zarr.Array):
        raise StoreError(f"{label}: expected an array, found a group")
    return node


def open_group(group: zarr.Group, name: str, label: str) -> zarr.Group:
    """The group ``name`` of ``group``; a missing or unreadable one is a StoreError naming ``label``."""
    try:
        if name not in group:
            raise StoreError(f"{label}: missing")
        node = group[name]
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"{label}/zarr.json: unreadable group metadata ({_reason(exc)})") from None
    if not isinstance(node, zarr.Group):
        raise StoreError(f"{label}: expected a group, found an array")
    return node


def array_names(group: zarr.Group, label: str) -> list[str]:
    """The names of the arrays of ``group``, sorted; a member with unreadable metadata is a
    StoreError naming it (``label`` names ``group``)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return sorted(group.array_keys())
    except Exception:  # find the member whose metadata is damaged, to name it
        folder = store_root(group) / group.path
        for member in sorted(p.name for p in folder.iterdir() if (p / "zarr.json").is_file()):
            try:
                group[member]
            except Exception as exc:
                raise StoreError(f"{label}/{member}/zarr.json: unreadable array metadata ({_reason(exc)})") from None
        raise StoreError(f"{label}: its members cannot be listed; the store is damaged") from None


def read_array(
    group: zarr.Group,
    name: str,
    label: str,
    *,
    rows: int | None = None,
    strict: bool = True,
    dtype: str | None = None,
    shape: tuple[int | None, ...] | None = None,
) -> np.ndarray:
    """Array ``name`` of ``group`` read whole (or its first ``rows``), checked: its dtype kind
    (``dtype``: numpy kind letters, e.g. ``"f"``), its shape (``shape``, None for any length of an
    axis), every chunk on disk (``strict``: schema 4 on) and every checksum. Damage is a
    StoreError naming ``label``; nothing is ever read as fill values."""
    arr = open_array(group, name, label)
    if rows is not None and arr.shape[0] < rows:
        raise StoreError(f"{label}: has {arr.shape[0]} rows, the commit record says {rows}")
    if dtype is not None and arr.dtype.kind not in dtype:
        raise StoreError(f"{label}: dtype {arr.dtype}, expected {_kinds(dtype)}")
    if shape is not None:
        expected = tuple(shape)
        if len(arr.shape) != len(expected) or any(e is not None and e != s for s, e in zip(arr.shape, expected)):
            described = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
            raise StoreError(f"{label}: shape {tuple(arr.shape)}, expected {described}")
    if strict:
        count = rows if rows is not None else (arr.shape[0] if arr.shape else 0)
        lost = missing_chunks(store_root(group), arr, count)
        if lost:
            more = f" and {len(lost) - 1} more" if len(lost) > 1 else ""
            raise StoreError(f"{label}: chunk {lost[0]}{more} missing (deleted or never written); the store is damaged")
    try:
        return cast(np.ndarray, arr[...] if rows is None else arr[:rows])
    except Exception as exc:  # a checksum that fails, a truncated or garbled chunk
        raise StoreError(f"{label}: a chunk cannot be read ({_reason(exc)}); the store is damaged") from None


def _kinds(kinds: str) -> str:
    names = {"f": "float", "i": "integer", "u": "unsigned integer", "b": "bool"}
    return " or ".join(names.get(k, k) for k in kinds)


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__
