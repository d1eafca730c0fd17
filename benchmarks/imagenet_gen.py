"""dsv's ImageNet generation profiles against the DeepInversion baseline, at equal compute, and
the ablation of dsv's profile.

Every arm runs on the packaged EfficientNet-Lite0 with the same classes and seeds, one candidate
per class and run, each pipeline's schedule (resolution stages, warm-ups) scaled to its iteration
count. The methods: ``dsv`` (pipelines/imagenet_gen.toml: DeepKKT terms with DeepInversion's
BatchNorm prior), ``dsv_paper`` (pipelines/imagenet_paper.toml: the paper's DeepKKT-only recipe)
and ``deepinversion`` (pipelines/imagenet_deepinversion.toml, DeepInversion's recipe rebuilt from
dsv's plugins). dsv runs ``--iterations`` steps; every other arm runs at dsv's wall-clock: as many
steps as fit in the time of dsv's run, from the step times of every arm measured at each resolution
of its schedule at the start of the same run (the table reports the seconds each arm really took).
Without ``--equal-time-only`` the other methods also run at dsv's iteration count.

``--ablation`` runs instead, in one run: the full profile and the profile without each of
stationarity, bn_stats, tv, norm, the augmented copy and the resolution schedule, every arm at the
full profile's wall-clock, then ``dsv_paper`` and ``deepinversion`` likewise (``dsv`` is the full
arm). ``--arm NAME=KEY=VALUE[,KEY=VALUE...]`` adds an arm of overrides to either mode (an entry of
the [synthesis] lists by its name: ``stationarity.params="all"``, ``-bn_stats``), ``--arm NAME`` a
named stationarity variant (benchmarks/imagenet_arms.py). ``--ablation NAME ...`` runs only those
ablations beside the full arm; with ``--methods dsv`` no other method, so that ``--ablation full
--methods dsv --arm stat_all_rows`` measures a variant against the full profile alone.

Two independent classifiers, EfficientNet-Lite1 and Lite2 (neither is the generator), name the
final images: top-1 (over all seeds, and per seed with its spread), top-5 and the mean probability
of the target. Beside them, how natural the images are (dsv/evaluation/naturalness.py): the slope
of their amplitude spectrum, their colour saturation, and the distance of their BatchNorm feature
statistics inside Lite1 to Lite1's running statistics; the same for scikit-image's photographs.

``--speed`` measures instead the time of one synthesis step at 224 px (the CPU profile's batch) for
dsv, DeepInversion and variants (bn_stats, one forward, channels_last, bf16 autocast,
torch.compile), steps of all variants interleaved so that they share the machine's state, and
prints their ratios. ``--plan`` calibrates the step times and prints how long the run would take.
``--markdown out.json`` prints a finished run's tables as Markdown (the README's), loading no model.

    pip install plugins/dsv-bn-prior
    python benchmarks/imagenet_gen.py --json out.json [--quick] [--out DIR] [--threads 2]
    python benchmarks/imagenet_gen.py --ablation --json out.json [--arm stat_norm_affine] [--threads 2]
    python benchmarks/imagenet_gen.py --speed [--threads 2]
    python benchmarks/imagenet_gen.py --markdown out.json
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
from imagenet_arms import ABLATIONS, parse_arm, resolve

from dsv import config as cfg
from dsv.evaluation.naturalness import natural_measures, photos
from dsv.evaluation.verifier import score, verifier_probabilities
from dsv.pipeline import load_pipeline
from dsv.plugins import ModelRequest, get_plugin_manager
from dsv.store.export import save_rows, to_images
from dsv.synthesis.build import build_run
from dsv.synthesis.engine import build_engine
from dsv.synthesis.execution import detach_terms

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"
METHODS = {
    "dsv": PIPELINES / "imagenet_gen.toml",
    "dsv_paper": PIPELINES / "imagenet_paper.toml",
    "deepinversion": PIPELINES / "imagenet_deepinversion.toml",
}
GENERATOR = "efficientnet-lite0"
VERIFIERS = {"lite1": "efficientnet-lite1", "lite2": "efficientnet-lite2"}
# 20 classes spread over ImageNet (those of pipelines/imagenet_gen_gpu.toml): fish, birds, dogs,
# cats, insects, objects, animals, fruit, landscapes, vehicles, flowers
CLASSES = [1, 130, 207, 285, 323, 417, 340, 949, 980, 779, 11, 31, 301, 292, 145, 951, 953, 607, 437, 985]
QUICK_CLASSES = [1, 207, 323, 417, 340, 949]


# ---- building runs from the pipeline files -------------------------------------------------------


def scaled(path: Path, iterations: int, classes: list[int], extra: list[str], max_size: int = 0):
    """The [synthesis] table of a pipeline file, its schedule scaled to ``iterations`` steps (and
    each resolution stage capped at ``max_size`` px when given: smoke runs)."""
    s = load_pipeline(path, overrides=extra).config.synthesis
    base = s.iterations
    factor = iterations / base
    s.iterations = iterations
    s.resolutions = [[max(1, round(start * factor)) if start > 1 else start, size] for start, size in s.resolutions]
    if max_size:
        s.resolutions = [[start, min(size, max_size)] for start, size in s.resolutions] or [[1, max_size]]
    s.lambda_warmup = iterations if s.lambda_warmup >= base else round(s.lambda_warmup * factor)
    s.lr_warmup = round(s.lr_warmup * factor)
    s.classes, s.targets, s.candidates_per_class = list(classes), [], 1
    return s


def final_size(s) -> int:
    return s.resolutions[-1][1] if s.resolutions else 224


def make_run(s, generator, plugins, seed: int, source: str):
    return build_run(copy.deepcopy(generator.module), generator.spec, s, plugins=plugins,
                     device=torch.device("cpu"), seed=seed, source=source, progress=False)  # fmt: skip


def per_iteration_seconds(s, seconds_at: dict[int, float]) -> float:
    """Mean seconds per iteration of a schedule, from the step time at each of its sizes."""
    total = 0.0
    for it in range(1, s.iterations + 1):
        size = next((sz for start, sz in reversed(s.resolutions) if it >= start), final_size(s))
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
    """Median step seconds of each arm at each size of its schedule, the steps of every arm and
    size interleaved (one step of each in turn), so that all of them share the machine's state."""
    runs, keys = {}, []
    for name, s in tables.items():
        for size in sorted({sz for _, sz in s.resolutions} | {final_size(s)}):
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


