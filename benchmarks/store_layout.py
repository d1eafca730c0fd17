"""Files, bytes on disk and checkpoint write time of run stores of 3x224x224 candidates, written
through dsv's own store writer: ``RunStore.create``, ``Region.init_candidates`` and
``Region.commit``, the calls a synthesis run makes, with the arrays its checkpoint holds (x,
lambda, alive, Adam's moments of x and lambda from a real ``torch.optim.Adam``, the RNG states,
soft targets over 1000 classes, and ``--every`` history rows of every loss term and of lambda).

    python benchmarks/store_layout.py [--candidates 10 1000 50000] [--checkpoints 3] [--every 50]
        [--group-size 1000] [--max-gib G] [--layout chunks|shards] [--dir DIR] [--json FILE]

No model runs: the layout does not depend on it. Between checkpoints Adam takes one step on a
made-up gradient, so every checkpoint writes new values (random normal candidates, as a run
starting from noise; they do not compress). A store whose two checkpoint slots would not fit in
half the free disk space (or in ``--max-gib``; the raw array size, estimated before writing,
decides) is written as regions of ``--group-size`` candidates (``synthesis.groups``, one rank's
region each) one after another, each checked with ``verify``'s region check, measured and then
deleted: every byte is written, but never all at once, and the table says so. Write times are
wall seconds of one ``commit`` (history rows, the slot, the commit record), without fsync (as in
a run), median over the checkpoints after the first.

``--layout shards`` measures zarr v3's sharding instead of dsv's chunks of about 16 MiB: the
store's arrays are created with shards of about ``--shard-mib`` holding inner chunks of about
1 MiB of rows (at least one candidate), crc32c on each inner chunk and on each shard index. The
library does not write this layout; the benchmark swaps it in to compare.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from pathlib import Path

import torch

from dsv.bench.store_layout import LayoutSettings, measure, sharded_layout, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", type=int, nargs="+", default=[10, 1000, 50000])
    ap.add_argument("--checkpoints", type=int, default=3, help="checkpoints after the first commit")
    ap.add_argument("--every", type=int, default=50, help="history rows per checkpoint (checkpoint_every)")
    ap.add_argument(
        "--group-size", type=int, default=1000, help="candidates per region of a store too big for the disk at once"
    )
    ap.add_argument(
        "--max-gib", type=float, default=None, help="most a store may take at once (default: half the free disk)"
    )
    ap.add_argument("--layout", choices=("chunks", "shards"), default="chunks")
    ap.add_argument("--shard-mib", type=int, default=1024)
    ap.add_argument("--inner-mib", type=int, default=1)
    ap.add_argument("--dir", type=Path, default=None, help="where to write the stores (default: a temporary folder)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    settings = LayoutSettings.from_namespace(args)
    torch.set_num_threads(1)
    layout: contextlib.AbstractContextManager = contextlib.nullcontext()
    if args.layout == "shards":
        layout = sharded_layout(args.shard_mib * 2**20, args.inner_mib * 2**20)
    rows = []
    with layout, tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for n in args.candidates:
            rows.append(measure(Path(tmp), n, settings))
            print(f"  n={n}: done", flush=True)
    table(rows, settings)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
