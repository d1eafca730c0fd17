"""Files, bytes on disk and checkpoint write time of run stores of 3x224x224 candidates, written
through dsv's own store writer (``benchmarks/store_layout.py``): ``RunStore.create``,
``Region.init_candidates`` and ``Region.commit``, the calls a synthesis run makes, with the arrays
its checkpoint holds (x, lambda, alive, Adam's moments of x and lambda from a real
``torch.optim.Adam``, the RNG states, soft targets over 1000 classes, and ``every`` history rows of
every loss term and of lambda).

No model runs: the layout does not depend on it. Between checkpoints Adam takes one step on a
made-up gradient, so every checkpoint writes new values. A store whose two checkpoint slots would
not fit in the room given (the raw array size, estimated before writing, decides) is written as
regions of ``group_size`` candidates one after another, each checked with ``verify``'s region
check, measured and then deleted. :func:`sharded_layout` swaps zarr v3's sharding in for dsv's
chunks, to compare.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import numpy as np
import torch
from zarr.codecs import Crc32cCodec, ZstdCodec

import dsv.store.region
from dsv.config import config_hash
from dsv.store import RunStore, checkpoint
from dsv.store.arrays import CHUNK_BYTES, create_array
from dsv.store.region import Region
from dsv.store.verify import Report, verify, verify_region

ROW = (3, 224, 224)
CLASSES = 1000
TERMS = ("primal", "stationarity", "primal_aug", "stationarity_aug", "tv", "norm", "total", "entropy", "accuracy")
STATE_ARRAYS = 3  # x and Adam's two moments of x: the arrays that grow with the candidates' size


@attrs.define(kw_only=True)
class LayoutSettings:
    """One measurement's settings (the script's flags of the same names)."""

    checkpoints: int = 3  # checkpoints after the first commit
    every: int = 50  # history rows per checkpoint (checkpoint_every)
    group_size: int = 1000  # candidates per region of a store too big for the room at once
    max_gib: float | None = None  # most a store may take at once (None: half the free disk)
    layout: str = "chunks"  # or "shards" (inside :func:`sharded_layout`)
    shard_mib: int = 1024
    inner_mib: int = 1

    @classmethod
    def from_namespace(cls, args) -> LayoutSettings:
        return cls(**{f.name: getattr(args, f.name) for f in attrs.fields(cls)})


# ---- the arrays a run writes ---------------------------------------------------------------------


class Candidates:
    """``n`` candidates with their lambdas and a real Adam optimizer over both."""

    def __init__(self, n: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn((n, *ROW), generator=generator).requires_grad_(True)
        self.lambdas = torch.full((n,), 0.1, requires_grad=True)
        self.alive = torch.ones(n, dtype=torch.bool)
        labels = torch.randint(0, CLASSES, (n,), generator=generator)
        self.targets = torch.nn.functional.one_hot(labels, CLASSES).float()
        self.optimizer = torch.optim.Adam([self.x, self.lambdas], lr=0.01)

    def step(self) -> None:
        with torch.no_grad():
            self.x.grad = self.x.detach() * 0.01
            self.lambdas.grad = torch.full_like(self.lambdas, -0.01)
        self.optimizer.step()

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        """What ``SynthesisRun.state`` hands to the store."""
        arrays = {
            "x": self.x.detach().numpy(),
            "lambda": self.lambdas.detach().numpy(),
            "alive": self.alive.numpy(),
        }
        adam, scalars = checkpoint.capture_adam(self.optimizer, {"x": self.x, "lambda": self.lambdas})
        rng, rng_scalars = checkpoint.capture_rng()
        arrays.update(adam)
        arrays.update(rng)
        scalars.update(rng_scalars)
        scalars["resolution"] = list(ROW[1:])
        return arrays, scalars

    def history_rows(self, last_iteration: int, every: int) -> dict[str, np.ndarray]:
        rows: dict[str, np.ndarray] = {"iteration": np.arange(last_iteration - every + 1, last_iteration + 1)}
        for name in TERMS:
            rows[name] = np.random.rand(every).astype(np.float32)
        rows["alive"] = np.full(every, float(self.alive.sum()), dtype=np.float32)
        rows["lambda"] = np.repeat(self.lambdas.detach().numpy()[None], every, axis=0)
        return rows


def write_region(region: Region, n: int, checkpoints: int, every: int, seed: int) -> tuple[float, list[float], int]:
    """The first commit (``init_candidates``) and ``checkpoints`` more of one region, as a run
    writes them; returns the seconds of the first and of each later commit, and the bytes of the
    arrays and history rows handed to the last commit."""
    candidates = Candidates(n, seed)
    start = time.perf_counter()
    region.init_candidates(
        candidates.x.detach().numpy(),
        candidates.lambdas.detach().numpy(),
        candidates.targets.numpy(),
        candidates.alive.numpy(),
        state=candidates.state(),
    )
    first = time.perf_counter() - start
    seconds = []
    for k in range(1, checkpoints + 1):
        candidates.step()  # one step stands for ``every``: only the last step's values reach the store
        arrays, scalars = candidates.state()
        rows = candidates.history_rows(k * every, every)
        start = time.perf_counter()
        region.commit(k * every, arrays, scalars, rows)
        seconds.append(time.perf_counter() - start)
    handed = sum(a.nbytes for a in arrays.values()) + sum(np.asarray(r).nbytes for r in rows.values())
    return first, seconds, handed


# ---- what is on disk -----------------------------------------------------------------------------


def on_disk(folder: Path) -> tuple[int, int, int]:
    """(files, apparent bytes, allocated bytes) under ``folder``, as ``du`` counts them."""
    files = apparent = allocated = 0
    for root, _, names in os.walk(folder):
        for name in names:
            st = os.lstat(os.path.join(root, name))
            files += 1
            apparent += st.st_size
            allocated += st.st_blocks * 512
    return files, apparent, allocated


def raw_bytes(n: int, checkpoints: int, every: int) -> int:
    """The arrays' own size (before compression) of a store of ``n`` candidates with both slots
    written; used only to decide whether a store fits on the disk at once."""
    per_candidate = 4 * (STATE_ARRAYS * math.prod(ROW) + 3 + CLASSES) + 8 + 1
    return 2 * n * per_candidate + n * 4 * every * checkpoints


# ---- the sharded layout, for comparison ------------------------------------------------------------


def sharded(shard_bytes: int, inner_bytes: int):
    """``create_array`` and the checksum test of :mod:`dsv.store.region` for zarr's sharding."""

    def create_sharded(group, name, shape, dtype, rows=None):
        dtype = np.dtype(dtype)
        if not shape:
            return create_array(group, name, shape, dtype)
        row = max(dtype.itemsize * math.prod(shape[1:]), 1)
        shard = rows if rows is not None else min(max(1, shard_bytes // row), max(shape[0], 1))
        inner = max(1, min(shard, inner_bytes // row))
        shard -= shard % inner
        return group.create_array(
            name,
            shape=shape,
            dtype=dtype,
            chunks=(inner, *(max(1, s) for s in shape[1:])),
            shards=(shard, *(max(1, s) for s in shape[1:])),
            compressors=[ZstdCodec(level=0), Crc32cCodec()],
            config={"write_empty_chunks": True},
            overwrite=True,
        )

    def has_checksum(arr) -> bool:
        codecs = list(arr.metadata.codecs)
        codecs += [c for outer in codecs for c in getattr(outer, "codecs", ())]
        return any(isinstance(c, Crc32cCodec) for c in codecs)

    return create_sharded, has_checksum


@contextlib.contextmanager
def sharded_layout(shard_bytes: int, inner_bytes: int) -> Iterator[None]:
    """Stores written inside use zarr's sharding (the library does not write this layout: the
    benchmark swaps it into :mod:`dsv.store.region` to compare, and swaps dsv's back after)."""
    region = dsv.store.region
    saved = region.create_array, region._has_checksum
    region.create_array, region._has_checksum = sharded(shard_bytes, inner_bytes)
    try:
        yield
    finally:
        region.create_array, region._has_checksum = saved


# ---- one store -------------------------------------------------------------------------------------


def measure(root: Path, n: int, args: LayoutSettings) -> dict:
    """Write a store of ``n`` candidates under ``root`` (in regions one after another where it does
    not fit at once), measure it, delete it: one row of the table."""
    raw = raw_bytes(n, args.checkpoints, args.every)
    room = args.max_gib * 2**30 if args.max_gib is not None else shutil.disk_usage(root).free / 2
    groups = 1 if raw < room else math.ceil(n / args.group_size)
    sizes = [n // groups + (1 if g < n % groups else 0) for g in range(groups)]
    config = {"benchmark": {"name": "store_layout", "candidates": n, "layout": args.layout}}
    path = root / f"n{n}.zarr"
    store = RunStore.create(path, {"config": config, "config_hash": config_hash(config)}, groups=groups)
    checks = args.layout == "chunks"  # dsv's checked reads know dsv's layout only
    report = Report(path)
    firsts, seconds = [], []
    files = apparent = allocated = 0
    peak = verify_s = 0.0
    for g, size in enumerate(sizes):
        region = store.region(g)
        first, later, handed = write_region(region, size, args.checkpoints, args.every, seed=g)
        firsts.append(first)
        seconds += later
        if groups > 1:  # checked, measured, then its data deleted: only its zarr.json stays (counted at the end)
            if checks:
                start = time.perf_counter()
                verify_region(report, region)
                verify_s += time.perf_counter() - start
            folder = path / region.label
            before = on_disk(folder)
            peak = max(peak, on_disk(path)[2])
            for member in ("candidates", "state", "history"):
                shutil.rmtree(folder / member)
            after = on_disk(folder)
            files, apparent, allocated = (t + b - a for t, b, a in zip((files, apparent, allocated), before, after))
            print(f"  n={n}: group {g + 1} of {groups} ({size} candidates) written, measured, deleted", flush=True)
    final = on_disk(path)
    files, apparent, allocated = files + final[0], apparent + final[1], allocated + final[2]
    if checks and groups == 1:
        start = time.perf_counter()
        report = verify(path)
        verify_s = time.perf_counter() - start
    if not checks:
        verified = "not checked (dsv reads dsv's layout only)"
    elif report.ok:
        verified = "verify ok" if groups == 1 else "each region verified ok before deletion"
    else:
        verified = "verify: " + "; ".join(report.problems)
    shutil.rmtree(path)
    return {
        "candidates": n,
        "layout": args.layout,
        "groups": groups,
        "group_sizes": sorted(set(sizes)),
        "all_on_disk_at_once": groups == 1,
        "peak_allocated_bytes": peak or allocated,
        "checkpoints": args.checkpoints,
        "history_rows_per_checkpoint": args.every,
        "files": files,
        "apparent_bytes": apparent,
        "allocated_bytes": allocated,
        "raw_array_bytes_estimate": raw,
        "bytes_per_checkpoint": handed,  # of one region
        "first_commit_s": statistics.median(firsts),
        "checkpoint_s_median": statistics.median(seconds),
        "checkpoint_s_max": max(seconds),
        "checkpoint_s_sum": sum(seconds),
        "verify_s": verify_s,
        "verified": verified,
    }


def gib(b: int) -> str:
    return f"{b / 2**30:.3f}"


def table(rows: list[dict], args: LayoutSettings) -> None:
    """Print the rows as a table, with a note for each store written in regions."""
    what = (
        f"dsv chunks of about {CHUNK_BYTES // 2**20} MiB"
        if args.layout == "chunks"
        else f"zarr shards of about {args.shard_mib} MiB, inner chunks of about {args.inner_mib} MiB"
    )
    print(f"\nstore layout: {what}; candidates 3x224x224 float32, the first commit + {args.checkpoints} checkpoints,")
    print(f"{args.every} history rows each; both checkpoint slots written\n")
    head = (
        f"{'candidates':>10} | {'written as':>22} | {'files':>7} | {'GiB on disk':>11} | {'GiB apparent':>12} | "
        f"{'s / checkpoint':>14} | {'max s':>6} | {'GiB / s':>7} | check"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        written = "one store" if r["all_on_disk_at_once"] else f"{r['groups']} groups in turn"
        rate = r["bytes_per_checkpoint"] / r["checkpoint_s_median"] / 2**30
        print(
            f"{r['candidates']:>10} | {written:>22} | {r['files']:>7} | {gib(r['allocated_bytes']):>11} | "
            f"{gib(r['apparent_bytes']):>12} | {r['checkpoint_s_median']:>14.3f} | {r['checkpoint_s_max']:>6.3f} | "
            f"{rate:>7.2f} | {r['verified']}"
        )
    for r in rows:
        if not r["all_on_disk_at_once"]:
            print(
                f"\n{r['candidates']} candidates: two slots need about {gib(r['raw_array_bytes_estimate'])} GiB "
                "(estimate of the raw arrays, not a measurement), more than the disk room given it; written as "
                f"{r['groups']} regions of {'/'.join(map(str, r['group_sizes']))} candidates, one after another, "
                "each measured and deleted before the next: files and bytes are the sum over the regions "
                f"(at most {gib(r['peak_allocated_bytes'])} GiB were on disk at once); s / checkpoint is "
                "per region (one rank's checkpoint), not for all candidates in one region"
            )
