"""dsv's ImageNet generation profile against the DeepInversion baseline, at equal compute.

Both methods run on the packaged EfficientNet-Lite0 with the same classes and seeds, one
candidate per class and run: dsv's profile (pipelines/imagenet_gen.toml) and DeepInversion's
recipe rebuilt from dsv's plugins (pipelines/imagenet_deepinversion.toml). Each pipeline's
schedule (resolution stages, warm-ups) is scaled to the iteration count. Two comparisons:

- equal iterations: both run ``--iterations`` steps;
- equal wall-clock: DeepInversion runs as many steps as fit in the time of dsv's run, from the
  step times of both methods measured at each resolution of their schedules in this run (the
  table reports the seconds each arm really took).

An independent classifier, EfficientNet-Lite2 (dsv/evaluation/verifier.py), names the final
images: top-1, top-5 and its mean probability of the target. ``--speed`` measures instead the
time of one synthesis step at 224 px (the CPU profile's batch) for dsv, DeepInversion and
variants (bn_stats, one forward, channels_last, bf16 autocast, torch.compile), steps of all
variants interleaved so that they share the machine's state, and prints their ratios.

    pip install plugins/dsv-bn-prior
    python benchmarks/imagenet_gen.py --json out.json [--quick] [--out DIR] [--threads 2]
    python benchmarks/imagenet_gen.py --speed [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from dsv import config as cfg
from dsv.evaluation.verifier import score, verifier_probabilities
from dsv.pipeline import load_pipeline
from dsv.plugins import ModelRequest, get_plugin_manager
from dsv.store.export import save_rows, to_images
from dsv.synthesis.build import build_run
from dsv.synthesis.engine import build_engine
from dsv.synthesis.execution import detach_terms

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"
METHODS = {"dsv": PIPELINES / "imagenet_gen.toml", "deepinversion": PIPELINES / "imagenet_deepinversion.toml"}
GENERATOR, VERIFIER = "efficientnet-lite0", "efficientnet-lite2"
# 20 classes spread over ImageNet (those of pipelines/imagenet_gen_gpu.toml): fish, birds, dogs,
# cats, insects, objects, animals, fruit, landscapes, vehicles, flowers
CLASSES = [1, 130, 207, 285, 323, 417, 340, 949, 980, 779, 11, 31, 301, 292, 145, 951, 953, 607, 437, 985]
QUICK_CLASSES = [1, 207, 323, 417, 340, 949]


# ---- building runs from the pipeline files -------------------------------------------------------


def scaled(path: Path, iterations: int, classes: list[int], extra: list[str]):
    """The [synthesis] table of a pipeline file, its schedule scaled to ``iterations`` steps."""
    s = load_pipeline(path, overrides=extra).config.synthesis
    base = s.iterations
    factor = iterations / base
    s.iterations = iterations
    s.resolutions = [[max(1, round(start * factor)) if start > 1 else start, size] for start, size in s.resolutions]
    s.lambda_warmup = iterations if s.lambda_warmup >= base else round(s.lambda_warmup * factor)
    s.lr_warmup = round(s.lr_warmup * factor)
    s.classes, s.targets, s.candidates_per_class = list(classes), [], 1
    return s


def make_run(s, generator, plugins, seed: int, source: str):
    return build_run(copy.deepcopy(generator.module), generator.spec, s, plugins=plugins,
                     device=torch.device("cpu"), seed=seed, source=source, progress=False)  # fmt: skip


def per_iteration_seconds(s, seconds_at: dict[int, float]) -> float:
    """Mean seconds per iteration of a schedule, from the step time at each of its sizes."""
    total = 0.0
    for it in range(1, s.iterations + 1):
        size = next((sz for start, sz in reversed(s.resolutions) if it >= start), 224)
        total += seconds_at[size]
    return total / s.iterations


def step_times(runs: dict[str, object], steps: int) -> dict[str, list[float]]:
    """Seconds of ``steps`` steps of each run, interleaved (one step of each in turn)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(1, steps + 2):  # the first step of each is a warm-up, not counted
        for name, (run, wrap) in runs.items():
            start = time.perf_counter()
            with wrap():
                run.step(i)
            if i > 1:
                times[name].append(time.perf_counter() - start)
    return times


