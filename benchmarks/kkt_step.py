"""What one synthesis step of the stationarity term costs, per mode, against a plain forward+backward.

For each model, resolution, batch, parameter set and stationarity mode (exact, jvp,
finite_difference), a fresh subprocess times the step (forward of the candidates, the term, its
gradient in x and lambda, as SynthesisRun.step takes it) against a plain forward+backward (input
gradient of the cross entropy, theta frozen) on the same batch, interleaved, and reports the ratio of
the fastest step to the fastest forward+backward (other work on the machine only adds time; the
median ratio of neighbouring pairs is in the JSON too). Memory: peak resident growth (VmHWM reset
through /proc/self/clear_refs, freed
heap given back with malloc_trim first) of one step over that of one plain forward+backward, in
the same subprocess after a warm-up. The exact mode runs first and leaves its gradients for the
cosines of the others.

    python benchmarks/kkt_step.py [--json PATH] [--quick] [--threads 2] [--repeats 3]

Models: the builtin ConvNet (width 64, depth 3, seeded random weights) on Fashion-MNIST size
(1 x 28 x 28, 10 classes) and EfficientNet-Lite0 with its packaged ImageNet weights. CPU only.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from dsv.bench.kkt_step import FULL, HEADER, MODES, QUICK, format_auto, format_row, measure, run_one, specs, table_row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--quick", action="store_true", help="three configurations, fewer pairs (about 2 min)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="at least this many pairs (more where they are fast)")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument(
        "--micro-batch",
        type=int,
        nargs="+",
        default=[0, 1],
        metavar="N",
        help="candidates per extra pass of the fast modes (0: all at once)",
    )
    ap.add_argument(
        "--only",
        nargs="+",
        metavar="MODEL:PX:BATCH:PARAMS",
        help="measure these configurations instead, e.g. efficientnet-lite0:224:4:all",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(measure(json.loads(args.worker))))
        return
    configs = QUICK if args.quick else FULL
    if args.only:
        configs = [(m, int(px), int(b), ps, True) for m, px, b, ps in (c.split(":", 3) for c in args.only)]
    repeats = 1 if args.quick else args.repeats
    rows = []
    start = time.time()
    print(f"torch threads: {args.threads}, at least {repeats} pairs; fastest step / fastest fwd+bwd, same process\n")
    print(HEADER)
    print("-" * len(HEADER))
    with tempfile.TemporaryDirectory() as tmp:
        for group in specs(configs, args.modes, args.micro_batch, args.threads, repeats, args.quick, tmp):
            for spec in group:
                rows.append(table_row(spec, run_one(spec, [sys.executable, __file__, "--worker"])))
                print(format_row(rows[-1]), flush=True)
            print(format_auto(rows[-1]))
    print(
        f"\n{time.time() - start:.0f} s in all. step/fb: one stationarity step (forward, term, gradient "
        "in x and lambda) over one plain forward+backward; mem/fb: peak resident growth, same ratio; "
        "grad_cosine_vs_exact in the JSON is min(cos x, cos lam)."
    )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=1))
        print(f"rows written to {args.json}")


if __name__ == "__main__":
    main()
