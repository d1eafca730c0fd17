"""DSVs that live where the data lives: input-domain variants of dsv.synthesize against baselines.

scikit-learn digits (8x8) scaled to [-0.5, 0.5], a fixed stratified 70/30 split. Base models are
trained to 100 % training accuracy: an MLP without normalization, a small ConvNet, and the same
ConvNet with InstanceNorm (dsv/bench/digits.py). For every base model, each row is a set of 10
images (one per class), and every row is scored under the same protocols by fresh students of the
base model's architecture (test accuracy on the test split, mean ± std over seeds):

* ``hard``: Adam on the 10 images with their class labels (cross entropy);
* ``teach <n>s``: Adam on noised copies of the 10 images (Gaussian noise of std n data stds,
  fresh each step), soft targets = the frozen base model's softmax on each noised batch (soft
  cross entropy). One column per ``--teacher-noise`` value (default 0.1 and 0.5).

The rows (baselines, DSVs with the domain made known: init std, range penalty, clamp, sigmoid, and
combinations) are listed in dsv/bench/input_domain.py. The ConvNets get the rows marked ``core``
(``--all-rows``: every row). DSV rows also show the fraction of values inside the domain, min and
max, the final relative stationarity, alive candidates, seconds per synthesis, and ``goals``: D
every value inside, T first teacher column >= Gaussian noise + 20 points and >= random real - 10,
H hard >= half of random real.

    python benchmarks/input_domain.py [--quick] [--seeds 5] [--json out.json] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import attrs
import torch

from dsv.bench.digits import BASE_MODELS, HIGH, LOW, Protocol, digits_split
from dsv.bench.input_domain import DomainBench, format_row, header, variants


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the MLP only, at most 2 seeds, half the student steps")
    p.add_argument("--seeds", type=int, default=5, help="image sets and students per row (default 5)")
    p.add_argument("--json", default="", help="write the rows as JSON here")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--models", nargs="+", default=list(BASE_MODELS), choices=list(BASE_MODELS))
    p.add_argument("--rows", nargs="+", default=[], help="only DSV rows whose name contains one of these")
    p.add_argument("--all-rows", action="store_true", help="every DSV row on the ConvNets too (default: core rows)")
    p.add_argument("--student-steps", type=int, default=300)
    p.add_argument(
        "--teacher-noise",
        type=float,
        nargs="+",
        default=[0.1, 0.5],
        help="teacher batch noise std in data stds, one column each (default 0.1 0.5)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    seeds, models = args.seeds, args.models
    protocol = Protocol(steps=args.student_steps, noises=tuple(args.teacher_noise))
    if args.quick:
        seeds, models = min(seeds, 2), ["mlp"]
        protocol = attrs.evolve(protocol, steps=max(protocol.steps // 2, 1))
    xtr, ytr, xte, yte = digits_split()
    bench = DomainBench(
        seeds=list(range(seeds)),
        protocol=protocol,
        xtr=xtr,
        ytr=ytr,
        xte=xte,
        yte=yte,
        data_std=float(xtr.std()),
        verbose=not args.quiet,
    )
    chosen = [v for v in variants() if not args.rows or any(r in v.name for r in args.rows)]
    for name in models:
        bench.run_model(name, [v for v in chosen if name == "mlp" or v.core or args.all_rows])
    seconds = time.perf_counter() - start
    bases = ", ".join(f"{k} {100 * v['test']:.1f}" for k, v in bench.base.items())
    print(
        f"digits in [{LOW}, {HIGH}] (data std {bench.data_std:.3f}), {len(xtr)} train / {len(xte)} test; base "
        f"models at 100 % train, test % {bases}; {seeds} seeds (image set + students each); students: Adam lr "
        f"{protocol.lr}, {protocol.steps} steps; teach <n>s: {protocol.copies} noised copies per image, noise "
        f"std n x data std, soft targets from the base model; {args.threads} thread(s), {seconds:.0f} s"
    )
    print(header(protocol.noises))
    for r in bench.rows:
        print(format_row(r, bench.rows))
    if args.json:
        out = {
            "args": vars(args),
            "data_std": bench.data_std,
            "protocol": attrs.asdict(protocol),
            "base_models": bench.base,
            "seconds": seconds,
            "rows": bench.rows,
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
