"""What does checkpointing cost? Runs the synthesis of pipelines/fashion_mnist_dsv.toml with a
checkpoint every K iterations and with none but the final one, alternating, and prints a table.

    python benchmarks/checkpoint_overhead.py [--every 50] [--repeats 3] [--iterations 1000]

The base model is trained once (or taken from the weights cache) before any timing. Two figures:
the difference of the median wall times (noisy on a shared machine), and the time spent inside
the checkpoint writes themselves (measured directly, so it does not depend on that noise).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from dsv.pipeline import Pipeline
from dsv.store import RunStore

PIPELINE = Path(__file__).resolve().parent.parent / "pipelines" / "fashion_mnist_dsv.toml"


def timed_run(root: Path, every: int, iterations: int, tag: str) -> tuple[float, float, int]:
    """(synthesis seconds, seconds inside checkpoint writes, number of checkpoints)."""
    spent, count = [0.0], [0]
    original = RunStore.commit

    def commit(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start
            count[0] += 1

    overrides = [f"synthesis.checkpoint_every={every}", f"synthesis.iterations={iterations}", "export.png=''"]
    pipeline = Pipeline.from_toml(PIPELINE, overrides=overrides, store=str(root / f"{tag}.zarr"), progress=False)
    pipeline.model()
    RunStore.commit = commit
    try:
        start = time.perf_counter()
        pipeline.synthesize()
        total = time.perf_counter() - start
    finally:
        RunStore.commit = original
    return total, spent[0], count[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=1000)
    args = ap.parse_args()
    Pipeline.from_toml(PIPELINE, progress=False).model()  # train or reuse the cached weights first
    results = {0: [], args.every: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for every in (0, args.every):
                results[every].append(timed_run(Path(tmp), every, args.iterations, f"r{r}-e{every}"))
                total, writes, count = results[every][-1]
                print(
                    f"run {r + 1}, checkpoint every {every or 'final only'}: {total:.2f} s, "
                    f"{writes:.3f} s in {count} checkpoint writes",
                    flush=True,
                )
    base = statistics.median(t for t, _, _ in results[0])
    print(f"\nfashion_mnist_dsv, {args.iterations} iterations, {args.repeats} runs each (median)\n")
    print(
        f"{'checkpoint every':>16} | {'checkpoints':>11} | {'run s':>7} | {'in writes s':>11} | "
        f"{'writes / run':>12} | {'vs no checkpoints':>17}"
    )
    print("-" * 90)
    for every, rows in results.items():
        total = statistics.median(t for t, _, _ in rows)
        writes = statistics.median(w for _, w, _ in rows)
        label = "final only" if every == 0 else str(every)
        print(
            f"{label:>16} | {rows[0][2]:>11} | {total:>7.2f} | {writes:>11.3f} | {100 * writes / total:>11.2f}% | "
            f"{100 * (total - base) / base:>+16.2f}%"
        )


if __name__ == "__main__":
    main()
