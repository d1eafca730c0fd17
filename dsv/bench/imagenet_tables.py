"""The tables of ``benchmarks/imagenet_gen.py``: the plain-text table of a finished run, the
Markdown tables of a result JSON (the README's, ``--markdown``), and the step-time table of
``--speed``. All of them read the result JSON's keys only: no model is loaded."""

from __future__ import annotations

from typing import Any

from dsv.bench.imagenet_arms import VERIFIERS

#: the sections of a result JSON in the order the plain-text table shows them, with their labels
SECTIONS = (
    ("ablation", "ablation"),
    ("equal wall-clock", "methods"),
    ("equal iterations", "equal_iterations"),
    ("variants", "variants"),
)
LEGEND = (
    "top1: over all seeds, ± the sample std of the per-seed top-1; slope: amplitude spectrum (log-log); "
    "sat: mean HSV saturation; sat>.9: its fraction of saturated pixels; bn_d: BatchNorm-statistics "
    "distance inside Lite1 (Gaussian KL, mean over channels and layers)"
)


def binomial_note(n: int) -> str:
    """How far a top-1 over ``n`` images moves by chance: its binomial standard error. The seeds'
    spread of two seeds understates it (the same arm on another CPU's kernels moved by two of it)."""
    se = lambda p: (p * (1 - p) / n) ** 0.5  # noqa: E731
    return (
        f"{n} images per arm: a top-1 of p has a binomial standard error of sqrt(p (1 - p) / {n}), "
        f"{se(0.5):.3f} at 0.5 and {se(0.85):.3f} at 0.85; ± is the spread of the seeds' top-1."
    )


def _natural(m: dict[str, float]) -> str:
    return (
        f"{m['spectrum_slope']:>6.2f} {m['saturation']:>5.2f} {m['saturated_fraction']:>6.3f} "
        f"{m['verifier_bn_distance']:>6.3f}"
    )


def _row(label: str, name: str, r: dict[str, Any]) -> str:
    figures = ""
    for key in VERIFIERS:
        v = r[key]
        spread = f"±{v['top1_std']:.2f}" if len(v["top1_by_seed"]) > 1 else "     "
        figures += f" {v['top1']:>5.2f}{spread} {v['top5']:>5.2f} {v['p_target']:>6.3f}"
    arm = f"{label:<17} {name:<20} {r['iterations']:>6} {r['seconds']:>8.1f}"
    return f"{arm}{figures} {_natural(r['natural'])} {r['n']:>3}"


def comparison_table(result: dict[str, Any]) -> str:
    """One table: every arm, both verifiers (top-1 over seeds with its spread, top-5, p(target)),
    the naturalness measures, and the photographs' measures as the last row; then the legend and
    the binomial note."""
    head = "".join(f" {k + ' top1':>10} {'top5':>5} {'p_tgt':>6}" for k in VERIFIERS)
    lines = [
        "",
        f"{'section':<17} {'arm':<20} {'iters':>6} {'seconds':>8}{head} {'slope':>6} {'sat':>5} {'sat>.9':>6} "
        f"{'bn_d':>6} {'n':>3}",
    ]
    for label, key in SECTIONS:
        lines += [_row(label, name, r) for name, r in result.get(key, {}).items()]
    blank = " " * (6 + 1 + 8 + len(head))
    lines.append(f"{'photographs':<17} {'scikit-image':<20} {blank} {_natural(result['photos'])}")
    lines.append(LEGEND)
    arms = [r for key in ("ablation", "methods") for r in result.get(key, {}).values()]
    if arms:
        lines.append(binomial_note(arms[0]["n"]))
    return "\n".join(lines)


def mean_p_target(r: dict[str, Any]) -> float:
    """The mean over both verifiers of the mean probability of the target."""
    return (r["lite1"]["p_target"] + r["lite2"]["p_target"]) / 2


def markdown(result: dict[str, Any]) -> str:
    """The README's tables from a result JSON: every arm with both verifiers (top-1 ± its spread over
    seeds, top-5, p(target)) and the change of the mean p(target) from the reference; the
    naturalness measures with the photographs' beside them; the step seconds at the last size."""
    ref_name = result["reference"]
    sections = [(k, result.get(k, {})) for k in ("ablation", "methods", "variants", "equal_iterations")]
    arms = [(key, name, r) for key, rows in sections for name, r in rows.items()]
    arms = [(k, n, r) for k, n, r in arms if not (k == "methods" and n == "dsv" and "ablation" in result)]
    ref = next(r for _, n, r in arms if n in (ref_name, "full", "dsv"))
    head = "| section | arm | iterations | seconds | Lite1 top-1 | top-5 | p_target | Lite2 top-1 | top-5 | p_target "
    lines = [head + "| mean p_target vs reference |", "|" + " --- |" * 11]
    for key, name, r in arms:
        cells = [key, name, str(r["iterations"]), f"{r['seconds']:.0f}"]
        for v in (r["lite1"], r["lite2"]):
            spread = f" ± {v['top1_std']:.2f}" if len(v["top1_by_seed"]) > 1 else ""
            cells += [f"{v['top1']:.3f}{spread}", f"{v['top5']:.3f}", f"{v['p_target']:.3f}"]
        cells.append("" if r is ref else f"{mean_p_target(r) - mean_p_target(ref):+.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", binomial_note(ref["n"])]
    relative = [(n, r["relative_stationarity"]) for _, n, r in arms if "relative_stationarity" in r]
    if relative:  # result JSONs before 2026-12-06's last runs do not have it
        lines += ["", "| arm | relative stationarity (1.0: the candidates explain nothing) |", "| --- | --- |"]
        lines += [f"| {name} | {value:.4f} |" for name, value in relative]
    lines += ["", "| arm | spectrum slope | saturation | saturated > 0.9 | BN distance in Lite1 |", "|" + " --- |" * 5]
    rows = [(n, r["natural"]) for _, n, r in arms] + [("photographs (scikit-image)", result["photos"])]
    for name, m in rows:
        lines.append(
            f"| {name} | {m['spectrum_slope']:.2f} | {m['saturation']:.2f} | {m['saturated_fraction']:.3f} "
            f"| {m['verifier_bn_distance']:.3f} |"
        )
    steps = {n: max(d.items(), key=lambda kv: int(kv[0])) for n, d in result["step_seconds_by_size"].items()}
    if "deepinversion" in steps:
        base = steps["deepinversion"][1]
        lines += ["", "| arm | px | s / step | vs DeepInversion |", "|" + " --- |" * 4]
        for name, (size, sec) in steps.items():
            lines.append(f"| {name} | {size} | {sec:.2f} | {sec / base:.2f} |")
    return "\n".join(lines)


def speed_table(result: dict[str, Any], steps: int) -> str:
    """The ``--speed`` result as a table: each variant's median step seconds and its ratio to
    DeepInversion's, and the share of dsv's step the bn_stats prior takes."""
    rows = result["speed"]
    lines = [
        "",
        f"step at 224 px, {result['candidates']} candidates, {result['threads']} threads, "
        f"median of {steps} interleaved steps",
        f"{'variant':<48} {'seconds':>8} {'/ DI':>6}",
    ]
    for name, r in rows.items():
        extra = f"  (first step with compile: {r['first_step_seconds']:.0f} s)" if "first_step_seconds" in r else ""
        lines.append(f"{name:<48} {r['step_seconds']:>8.2f} {r['ratio_to_deepinversion']:>6.2f}{extra}")
    lines.append(f"bn_stats overhead in dsv's step: {rows['dsv']['bn_stats_overhead']:.1%}")
    return "\n".join(lines)