def calibrate(tables: dict[str, object], generator, plugins, steps: int) -> dict[str, dict[int, float]]:
    """Median step seconds of each method at each size of its schedule (and at 224 px)."""
    runs, keys = {}, []
    for name, s in tables.items():
        for size in sorted({sz for _, sz in s.resolutions} | {224}):
            one = copy.deepcopy(s)
            one.resolutions = [[1, size]]
            runs[f"{name}@{size}"] = (make_run(one, generator, plugins, 0, name), contextlib.nullcontext)
            keys.append((name, size))
    times = step_times(runs, steps)
    for run, _ in runs.values():
        detach_terms(run.losses + run.priors)
    out: dict[str, dict[int, float]] = {name: {} for name in tables}
    for name, size in keys:
        out[name][size] = statistics.median(times[f"{name}@{size}"])
    return out


# ---- the comparison ------------------------------------------------------------------------------


def synthesize(s, generator, plugins, seed: int, source: str) -> tuple[np.ndarray, np.ndarray, float]:
    run = make_run(s, generator, plugins, seed, source)
    start = time.perf_counter()
    try:
        build_engine(run).run(data=None, max_epochs=1, epoch_length=run.iterations)
    finally:
        detach_terms(run.losses + run.priors)
    return run.x.detach().numpy(), run.targets.numpy(), time.perf_counter() - start


def arm(name: str, s, seeds: list[int], generator, plugins, verifier, step_seconds: float) -> dict:
    xs, targets, seconds = [], [], 0.0
    for seed in seeds:
        x, t, sec = synthesize(s, generator, plugins, seed, name)
        xs.append(x)
        targets.append(t)
        seconds += sec
        print(f"  {name}: seed {seed}, {s.iterations} iterations, {sec:.0f} s", flush=True)
    x, t = np.concatenate(xs), np.concatenate(targets)
    spec = generator.spec
    probs = verifier_probabilities(x, spec.mean, spec.std, verifier)
    scored = score(probs, t, spec.classes)
    top = probs.argmax(1).tolist()
    return {
        "top1": scored["top1"],
        "top5": scored["top5"],
        "p_target": scored["p_target"],
        "seconds": seconds,
        "step_seconds": step_seconds,
        "iterations": s.iterations,
        "n": scored["n"],
        "verifier": VERIFIER,
        "per_class": scored["per_class"],
        "_images": to_images(x, spec.mean, spec.std),
        "_titles": [f"{spec.classes[int(k)][:14]}\n-> {spec.classes[p][:14]}" for k, p in zip(t.argmax(1), top)],
    }


def compare(args, generator, plugins, verifier) -> dict:
    classes = args.classes or (QUICK_CLASSES if args.quick else CLASSES)
    seeds = list(range(args.seeds or (1 if args.quick else 2)))
    iterations = args.iterations or (200 if args.quick else load_pipeline(METHODS["dsv"]).config.synthesis.iterations)
    extra = {"dsv": args.set_dsv, "deepinversion": args.set_deepinversion}
    methods = args.methods or list(METHODS)
    tables = {name: scaled(METHODS[name], iterations, classes, extra[name]) for name in methods}
    for variant in args.variants:
        try:
            label, more = cfg.split_variant(variant)
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
        tables[f"dsv+{label}"] = scaled(METHODS["dsv"], iterations, classes, [*extra["dsv"], *more])
    print(f"calibrating step times ({args.calibration_steps} steps per size) ...", flush=True)
    at = calibrate(tables, generator, plugins, args.calibration_steps)
    skip = {"deepinversion"} if args.equal_time_only and len(methods) == 2 else set()
    arms: dict[str, dict] = {}

    def done(name: str, result: dict) -> None:  # a killed run keeps the arms it finished
        arms[name] = result
        if args.json:
            partial = {n: {k: v for k, v in r.items() if not k.startswith("_")} for n, r in arms.items()}
            Path(args.json).write_text(json.dumps({"partial": True, "arms": partial, "classes": classes}, indent=2))

    for name in tables:
        if name not in skip:
            done(name, arm(name, tables[name], seeds, generator, plugins, verifier, at[name][224]))
    if len(methods) == 2:  # DeepInversion again, for as long as dsv's run took
        cost = {name: per_iteration_seconds(tables[name], at[name]) for name in methods}
        equal_time = max(1, round(iterations * cost["dsv"] / cost["deepinversion"]))
        print(f"step seconds: {at}; DeepInversion at dsv's wall-clock: {equal_time} iterations", flush=True)
        if not skip:
            arms["deepinversion_equal_iterations"] = arms["deepinversion"]
        if equal_time != iterations or skip:
            di_equal_time = scaled(METHODS["deepinversion"], equal_time, classes, extra["deepinversion"])
            step = at["deepinversion"][224]
            done("deepinversion", arm("deepinversion", di_equal_time, seeds, generator, plugins, verifier, step))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name, result in arms.items():
            if name.endswith("_equal_iterations") and result is arms.get("deepinversion"):
                continue
            per_row = len(classes)
            images, titles = result["_images"], result["_titles"]
            rows = [list(images[i : i + per_row]) for i in range(0, len(images), per_row)]
            names = [titles[i : i + per_row] for i in range(0, len(titles), per_row)]
            title = f"{name}: {result['iterations']} iterations, Lite2 top-1 {result['top1']:.2f}"
            save_rows(rows, names, out / f"{args.tag}{name}.png", title=title)
    clean = {name: {k: v for k, v in r.items() if not k.startswith("_")} for name, r in arms.items()}
    return {
        "methods": {name: clean[name] for name in methods},
        "variants": {name: clean[name] for name in tables if name not in METHODS},
        "equal_iterations": {  # without DeepInversion's when --equal-time-only skipped it
            name: clean.get(f"{name}_equal_iterations", clean[name])
            for name in methods
            if not (name in skip and f"{name}_equal_iterations" not in clean)
        },
        "classes": classes,
        "seeds": seeds,
        "step_seconds_by_size": {name: {str(k): v for k, v in d.items()} for name, d in at.items()},
        "threads": torch.get_num_threads(),
    }


