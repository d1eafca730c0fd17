"""The KKT loop of dsv.synthesize on a small model against a plain PyTorch loop of the same loss.

Haim et al.'s model (a bias-free ReLU MLP 784-1000-2, seeded), 200 candidates of 1 x 28 x 28, the
stationarity term over all parameters with the l2 distance (mode exact: double backward, relative,
weight 10), Adam on x and lambda. dsv's side runs ``dsv.synthesize`` with no primal term, priors,
augmentations, domain projection or progress bar, in memory ("loop") and with a store that takes a
checkpoint every N iterations ("store"); two more variants show what the history rows and the
progress bar cost. The plain loop: the same loss in plain PyTorch (torch.autograd.grad with
create_graph), no ignite, no store. Every variant runs once per round, in this one process; the
table shows ms per iteration (median of every iteration of every round) and their ratio to the
plain loop's, then the whole call's ms per iteration (setup, checkpoints and the end included).

    python benchmarks/kkt_loop.py [--json PATH] [--quick] [--iterations 200] [--repeats 5] [--threads 1]

CPU only. The loss values of both sides on the first iterations are checked to agree first.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dsv.bench.kkt_loop import loss_check, measure, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--quick", action="store_true", help="a smoke test: 10 iterations, one round")
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5, help="rounds (each variant once per round)")
    ap.add_argument("--checkpoint-every", type=int, default=50, help="the store variant's checkpoints")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)")
    ap.add_argument("--only", nargs="+", metavar="VARIANT", help="time these dsv variants only (and the plain loop)")
    args = ap.parse_args()
    iterations, repeats = (10, 1) if args.quick else (args.iterations, args.repeats)
    start = time.time()
    check = loss_check(3 if args.quick else 10)
    print(f"loss on the first iterations, dsv vs plain: max relative difference {check['max_rel_diff']:.2e}")
    if check["max_rel_diff"] > 1e-4:
        raise SystemExit("the two sides do not compute the same loss")
    result = measure(iterations, repeats, args.checkpoint_every, args.threads, args.only)
    result["loss_check"] = check
    print(f"\n{iterations} iterations, {repeats} rounds, {args.threads} torch threads; ms per iteration\n")
    print(table(result))
    # the same on a model whose loss costs little: what the engine adds per iteration
    result["small"] = measure(iterations, repeats, args.checkpoint_every, args.threads, args.only, 16, 20)
    print(f"\nthe same, MLP 784-16-2 and 20 candidates (the engine's own share)\n\n{table(result['small'])}")
    print(
        f"\n{time.time() - start:.0f} s in all. ratio: of the medians of one iteration; p10-p90: the same "
        "ratio of the 10th and of the 90th percentiles; +us: dsv's median minus the plain loop's; call: "
        "the whole call (setup, checkpoints, the end) over the iterations."
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
        print(f"written to {args.json}")


if __name__ == "__main__":
    main()
