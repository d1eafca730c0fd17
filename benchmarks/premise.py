"""DeepKKT's premise against training: is a bias-free ReLU MLP trained by full-batch gradient descent
a KKT point of the max-margin problem, and how soon? The residual against epochs and init scale.

    python benchmarks/premise.py [--classes 0 9] [--per-class 50] [--init-scales 1e-2 1e-1 1] [--json PATH]

Each run trains a fresh MLP (bias-free, head rows centred, the per-pixel mean subtracted inside
the model unless ``--no-center-pixels``) on the first ``--per-class`` training images of each of
``--classes`` of Fashion-MNIST (mean-subtracted), measures the premise (dsv.kkt.premise) every
``--check-every`` epochs and stops once it describes a KKT point (residual at most
``--stop-residual``, 0: never; at most ``--stop-off-margin`` of the multipliers off the margin),
or after ``--epochs``. The step decays as lr / (1 + epoch / --decay-epochs). CPU, float64.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dsv.bench.premise import HEADER, format_history, format_row, train_one


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, nargs="+", default=[0, 9], help="Fashion-MNIST class indices")
    ap.add_argument("--per-class", type=int, default=50, help="training images of each class")
    ap.add_argument("--width", type=int, default=100)
    ap.add_argument("--depth", type=int, default=1, help="hidden layers")
    ap.add_argument("--init-scales", type=float, nargs="+", default=[1e-2, 1e-1, 1.0])
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--decay-epochs", type=int, default=5000, help="step lr / (1 + epoch / this); 0: fixed")
    ap.add_argument("--no-center-pixels", action="store_true", help="keep the per-pixel mean in the inputs")
    ap.add_argument("--plain", action="store_true", help="plain gradient descent (default: on the log of the loss)")
    ap.add_argument("--epochs", type=int, default=20000, help="the most epochs")
    ap.add_argument("--check-every", type=int, default=100)
    ap.add_argument("--stop-residual", type=float, default=0.1)
    ap.add_argument("--stop-off-margin", type=float, default=0.1, help="largest share of lambda off the margin")
    ap.add_argument("--margin", default="auto", choices=["auto", "binary", "multiclass", "cross_entropy"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, help="write the rows (with each run's history) here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    print(
        f"classes {args.classes}, {args.per_class} per class, 784-{args.width}x{args.depth}, lr {args.lr}, "
        f"decay {args.decay_epochs}, pixel centring {not args.no_center_pixels}\n"
    )
    print(HEADER)
    print("-" * len(HEADER))
    rows = []
    for scale in args.init_scales:
        rows.append(
            train_one(
                classes=args.classes,
                per_class=args.per_class,
                width=args.width,
                depth=args.depth,
                init_scale=scale,
                lr=args.lr,
                normalized_steps=not args.plain,
                epochs=args.epochs,
                check_every=args.check_every,
                stop_residual=args.stop_residual,
                margin=args.margin,
                decay_epochs=args.decay_epochs,
                stop_off_margin=args.stop_off_margin,
                center_pixels=not args.no_center_pixels,
            )
        )
        print(format_row(rows[-1]), flush=True)
    print("\nresidual against epochs (epoch:residual, every 5th measurement):")
    for row in rows:
        print(f"  init {row['init_scale']:.0e}: {format_history(row, every=5)}")
    print(f"\n{time.time() - start:.0f} s in all; residual: min over lambda >= 0 of ||theta - G lambda|| / ||theta||")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "rows": rows}, indent=1))
        print(f"rows written to {args.json}")


if __name__ == "__main__":
    main()