def print_comparison(result: dict) -> None:
    print(f"\n{'comparison':<17} {'method':<14} {'iters':>6} {'seconds':>8} {'step@224':>9} "
          f"{'top1':>5} {'top5':>5} {'p_tgt':>6} {'n':>3}")  # fmt: skip
    for label, key in (
        ("equal wall-clock", "methods"),
        ("equal iterations", "equal_iterations"),
        ("variants", "variants"),
    ):
        for name, r in result.get(key, {}).items():
            print(
                f"{label:<17} {name:<14} {r['iterations']:>6} {r['seconds']:>8.0f} {r['step_seconds']:>9.2f} "
                f"{r['top1']:>5.2f} {r['top5']:>5.2f} {r['p_target']:>6.3f} {r['n']:>3}"
            )


# ---- speed ---------------------------------------------------------------------------------------


def _one_forward(path: Path) -> list[str]:
    """dsv's profile with every loss on the augmented copy only: one forward per step."""
    loaded = load_pipeline(path).raw["synthesis"]
    losses = [{**loss, "augmented": True, "clean": False} for loss in loaded["losses"]]
    priors = [{**p, "augmented": True} if p["name"] == "bn_stats" else p for p in loaded["priors"]]
    return [f"synthesis.losses={cfg.toml_inline(losses)}", f"synthesis.priors={cfg.toml_inline(priors)}"]


def _without_bn(path: Path) -> list[str]:
    priors = [p for p in load_pipeline(path).raw["synthesis"]["priors"] if p["name"] != "bn_stats"]
    return [f"synthesis.priors={cfg.toml_inline(priors)}"]


