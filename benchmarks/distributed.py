"""Throughput of a grouped synthesis on 1, 2, ... processes: candidate-iterations per second.

    python benchmarks/distributed.py [--nproc 1 2] [--repeats 3] [--threads 1]
    python benchmarks/distributed.py --device cuda --backend nccl --nproc 1 2 4 8 --groups 8

Runs the EfficientNet-Lite0 synthesis of pipelines/imagenet_gen.toml at one resolution
(``--size``, 64 px) with ``--groups`` groups of ``--per-group`` candidates for ``--iterations``
steps. Each rank loads the model first; the clock runs from a barrier after that to the end of
the synthesize stage (which ends when every rank's groups are in the store), so process start-up
and model loading are not counted; they are in the "launch s" column. Best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from dsv import distributed
from dsv.pipeline import Pipeline

PIPELINE = Path(__file__).resolve().parent.parent / "pipelines" / "imagenet_gen.toml"
# ImageNet classes for the candidates, one per candidate (cycled)
CLASSES = [1, 130, 207, 285, 323, 417, 508, 949]


def overrides(args) -> list[str]:
    count = args.groups * args.per_group
    classes = [CLASSES[i % len(CLASSES)] for i in range(count)]
    return [f"synthesis.iterations={args.iterations}", f"synthesis.classes={classes}",
            f"synthesis.groups={args.groups}", f"synthesis.resolutions=[[1, {args.size}]]",
            "synthesis.checkpoint_every=0", 'run.stages=["synthesize"]', f'run.device="{args.device}"']


def timed_rank(local_rank: int, args, store: str, result_file: str) -> None:
    """One rank: load the model, wait for the others, time the synthesize stage; rank 0 writes the time."""
    torch.set_num_threads(args.threads)
    pipeline = Pipeline.from_toml(PIPELINE, overrides=overrides(args), store=store, progress=False, fresh=True)
    pipeline.device = distributed.rank_device(pipeline.device)
    loaded = pipeline.model()
    if pipeline.device.type == "cuda":
        torch.cuda.synchronize()
    distributed.barrier()
    start = time.perf_counter()
    pipeline.synthesize(loaded)  # ends at a barrier: every group is in the store
    seconds = time.perf_counter() - start
    if distributed.is_main_rank():
        Path(result_file).write_text(json.dumps({"seconds": seconds}))


def measure(args, nproc: int, root: Path, repeat: int) -> tuple[float, float]:
    """(synthesis seconds, launch-to-return seconds) of one run on ``nproc`` processes."""
    store, result = root / f"n{nproc}-r{repeat}.zarr", root / f"n{nproc}-r{repeat}.json"
    start = time.perf_counter()
    distributed.launch(timed_rank, args, str(store), str(result), nproc=nproc, backend=args.backend)
    launch = time.perf_counter() - start
    return json.loads(result.read_text())["seconds"], launch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", choices=distributed.BACKENDS, default=None)
    ap.add_argument("--groups", type=int, default=2)
    ap.add_argument("--per-group", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the spawned ranks
    torch.set_num_threads(args.threads)
    work = args.groups * args.per_group * args.iterations
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for nproc in args.nproc:
            runs = []
            for r in range(args.repeats):
                runs.append(measure(args, nproc, Path(tmp), r))
                print(f"{nproc} process(es), run {r + 1}: synthesis {runs[-1][0]:.2f} s, "
                      f"launch {runs[-1][1]:.2f} s", flush=True)
            rows.append((nproc, min(s for s, _ in runs), min(w for _, w in runs)))
    load = os.getloadavg()
    print(f"\nEfficientNet-Lite0, {args.size} px, {args.groups} groups x {args.per_group} candidates, "
          f"{args.iterations} iterations, device {args.device}, {args.threads} thread(s) per process, "
          f"best of {args.repeats}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"on {os.cpu_count()} CPUs\n")
    print(f"{'processes':>9} | {'synthesis s':>11} | {'cand-it/s':>9} | {'speed-up':>8} | {'efficiency':>10} | {'launch s':>8}")
    print("-" * 70)
    first_nproc, first_seconds, _ = rows[0]
    for nproc, seconds, launch in rows:
        speedup = first_seconds / seconds  # against the first row (1 process by default)
        print(f"{nproc:>9} | {seconds:>11.2f} | {work / seconds:>9.1f} | {speedup:>7.2f}x | "
              f"{100 * speedup * first_nproc / nproc:>9.0f}% | {launch:>8.2f}")


if __name__ == "__main__":
    main()