# ---- one arm: synthesize over the seeds, score with both verifiers, measure naturalness ----------


def synthesize(s, generator, plugins, seed: int, source: str) -> tuple[np.ndarray, np.ndarray, float, float | None]:
    """(candidates, targets, seconds, the run's final relative stationarity: None without the term)."""
    run = make_run(s, generator, plugins, seed, source)
    start = time.perf_counter()
    try:
        build_engine(run).run(data=None, max_epochs=1, epoch_length=run.iterations)
        seconds = time.perf_counter() - start
        relative = run.summary().get("relative_stationarity")
    finally:
        detach_terms(run.losses + run.priors)
    return run.x.detach().numpy(), run.targets.numpy(), seconds, relative


def verified(probs: torch.Tensor, targets: np.ndarray, seed_of: np.ndarray, classes: list[str], model: str) -> dict:
    """A verifier's figures over all seeds, and top-1 per seed with its spread (sample std)."""
    scored = score(probs, targets, classes)
    by_seed = [score(probs[seed_of == k], targets[seed_of == k], classes)["top1"] for k in np.unique(seed_of)]
    return {
        "model": model,
        "top1": scored["top1"],
        "top5": scored["top5"],
        "p_target": scored["p_target"],
        "n": scored["n"],
        "top1_by_seed": by_seed,
        "top1_std": statistics.stdev(by_seed) if len(by_seed) > 1 else 0.0,
        "per_class": scored["per_class"],
    }