def speed(args, generator, plugins) -> dict:
    """Median step seconds at 224 px of dsv, DeepInversion and variants, interleaved."""
    classes = args.classes or CLASSES[:10]  # the CPU profile's batch: its ten classes
    dsv, di = METHODS["dsv"], METHODS["deepinversion"]
    jitter = [
        'synthesis.augmentations=[{ name = "jitter", pixels = 30 }, { name = "flip", p = 0.5 }]',
    ]
    variants = {
        "deepinversion": (di, [], {}),
        "dsv": (dsv, [], {}),
        "dsv without bn_stats": (dsv, _without_bn(dsv), {}),
        "dsv channels_last (model and candidates)": (dsv, [], {"channels_last": True}),
        "dsv channels_last (model only)": (dsv, ["synthesis.channels_last=true"], {}),
        "deepinversion channels_last (model only)": (di, ["synthesis.channels_last=true"], {}),
        "dsv bf16 autocast": (dsv, [], {"bf16": True}),
        "dsv one forward (augmented only)": (dsv, _one_forward(dsv), {}),
        "dsv one forward + jitter/flip": (dsv, _one_forward(dsv) + jitter, {}),
    }
    if args.compile:
        variants["deepinversion torch.compile"] = (di, [], {"compile": True})
        variants["dsv one forward + jitter/flip, torch.compile"] = (dsv, _one_forward(dsv) + jitter, {"compile": True})
    runs, compile_seconds = {}, {}
    for name, (path, overrides, how) in variants.items():
        s = scaled(path, 600, classes, overrides)
        s.resolutions = [[1, 224]]
        run = make_run(s, generator, plugins, 0, name)
        wrap = contextlib.nullcontext
        if how.get("channels_last"):
            run.model.to(memory_format=torch.channels_last)
            with torch.no_grad():
                run.x = run.x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
            run.optimizer = run._new_optimizer()
        if how.get("bf16"):
            wrap = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
        if how.get("compile"):
            run.model.forward = torch.compile(run.model.forward)
            start = time.perf_counter()
            try:
                run.step(1)
            except Exception as exc:  # e.g. double backward through a compiled graph
                print(f"{name}: torch.compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
                detach_terms(run.losses + run.priors)
                continue
            compile_seconds[name] = time.perf_counter() - start
        runs[name] = (run, wrap)
    times = step_times(runs, args.calibration_steps)
    base = statistics.median(times["deepinversion"])
    rows = {}
    for name, t in times.items():
        median = statistics.median(t)
        rows[name] = {"step_seconds": median, "ratio_to_deepinversion": median / base}
        if name in compile_seconds:
            rows[name]["first_step_seconds"] = compile_seconds[name]
    dsv_median = rows["dsv"]["step_seconds"]
    rows["dsv"]["bn_stats_overhead"] = 1 - rows["dsv without bn_stats"]["step_seconds"] / dsv_median
    print(f"\nstep at 224 px, {len(classes)} candidates, {torch.get_num_threads()} threads, "
          f"median of {args.calibration_steps} interleaved steps")  # fmt: skip
    print(f"{'variant':<48} {'seconds':>8} {'/ DI':>6}")
    for name, r in rows.items():
        extra = f"  (first step with compile: {r['first_step_seconds']:.0f} s)" if "first_step_seconds" in r else ""
        print(f"{name:<48} {r['step_seconds']:>8.2f} {r['ratio_to_deepinversion']:>6.2f}{extra}")
    print(f"bn_stats overhead in dsv's step: {rows['dsv']['bn_stats_overhead']:.1%}")
    for run, _ in runs.values():
        detach_terms(run.losses + run.priors)
    return {"speed": rows, "threads": torch.get_num_threads(), "candidates": len(classes)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results here (after each arm, marked partial until the end)")
    ap.add_argument("--out", help="save each method's grid here as PNG")
    ap.add_argument("--tag", default="", help="prefix of the PNG names (to keep the grids of several tries)")
    ap.add_argument("--quick", action="store_true", help="6 classes, 1 seed, 200 iterations (for iterating)")
    ap.add_argument("--classes", type=int, nargs="+", help="ImageNet class indices (default: 20 spread over ImageNet)")
    ap.add_argument("--seeds", type=int, help="seeds per method (default 2)")
    ap.add_argument("--iterations", type=int, help="dsv's iterations (default: its pipeline's, 300)")
    ap.add_argument("--set-dsv", action="append", default=[], metavar="KEY=VALUE", help="override for dsv's arm")
    ap.add_argument(
        "--set-deepinversion", action="append", default=[], metavar="KEY=VALUE", help="override for DeepInversion's"
    )
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), help="run only these (default: both)")
    ap.add_argument(
        "--variant",
        dest="variants",
        action="append",
        default=[],
        metavar="LABEL:KEY=VALUE[;KEY=VALUE...]",
        help="an extra arm 'dsv+LABEL': dsv's profile with these overrides, same classes, seeds and iterations",
    )
    ap.add_argument(
        "--equal-time-only",
        action="store_true",
        help="DeepInversion at dsv's wall-clock only (skips its equal-iterations arm, saves time)",
    )
    ap.add_argument("--calibration-steps", type=int, default=4, help="timed steps per method and size")
    ap.add_argument("--speed", action="store_true", help="step-time ratios at 224 px instead of the comparison")
    ap.add_argument("--compile", action="store_true", help="with --speed: also torch.compile variants")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    plugins = get_plugin_manager()
    if "bn_stats" not in plugins.registry("priors"):
        raise SystemExit("bn_stats is not registered: pip install plugins/dsv-bn-prior first")
    generator = plugins.registry("models").get(GENERATOR)(ModelRequest())
    if args.speed:
        result = speed(args, generator, plugins)
    else:
        verifier = plugins.registry("models").get(VERIFIER)(ModelRequest())
        result = compare(args, generator, plugins, verifier)
        print_comparison(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
