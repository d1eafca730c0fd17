"""Few-shot / zero-shot distillation and coreset selection, side by side with the baselines.

Every method yields a small labelled image set; fresh models are trained on it under one
protocol (the [retrain] table of the pipeline) and tested on the whole test split. The methods
(noise floor, random real, DM, primal only, DSVs from noise / other data / real images / the
defaults), the protocols (hard, teacher, teacher_mixup) and the coresets (random, herding,
lambda_top) are described in dsv/bench/distill.py; ``--table2`` runs the paper's Table 2
(dsv/bench/table2.py; print its JSON with benchmarks/paper_table2.py).

    python benchmarks/distill.py --dataset fashion-mnist --json out.json [--quick] [--set KEY=VALUE ...]

``--set`` overrides keys of pipelines/fashion_mnist_distill.toml (e.g. synthesis.iterations=300);
``--methods`` and ``--ipc`` restrict the table (for ablations).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from dsv.bench.distill import CORESET_METHODS, DISTILL_METHODS, PROTOCOLS, DistillBench, DistillOptions
from dsv.bench.table2 import Table2Run, run_table2

PIPELINE = Path(__file__).resolve().parent.parent / "pipelines" / "fashion_mnist_distill.toml"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion-mnist", help="data set name ([data].name); cifar10 needs --data-root")
    p.add_argument("--data-root", default="")
    p.add_argument("--pipeline", default=str(PIPELINE))
    p.add_argument("--json", default="", help="write the table as JSON here")
    p.add_argument("--quick", action="store_true", help="a fifth of the synthesis and retrain steps")
    p.add_argument("--ipc", type=int, nargs="+", default=[1, 10], help="images per class")
    p.add_argument("--methods", nargs="+", default=[*DISTILL_METHODS, *CORESET_METHODS])
    p.add_argument("--dm-iterations", type=int, default=500)
    p.add_argument("--protocols", nargs="+", default=list(PROTOCOLS[:2]), choices=PROTOCOLS)
    p.add_argument("--mixup", type=float, default=1.0, help="Beta(a, a) of the teacher_mixup protocol")
    p.add_argument("--teacher-noise", type=float, default=0.1, help="the teacher protocol's batch noise (model units)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--pool", type=int, default=1, help="candidate pools: synthesize pool x ipc per class, keep the top-lambda ipc"
    )
    p.add_argument(
        "--variant",
        dest="variants",
        action="append",
        default=[],
        metavar="[METHOD+]LABEL:KEY=VALUE[;KEY=VALUE...]",
        help="an extra row 'METHOD+LABEL' (default METHOD: dsv_noise) whose [synthesis] gets these overrides "
        "(e.g. 'margin:synthesis.lr_x=0.1'; for dsv_defaults, the defaults with these keys changed); "
        "ablations side by side in one run",
    )
    p.add_argument(
        "--table2",
        action="store_true",
        help="the paper's Table 2 (img/cls x shots x dsv, dc, dsa, dm, random_real), coresets, ablations, threads",
    )
    p.add_argument(
        "--gm-iterations", type=int, default=200, help="DC and DSA iterations at 1 img/cls (published: 1000)"
    )
    p.add_argument(
        "--gm-iterations-10",
        type=int,
        default=2,
        help="DC and DSA iterations at 10 img/cls (published: 1000; each costs about 300 of the 1-img/cls ones)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        choices=(1, 2),
        help="--table2 in two processes of one thread each (the rows of 10 img/cls in the second); "
        "1: one process of --threads threads",
    )
    p.add_argument("--table2-part", default="all", choices=("all", "main", "second"), help=argparse.SUPPRESS)
    p.add_argument("--no-ablations", action="store_true", help="--table2 without the ablation rows")
    p.add_argument("--no-base-ablation", action="store_true", help="--table2 without the second base model")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    given = list(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.table2:
        args.protocols = ["hard"]
    try:
        bench = DistillBench(DistillOptions.from_namespace(args))
    except ValueError as exc:  # a malformed --variant
        raise SystemExit(str(exc)) from None
    base = bench.base_test_accuracy
    print(f"base model test accuracy {100 * base:.2f}%" if base is not None else "base model: given weights", end="")
    print(f", {args.threads} thread(s)")
    if args.table2:
        script = str(Path(__file__).resolve())

        def second(out: Path) -> list[str]:
            """The same arguments (the base model is cached by now); the later flags win."""
            return [sys.executable, script, *given, "--table2-part", "second", "--threads", "1", "--json", str(out)]

        run = Table2Run(
            json=args.json,
            part=args.table2_part,
            workers=args.workers,
            threads=args.threads,
            ablations=not args.no_ablations,
            base_ablation=not args.no_base_ablation,
            second_command=second,
            start=start,
        )
        run_table2(bench, run)
        return 0
    bench.run(args.ipc, args.methods)
    seconds = time.perf_counter() - start
    print(f"total {seconds:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(bench.result(args.ipc, seconds, args.threads), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