def arm(name: str, s, seeds: list[int], generator, plugins, verifiers, step_seconds: float) -> dict:
    xs, targets, seed_of, seconds, relative = [], [], [], 0.0, []
    for seed in seeds:
        x, t, sec, rel = synthesize(s, generator, plugins, seed, name)
        if rel is not None:
            relative.append(rel)
        xs.append(x)
        targets.append(t)
        seed_of += [seed] * len(x)
        seconds += sec
        print(f"  {name}: seed {seed}, {s.iterations} iterations, {sec:.0f} s", flush=True)
    x, t = np.concatenate(xs), np.concatenate(targets)
    spec = generator.spec
    result: dict = {"seconds": seconds, "step_seconds": step_seconds, "iterations": s.iterations}
    if relative:  # how much of the covered parameters the candidates explain (1.0: nothing), mean over seeds
        result["relative_stationarity"] = statistics.mean(relative)
    top = None
    for key, verifier in verifiers.items():
        probs = verifier_probabilities(x, spec.mean, spec.std, verifier)
        result[key] = verified(probs, t, np.asarray(seed_of), spec.classes, VERIFIERS[key])
        top = probs.argmax(1).tolist()  # the last verifier's (Lite2) names the grid's titles
    result["n"] = result["lite2"]["n"]
    images = to_images(x, spec.mean, spec.std)
    result["natural"] = natural_measures(images, verifiers["lite1"])
    result["_images"] = images
    result["_titles"] = [f"{spec.classes[int(k)][:14]}\n-> {spec.classes[p][:14]}" for k, p in zip(t.argmax(1), top)]
    return result


# ---- the arms of a run and their budgets ---------------------------------------------------------


def planned_arms(args) -> tuple[dict[str, tuple[Path, list[str]]], dict[str, str]]:
    """(arm name -> (pipeline file, its overrides), arm name -> its section of the table). The first
    arm is the reference: it runs ``--iterations`` steps, the others its wall-clock (``variants``:
    its iteration count)."""
    extra = {"dsv": args.set_dsv, "dsv_paper": args.set_dsv_paper, "deepinversion": args.set_deepinversion}
    raw = load_pipeline(METHODS["dsv"], overrides=extra["dsv"]).raw
    arms: dict[str, tuple[Path, list[str]]] = {}
    section: dict[str, str] = {}
    try:
        if args.ablation:
            for name, items in ABLATIONS.items():
                if args.ablation_arms and name != "full" and name not in args.ablation_arms:
                    continue  # the full arm is the reference, always run
                arms[name] = (METHODS["dsv"], [*extra["dsv"], *resolve(raw, items)])
                section[name] = "ablation"
        methods = args.methods or list(METHODS)
        for name in methods:
            if args.ablation and name == "dsv":
                continue  # the full arm
            arms[name] = (METHODS[name], list(extra[name]))
            section[name] = "methods"
        for text in args.arms:
            name, items = parse_arm(text)
            arms[name] = (METHODS["dsv"], [*extra["dsv"], *resolve(raw, items)])
            section[name] = "ablation" if args.ablation else "variants"
        for variant in args.variants:
            label, more = cfg.split_variant(variant)
            arms[f"dsv+{label}"] = (METHODS["dsv"], [*extra["dsv"], *more])
            section[f"dsv+{label}"] = "variants"
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    if not args.ablation and "dsv" not in arms:
        raise SystemExit("--methods: dsv is the reference of the comparison; name it too")
    return arms, section


