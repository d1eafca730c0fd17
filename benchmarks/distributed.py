"""Throughput of a grouped synthesis on 1, 2, ... processes: candidate-iterations per second.

    python benchmarks/distributed.py [--nproc 1 2] [--repeats 3] [--threads 1]
    python benchmarks/distributed.py --device cuda --backend nccl --nproc 1 2 4 8 --groups 8

Runs the EfficientNet-Lite0 synthesis of pipelines/imagenet_gen.toml at one resolution
(``--size``, 64 px) with ``--groups`` groups of ``--per-group`` candidates for ``--iterations``
steps. Each rank loads the model first; the clock runs from a barrier after that to the end of
the synthesize stage (which ends when every rank's groups are in the store), so process start-up
and model loading are not counted; they are in the "launch s" column. Best of ``--repeats``.

The "independent" rows are the control: N plain processes (no torch.distributed, no shared
store), each synthesizing 1/N of the groups into a store of its own, started together. On a
machine shared with other work they show how much parallel compute there was to be had; the
N-rank run cannot scale better than they do.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from dsv.pipeline import Pipeline
from dsv.synthesis import distributed

PIPELINE = Path(__file__).resolve().parent.parent / "pipelines" / "imagenet_gen.toml"
# ImageNet classes for the candidates, one per candidate (cycled)
CLASSES = [1, 130, 207, 285, 323, 417, 508, 949]


def overrides(args) -> list[str]:
    count = args.groups * args.per_group
    classes = [CLASSES[i % len(CLASSES)] for i in range(count)]
    return [
        f"synthesis.iterations={args.iterations}",
        f"synthesis.classes={classes}",
        f"synthesis.groups={args.groups}",
        f"synthesis.resolutions=[[1, {args.size}]]",
        "synthesis.checkpoint_every=0",
        'run.stages=["synthesize"]',
        f'run.device="{args.device}"',
    ]


def timed_rank(local_rank: int, args, store: str, result_file: str) -> None:
    """One rank: load the model, wait for the others, time the synthesize stage; rank 0 writes the time."""
    torch.set_num_threads(args.threads)
    pipeline = Pipeline.from_toml(PIPELINE, overrides=overrides(args), store=store, progress=False, fresh=True)
    pipeline.model()  # on this rank's device
    if pipeline.context.device.type == "cuda":
        torch.cuda.synchronize()
    distributed.barrier()
    start = time.perf_counter()
    pipeline.synthesize()  # ends at a barrier: every group is in the store
    seconds = time.perf_counter() - start
    if distributed.is_main_rank():
        Path(result_file).write_text(json.dumps({"seconds": seconds}))


def independent_process(index: int, args, parts: int, root: str, start_together) -> None:
    """One process of the control: 1/parts of the groups, its own store, no process group."""
    torch.set_num_threads(args.threads)
    share = argparse.Namespace(**{**vars(args), "groups": args.groups // parts})
    pipeline = Pipeline.from_toml(
        PIPELINE, overrides=overrides(share), store=f"{root}-{index}.zarr", progress=False, fresh=True
    )
    pipeline.model()
    start_together.wait()
    start = time.perf_counter()
    pipeline.synthesize()
    Path(f"{root}-{index}.json").write_text(json.dumps({"seconds": time.perf_counter() - start}))


def measure_independent(args, nproc: int, root: Path, repeat: int) -> tuple[float, float]:
    """(seconds until the last of ``nproc`` independent processes finished, launch seconds)."""
    context = mp.get_context("spawn")
    prefix = str(root / f"independent{nproc}-r{repeat}")
    start = time.perf_counter()
    mp.start_processes(
        independent_process, args=(args, nproc, prefix, context.Barrier(nproc)), nprocs=nproc, start_method="spawn"
    )
    launch = time.perf_counter() - start
    return max(json.loads(Path(f"{prefix}-{i}.json").read_text())["seconds"] for i in range(nproc)), launch


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
    ap.add_argument("--no-control", action="store_true", help="skip the independent-processes rows")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the spawned ranks
    torch.set_num_threads(args.threads)
    work = args.groups * args.per_group * args.iterations
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for nproc in args.nproc:
            kinds = [("ranks", measure)]
            if nproc > 1 and not args.no_control and args.groups % nproc == 0:
                kinds.append(("independent", measure_independent))
            for kind, how in kinds:
                runs = []
                for r in range(args.repeats):
                    runs.append(how(args, nproc, Path(tmp), r))
                    print(
                        f"{nproc} process(es), {kind}, run {r + 1}: synthesis {runs[-1][0]:.2f} s, "
                        f"launch {runs[-1][1]:.2f} s",
                        flush=True,
                    )
                rows.append((nproc, kind, min(s for s, _ in runs), min(w for _, w in runs)))
    load = os.getloadavg()
    print(
        f"\nEfficientNet-Lite0, {args.size} px, {args.groups} groups x {args.per_group} candidates, "
        f"{args.iterations} iterations, device {args.device}, {args.threads} thread(s) per process, "
        f"best of {args.repeats}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
        f"on {os.cpu_count()} CPUs\n"
    )
    print(
        f"{'processes':>9} | {'kind':>11} | {'synthesis s':>11} | {'cand-it/s':>9} | {'speed-up':>8} | "
        f"{'efficiency':>10} | {'launch s':>8}"
    )
    print("-" * 84)
    first_nproc, _, first_seconds, _ = rows[0]
    for nproc, kind, seconds, launch in rows:
        speedup = first_seconds / seconds  # against the first row (1 process by default)
        print(
            f"{nproc:>9} | {kind:>11} | {seconds:>11.2f} | {work / seconds:>9.1f} | {speedup:>7.2f}x | "
            f"{100 * speedup * first_nproc / nproc:>9.0f}% | {launch:>8.2f}"
        )


if __name__ == "__main__":
    main()
