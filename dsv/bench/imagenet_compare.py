"""One run of ``benchmarks/imagenet_gen.py``'s comparison or ablation: the arms' tables scaled to
the iteration count, their step times calibrated, each arm's iterations at the reference's
wall-clock, then every arm synthesized and scored, the result JSON rewritten after each arm
(marked partial until the end), and the grids saved."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch

from dsv.bench.imagenet_arms import VERIFIERS, Arm
from dsv.bench.imagenet_scoring import comparison_json, save_grid, score_arm
from dsv.bench.imagenet_timing import budgets, calibrate, final_size, per_iteration_seconds, plan, scaled, sizes_json
from dsv.evaluation.naturalness import natural_measures, photos
from dsv.plugins import LoadedModel


@attrs.frozen(kw_only=True)
class Comparison:
    """What one run compares, and where it writes (the command line's options)."""

    #: the ablation of dsv's profile (reference ``full``) instead of the comparison (reference ``dsv``)
    ablation: bool
    #: ImageNet class indices, one candidate of each per seed and arm
    classes: list[int]
    seeds: list[int]
    #: the reference's iterations
    iterations: int
    #: cap every resolution stage at this many px (0: none; smoke runs)
    max_size: int = 0
    #: timed steps per arm and size
    calibration_steps: int = 4
    #: the methods at the reference's wall-clock only (no equal-iterations arms)
    equal_time_only: bool = False
    #: calibrate, plan, stop
    plan_only: bool = False


def write_json(path: str | Path | None, result: dict[str, Any]) -> None:
    """``result`` as indented JSON at ``path`` (nothing without a path)."""
    if path:
        Path(path).write_text(json.dumps(result, indent=2))


def run_comparison(
    c: Comparison,
    arms: dict[str, Arm],
    generator: LoadedModel,
    plugins,
    verifiers: dict[str, LoadedModel],
    *,
    json_path: str | None = None,
    grids: Path | None = None,
    tag: str = "",
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run ``c`` on ``arms`` (:func:`~dsv.bench.imagenet_arms.plan_arms`); the result JSON (or, with
    ``plan_only``, the plan's). The JSON goes to ``json_path`` after every arm (a killed run keeps the
    arms it finished), the grids to ``grids``."""
    sections = {name: arm.section for name, arm in arms.items()}
    reference = "full" if c.ablation else "dsv"
    tables = {n: scaled(a.path, c.iterations, c.classes, a.overrides, c.max_size) for n, a in arms.items()}
    say(f"calibrating step times ({c.calibration_steps} steps per size) ...")
    at = calibrate(tables, generator, plugins, c.calibration_steps)
    cost = {name: per_iteration_seconds(tables[name], at[name]) for name in tables}
    budget = budgets(cost, c.iterations, reference, sections)
    say("iterations at the reference's wall-clock: " + ", ".join(f"{n} {budget[n]}" for n in tables))
    twice = [n for n in tables if sections[n] == "methods" and n != "dsv" and not c.equal_time_only]
    if c.plan_only:
        planned, lines = plan(at, cost, budget, twice, iterations=c.iterations, seeds=len(c.seeds))
        for line in lines:
            say(line)
        return planned
    photo_measures = natural_measures(photos(final_size(tables[reference])), verifiers["lite1"])
    results: dict[str, dict] = {}
    equal_iterations: dict[str, dict] = {}

    def shaped(partial: bool) -> dict[str, Any]:
        out = comparison_json(
            results, sections, equal_iterations, ablation=c.ablation, reference=reference, partial=partial
        )
        out["photos"] = photo_measures
        return {
            **out,
            "reference": reference,
            "iterations": c.iterations,
            "classes": c.classes,
            "seeds": c.seeds,
            "verifiers": VERIFIERS,
            "threads": torch.get_num_threads(),
            "step_seconds_by_size": sizes_json(at),
        }

    for name, s in tables.items():
        if name in twice:
            step = at[name][final_size(s)]
            equal_iterations[name] = score_arm(name, s, c.seeds, generator, plugins, verifiers, step, say)
            write_json(json_path, shaped(True))
        if budget[name] != s.iterations:
            s = scaled(arms[name].path, budget[name], c.classes, arms[name].overrides, c.max_size)
        results[name] = score_arm(name, s, c.seeds, generator, plugins, verifiers, at[name][final_size(s)], say)
        write_json(json_path, shaped(True))
    if "dsv" in results and not c.ablation:
        equal_iterations = {"dsv": results["dsv"], **equal_iterations}
    if grids is not None:
        grids.mkdir(parents=True, exist_ok=True)
        for name, result in results.items():
            save_grid(name, result, len(c.classes), grids / f"{tag}{name}.png")
    return shaped(False)
