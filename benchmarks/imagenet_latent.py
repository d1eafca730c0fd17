"""The latent generator, measured: interpolation strips and edits of the CPU profile
(pipelines/imagenet_gen.toml's ``interpolate`` and ``edit`` stages) scored by EfficientNet-Lite1
and Lite2, with an ablation of what each choice adds (dsv/bench/imagenet_latent.py).

Five strips of seven steps between classes of the profile, five edits of scikit-image's
photographs. Per strip: the ends' top-1, p(to_class) per step and its rank correlation with the
step, both classes in the top-5 at the middle steps; per edit: Lite0 / Lite1 / Lite2 name the
target, SSIM to the photograph, adversarial (only Lite0 names it). Each arm is the pipeline run
with overrides in its own store under ``--out`` (a killed run resumes where it stopped).

    pip install plugins/dsv-bn-prior
    python benchmarks/imagenet_latent.py --out latent --json latent.json [--arms strips edits] [--threads 2]
    python benchmarks/imagenet_latent.py --quick --out /tmp/q     # a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import torch

from dsv.bench import imagenet_latent as latent
from dsv.plugins import get_plugin_manager

PIPELINE = Path(__file__).resolve().parent.parent / "pipelines" / "imagenet_gen.toml"
say = functools.partial(print, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="the arms' stores, photographs and figures")
    ap.add_argument("--json", type=Path, help="write the results here (after each arm, partial until the end)")
    ap.add_argument("--arms", nargs="+", choices=list(latent.ARMS), help="default: all (the profile's first)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="for every arm")
    ap.add_argument(
        "--arm",
        dest="extra",
        action="append",
        default=[],
        metavar="NAME=KEY=VALUE[,KEY=VALUE...]",
        help="an extra arm (NAME starting 'strips' or 'edits'), run after --arms",
    )
    ap.add_argument("--quick", action="store_true", help="one strip of 3 steps, one edit, a few iterations at 64 px")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    plugins = get_plugin_manager()
    if "bn_stats" not in plugins.registry("priors"):
        raise SystemExit("bn_stats is not registered: pip install plugins/dsv-bn-prior first")
    run = latent.LatentRun(pipeline=PIPELINE, out=args.out, overrides=args.overrides)
    if args.quick:
        run = latent.LatentRun(
            pipeline=PIPELINE,
            out=args.out,
            strips=latent.STRIPS[:1],
            edits=latent.EDITS[:1],
            steps=3,
            overrides=[*latent.QUICK, *args.overrides],
        )
    arms = {name: latent.ARMS[name] for name in args.arms or ([] if args.extra else latent.ARMS)}
    for text in args.extra:
        try:
            name, arm = latent.parse_arm(text)
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
        arms[name] = arm
    result = latent.run_benchmark(run, arms, json_path=args.json, say=say)
    print(latent.table(result))


if __name__ == "__main__":
    main()