def compare(args, generator, plugins, verifiers) -> dict:
    classes = args.classes or (QUICK_CLASSES if args.quick else CLASSES)
    seeds = list(range(args.seeds or (1 if args.quick else 2)))
    iterations = args.iterations or (200 if args.quick else load_pipeline(METHODS["dsv"]).config.synthesis.iterations)
    arms, section = planned_arms(args)
    reference = "full" if args.ablation else "dsv"
    tables = {name: scaled(path, iterations, classes, more, args.max_size) for name, (path, more) in arms.items()}
    print(f"calibrating step times ({args.calibration_steps} steps per size) ...", flush=True)
    at = calibrate(tables, generator, plugins, args.calibration_steps)
    cost = {name: per_iteration_seconds(tables[name], at[name]) for name in tables}
    budget = {  # iterations of each arm: the reference's wall-clock, or its iteration count
        name: iterations if name == reference or section[name] == "variants"
        else max(1, round(iterations * cost[reference] / cost[name]))
        for name in tables
    }  # fmt: skip
    print("iterations at the reference's wall-clock: " + ", ".join(f"{n} {budget[n]}" for n in tables), flush=True)
    if args.plan:
        planned = {n: budget[n] * cost[n] * len(seeds) for n in tables}
        extra_runs = [n for n in tables if section[n] == "methods" and n != "dsv" and not args.equal_time_only]
        planned_extra = sum(iterations * cost[n] * len(seeds) for n in extra_runs)
        for n in tables:
            steps = ", ".join(f"{at[n][size]:.2f} s @{size}" for size in sorted(at[n]))
            print(f"  {n:<20} {budget[n]:>5} iterations x {len(seeds)} seeds: {planned[n]:>7.0f} s  (steps {steps})")
        if extra_runs:
            print(f"  equal-iterations runs of {', '.join(extra_runs)}: {planned_extra:.0f} s")
        total = sum(planned.values()) + planned_extra
        print(f"synthesis in all: {total:.0f} s ({total / 3600:.2f} h), calibration not counted")
        sizes = {n: {str(k): v for k, v in d.items()} for n, d in at.items()}
        return {
            "plan_seconds": planned,
            "plan_total_seconds": total,
            "iterations": budget,
            "step_seconds_by_size": sizes,
        }
    photo_measures = natural_measures(photos(final_size(tables[reference])), verifiers["lite1"])
    results: dict[str, dict] = {}
    equal_iterations: dict[str, dict] = {}

    def shaped(partial: bool) -> dict:
        clean = lambda r: {k: v for k, v in r.items() if not k.startswith("_")}  # noqa: E731
        out: dict = {"partial": True} if partial else {}
        if args.ablation:
            out["ablation"] = {n: clean(r) for n, r in results.items() if section[n] == "ablation"}
            out["methods"] = {"dsv": clean(results[reference])} if reference in results else {}
            out["methods"].update({n: clean(r) for n, r in results.items() if section[n] == "methods"})
        else:
            out["methods"] = {n: clean(r) for n, r in results.items() if section[n] == "methods"}
            out["variants"] = {n: clean(r) for n, r in results.items() if section[n] == "variants"}
            out["equal_iterations"] = {n: clean(r) for n, r in equal_iterations.items()}
        out["photos"] = photo_measures
        sizes = {n: {str(k): v for k, v in d.items()} for n, d in at.items()}
        return {**out, "reference": reference, "iterations": iterations, "classes": classes, "seeds": seeds,
                "verifiers": VERIFIERS, "threads": torch.get_num_threads(), "step_seconds_by_size": sizes}  # fmt: skip

    def write(partial: bool) -> None:  # a killed run keeps the arms it finished
        if args.json:
            Path(args.json).write_text(json.dumps(shaped(partial), indent=2))

    for name, s in tables.items():
        if section[name] == "methods" and name != "dsv" and not args.equal_time_only:
            equal_iterations[name] = arm(name, s, seeds, generator, plugins, verifiers, at[name][final_size(s)])
            write(True)
        if budget[name] != s.iterations:
            s = scaled(arms[name][0], budget[name], classes, arms[name][1], args.max_size)
        results[name] = arm(name, s, seeds, generator, plugins, verifiers, at[name][final_size(s)])
        write(True)
    if "dsv" in results and not args.ablation:
        equal_iterations = {"dsv": results["dsv"], **equal_iterations}
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name, result in results.items():
            per_row = len(classes)
            images, titles = result["_images"], result["_titles"]
            rows = [list(images[i : i + per_row]) for i in range(0, len(images), per_row)]
            names = [titles[i : i + per_row] for i in range(0, len(titles), per_row)]
            title = (f"{name}: {result['iterations']} iterations, top-1 Lite1 {result['lite1']['top1']:.2f}, "
                     f"Lite2 {result['lite2']['top1']:.2f}")  # fmt: skip
            save_rows(rows, names, out / f"{args.tag}{name}.png", title=title)
    return shaped(False)


def _row(label: str, name: str, r: dict) -> str:
    figures = ""
    for key in VERIFIERS:
        v = r[key]
        spread = f"±{v['top1_std']:.2f}" if len(v["top1_by_seed"]) > 1 else "     "
        figures += f" {v['top1']:>5.2f}{spread} {v['top5']:>5.2f} {v['p_target']:>6.3f}"
    n = r["natural"]
    return (f"{label:<17} {name:<20} {r['iterations']:>6} {r['seconds']:>8.1f}{figures} "
            f"{n['spectrum_slope']:>6.2f} {n['saturation']:>5.2f} {n['saturated_fraction']:>6.3f} "
            f"{n['verifier_bn_distance']:>6.3f} {r['n']:>3}")  # fmt: skip


