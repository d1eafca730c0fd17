"""dsv's ImageNet generation profiles against the DeepInversion baseline, at equal compute, and
the ablation of dsv's profile (the arms, timing, scoring and tables: dsv/bench/imagenet_*.py).

Every arm runs on the packaged EfficientNet-Lite0, same classes and seeds, one candidate per class
and run, each pipeline's schedule scaled to its iteration count. The methods: ``dsv``
(pipelines/imagenet_gen.toml), ``dsv_paper`` (imagenet_paper.toml: the paper's DeepKKT-only recipe)
and ``deepinversion`` (imagenet_deepinversion.toml). dsv runs ``--iterations`` steps, every other
arm as many as fit in dsv's wall-clock, from step times measured at the start of the same run;
without ``--equal-time-only`` the other methods also run at dsv's iteration count. EfficientNet-Lite1
and Lite2 name the images (top-1 over all seeds and per seed, top-5, mean p(target)); beside them,
how natural they are (spectrum slope, saturation, BatchNorm statistics in Lite1), and the same for
scikit-image's photographs.

``--ablation [NAME ...]``: the full profile and the profile without each of its terms (or only the
ablations named), every arm at the full profile's wall-clock, then the methods likewise.
``--arm NAME=KEY=VALUE[,KEY=VALUE...]`` adds an arm of overrides (an entry of the [synthesis] lists
by its name: ``stationarity.params="all"``, ``-bn_stats``), ``--arm NAME`` a named variant
(``--list-arms``). ``--speed``: one step at 224 px of dsv, DeepInversion and variants, interleaved.
``--plan``: how long the run would take. ``--markdown out.json``: a run's tables as Markdown.

    pip install plugins/dsv-bn-prior
    python benchmarks/imagenet_gen.py --json out.json [--quick] [--out DIR] [--threads 2]
    python benchmarks/imagenet_gen.py --ablation --json out.json [--arm stat_norm_affine] [--threads 2]
    python benchmarks/imagenet_gen.py --speed [--threads 2]
    python benchmarks/imagenet_gen.py --markdown out.json
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import torch

from dsv.bench import imagenet_arms as arms
from dsv.bench.imagenet_compare import Comparison, run_comparison, write_json
from dsv.bench.imagenet_speed import speed
from dsv.bench.imagenet_tables import comparison_table, markdown, speed_table
from dsv.pipeline import load_pipeline
from dsv.plugins import ModelRequest, get_plugin_manager

METHODS = arms.method_paths(Path(__file__).resolve().parent.parent / "pipelines")
say = functools.partial(print, flush=True)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results here (after each arm, marked partial until the end)")
    ap.add_argument("--out", help="save each method's grid here as PNG")
    ap.add_argument("--tag", default="", help="prefix of the PNG names (to keep the grids of several tries)")
    ap.add_argument("--quick", action="store_true", help="6 classes, 1 seed, 200 iterations (for iterating)")
    ap.add_argument("--classes", type=int, nargs="+", help="ImageNet class indices (default: 20 spread over ImageNet)")
    ap.add_argument("--seeds", type=int, help="seeds per method (default 2)")
    ap.add_argument("--iterations", type=int, help="dsv's iterations (default: its pipeline's, 300)")
    many = {"action": "append", "default": []}
    # fmt: off
    ap.add_argument("--set-dsv", **many, metavar="KEY=VALUE", help="override for dsv's arm")
    ap.add_argument("--set-dsv-paper", **many, metavar="KEY=VALUE", help="override for dsv_paper's")
    ap.add_argument("--set-deepinversion", **many, metavar="KEY=VALUE", help="override for DeepInversion's")
    ap.add_argument("--methods", nargs="+", choices=list(arms.METHOD_FILES), help="run only these (default: all three)")
    ap.add_argument("--ablation", nargs="*", metavar="ARM", help=(
        "the full profile and the profile without each of its terms, then the methods, all at equal wall-clock; "
        "names restrict it to those ablations (with --methods dsv and --arm: the full profile and variants only)"))
    ap.add_argument("--arm", dest="arms", **many, metavar="NAME=KEY=VALUE[,KEY=VALUE...]", help=(
        "an extra arm of dsv's profile at its wall-clock: pipeline overrides, ENTRY.OPTION=VALUE for an entry "
        "of the [synthesis] lists, -ENTRY to remove one; or a preset's NAME (--list-arms)"))
    ap.add_argument("--variant", dest="variants", **many, metavar="LABEL:KEY=VALUE[;KEY=VALUE...]", help=(
        "an extra arm 'dsv+LABEL': dsv's profile with these overrides, same classes, seeds and iterations"))
    ap.add_argument("--equal-time-only", action="store_true",
                    help="the methods at dsv's wall-clock only (skips their equal-iterations arms, saves time)")
    # fmt: on
    ap.add_argument("--max-size", type=int, default=0, help="cap every resolution stage at this many px (smoke runs)")
    ap.add_argument("--plan", action="store_true", help="calibrate, print each arm's iterations and time, stop")
    ap.add_argument("--calibration-steps", type=int, default=4, help="timed steps per method and size")
    ap.add_argument("--speed", action="store_true", help="step-time ratios at 224 px instead of the comparison")
    ap.add_argument("--compile", action="store_true", help="with --speed: also torch.compile variants")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--markdown", metavar="JSON", help="print a result JSON's tables as Markdown and stop")
    ap.add_argument("--list-arms", action="store_true", help="print the ablation arms and the presets, and stop")
    args = ap.parse_args()
    args.ablation_arms, args.ablation = args.ablation or [], args.ablation is not None
    return args


def planned_arms(args: argparse.Namespace) -> dict[str, arms.Arm]:
    choice = arms.ArmChoice(
        ablation=args.ablation,
        ablation_arms=tuple(args.ablation_arms),
        methods=tuple(args.methods or ()),
        arms=tuple(args.arms),
        variants=tuple(args.variants),
        overrides={"dsv": args.set_dsv, "dsv_paper": args.set_dsv_paper, "deepinversion": args.set_deepinversion},
    )
    try:
        return arms.plan_arms(choice, METHODS)
    except ValueError as exc:  # an unknown preset, entry or ablation, or no dsv to compare with
        raise SystemExit(str(exc)) from None


def comparison(args: argparse.Namespace) -> Comparison:
    default_iterations = 200 if args.quick else load_pipeline(METHODS["dsv"]).config.synthesis.iterations
    return Comparison(
        ablation=args.ablation,
        classes=args.classes or (arms.QUICK_CLASSES if args.quick else arms.CLASSES),
        seeds=list(range(args.seeds or (1 if args.quick else 2))),
        iterations=args.iterations or default_iterations,
        max_size=args.max_size,
        calibration_steps=args.calibration_steps,
        equal_time_only=args.equal_time_only or args.ablation,  # an ablation: the methods at its wall-clock only
        plan_only=args.plan,
    )


def main() -> None:
    args = parse_args()
    try:
        arms.check_ablations(args.ablation_arms)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    if args.list_arms:
        print(arms.arms_listing())
        return
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    plugins = get_plugin_manager()
    if "bn_stats" not in plugins.registry("priors"):
        raise SystemExit("bn_stats is not registered: pip install plugins/dsv-bn-prior first")
    models = plugins.registry("models")
    generator = models.get(arms.GENERATOR)(ModelRequest())
    if args.speed:
        classes = args.classes or arms.CLASSES[:10]  # the CPU profile's batch: its ten classes
        result = speed(METHODS, generator, plugins, classes, args.calibration_steps, args.compile, say)
        print(speed_table(result, args.calibration_steps))
    else:
        verifiers = {key: models.get(name)(ModelRequest()) for key, name in arms.VERIFIERS.items()}
        grids = Path(args.out) if args.out else None
        planned, c = planned_arms(args), comparison(args)
        result = run_comparison(
            c, planned, generator, plugins, verifiers, json_path=args.json, grids=grids, tag=args.tag, say=say
        )
        if not args.plan:
            print(comparison_table(result))
    write_json(args.json, result)


if __name__ == "__main__":
    main()