def binomial_note(n: int) -> str:
    """How far a top-1 over ``n`` images moves by chance: its binomial standard error. The seeds'
    spread of two seeds understates it (the same arm on another CPU's kernels moved by two of it)."""
    se = lambda p: (p * (1 - p) / n) ** 0.5  # noqa: E731
    return (f"{n} images per arm: a top-1 of p has a binomial standard error of sqrt(p (1 - p) / {n}), "
            f"{se(0.5):.3f} at 0.5 and {se(0.85):.3f} at 0.85; ± is the spread of the seeds' top-1.")  # fmt: skip


def print_comparison(result: dict) -> None:
    """One table: every arm, both verifiers (top-1 over seeds with its spread, top-5, p(target)),
    the naturalness measures, and the photographs' measures as the last row."""
    head = "".join(f" {k + ' top1':>10} {'top5':>5} {'p_tgt':>6}" for k in VERIFIERS)
    print(f"\n{'section':<17} {'arm':<20} {'iters':>6} {'seconds':>8}{head} {'slope':>6} {'sat':>5} {'sat>.9':>6} "
          f"{'bn_d':>6} {'n':>3}")  # fmt: skip
    for label, key in (
        ("ablation", "ablation"),
        ("equal wall-clock", "methods"),
        ("equal iterations", "equal_iterations"),
        ("variants", "variants"),
    ):
        for name, r in result.get(key, {}).items():
            print(_row(label, name, r))
    p = result["photos"]
    blank = " " * (6 + 1 + 8 + len(head))
    print(f"{'photographs':<17} {'scikit-image':<20} {blank} {p['spectrum_slope']:>6.2f} {p['saturation']:>5.2f} "
          f"{p['saturated_fraction']:>6.3f} {p['verifier_bn_distance']:>6.3f}")  # fmt: skip
    print("top1: over all seeds, ± the sample std of the per-seed top-1; slope: amplitude spectrum (log-log); "
          "sat: mean HSV saturation; sat>.9: its fraction of saturated pixels; bn_d: BatchNorm-statistics "
          "distance inside Lite1 (Gaussian KL, mean over channels and layers)")  # fmt: skip
    arms = [r for key in ("ablation", "methods") for r in result.get(key, {}).values()]
    if arms:
        print(binomial_note(arms[0]["n"]))


def markdown(result: dict) -> str:
    """The README's tables from a result JSON: every arm with both verifiers (top-1 ± its spread over
    seeds, top-5, p(target)) and the change of the mean p(target) from the reference; the
    naturalness measures with the photographs' beside them; the step seconds at the last size."""
    ref_name = result["reference"]
    sections = [(k, result.get(k, {})) for k in ("ablation", "methods", "variants", "equal_iterations")]
    arms = [(key, name, r) for key, rows in sections for name, r in rows.items()]
    arms = [(k, n, r) for k, n, r in arms if not (k == "methods" and n == "dsv" and "ablation" in result)]
    ref = next(r for _, n, r in arms if n in (ref_name, "full", "dsv"))
    mean_p = lambda r: (r["lite1"]["p_target"] + r["lite2"]["p_target"]) / 2  # noqa: E731
    head = "| section | arm | iterations | seconds | Lite1 top-1 | top-5 | p_target | Lite2 top-1 | top-5 | p_target "
    lines = [head + "| mean p_target vs reference |", "|" + " --- |" * 11]
    for key, name, r in arms:
        cells = [key, name, str(r["iterations"]), f"{r['seconds']:.0f}"]
        for v in (r["lite1"], r["lite2"]):
            spread = f" ± {v['top1_std']:.2f}" if len(v["top1_by_seed"]) > 1 else ""
            cells += [f"{v['top1']:.3f}{spread}", f"{v['top5']:.3f}", f"{v['p_target']:.3f}"]
        cells.append("" if r is ref else f"{mean_p(r) - mean_p(ref):+.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", binomial_note(ref["n"])]
    relative = [(n, r["relative_stationarity"]) for _, n, r in arms if "relative_stationarity" in r]
    if relative:  # result JSONs before 2026-12-06's last runs do not have it
        lines += ["", "| arm | relative stationarity (1.0: the candidates explain nothing) |", "| --- | --- |"]
        lines += [f"| {name} | {value:.4f} |" for name, value in relative]
    lines += ["", "| arm | spectrum slope | saturation | saturated > 0.9 | BN distance in Lite1 |", "|" + " --- |" * 5]
    rows = [(n, r["natural"]) for _, n, r in arms] + [("photographs (scikit-image)", result["photos"])]
    for name, m in rows:
        lines.append(f"| {name} | {m['spectrum_slope']:.2f} | {m['saturation']:.2f} | {m['saturated_fraction']:.3f} "
                     f"| {m['verifier_bn_distance']:.3f} |")  # fmt: skip
    steps = {n: max(d.items(), key=lambda kv: int(kv[0])) for n, d in result["step_seconds_by_size"].items()}
    if "deepinversion" in steps:
        base = steps["deepinversion"][1]
        lines += ["", "| arm | px | s / step | vs DeepInversion |", "|" + " --- |" * 4]
        for name, (size, sec) in steps.items():
            lines.append(f"| {name} | {size} | {sec:.2f} | {sec / base:.2f} |")
    return "\n".join(lines)


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
        "dsv_paper": (METHODS["dsv_paper"], [], {}),
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
        "--set-dsv-paper", action="append", default=[], metavar="KEY=VALUE", help="override for dsv_paper's"
    )
    ap.add_argument(
        "--set-deepinversion", action="append", default=[], metavar="KEY=VALUE", help="override for DeepInversion's"
    )
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), help="run only these (default: all three)")
    ap.add_argument(
        "--ablation",
        nargs="*",
        metavar="ARM",
        help="the full profile and the profile without each of its terms, then the methods, all at equal wall-clock; "
        "names restrict it to those ablations (with --methods dsv and --arm: the full profile and variants only)",
    )
    ap.add_argument(
        "--arm",
        dest="arms",
        action="append",
        default=[],
        metavar="NAME=KEY=VALUE[,KEY=VALUE...]",
        help="an extra arm of dsv's profile at its wall-clock: pipeline overrides, ENTRY.OPTION=VALUE for an entry "
        "of the [synthesis] lists, -ENTRY to remove one; or a preset's NAME (benchmarks/imagenet_arms.py)",
    )
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
        help="the methods at dsv's wall-clock only (skips their equal-iterations arms, saves time)",
    )
    ap.add_argument("--max-size", type=int, default=0, help="cap every resolution stage at this many px (smoke runs)")
    ap.add_argument("--plan", action="store_true", help="calibrate, print each arm's iterations and time, stop")
    ap.add_argument("--calibration-steps", type=int, default=4, help="timed steps per method and size")
    ap.add_argument("--speed", action="store_true", help="step-time ratios at 224 px instead of the comparison")
    ap.add_argument("--compile", action="store_true", help="with --speed: also torch.compile variants")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--markdown", metavar="JSON", help="print a result JSON's tables as Markdown and stop")
    args = ap.parse_args()
    args.ablation_arms, args.ablation = args.ablation or [], args.ablation is not None
    unknown = sorted(set(args.ablation_arms) - set(ABLATIONS))
    if unknown:
        raise SystemExit(f"--ablation: no ablation {', '.join(unknown)} (known: {', '.join(ABLATIONS)})")
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return
    if args.ablation:
        args.equal_time_only = True  # the methods at the full profile's wall-clock only
    if args.threads:
        torch.set_num_threads(args.threads)
    plugins = get_plugin_manager()
    if "bn_stats" not in plugins.registry("priors"):
        raise SystemExit("bn_stats is not registered: pip install plugins/dsv-bn-prior first")
    generator = plugins.registry("models").get(GENERATOR)(ModelRequest())
    if args.speed:
        result = speed(args, generator, plugins)
    else:
        verifiers = {key: plugins.registry("models").get(name)(ModelRequest()) for key, name in VERIFIERS.items()}
        result = compare(args, generator, plugins, verifiers)
        if not args.plan:
            print_comparison(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
