"""Equal compute for ``benchmarks/imagenet_gen.py``: each arm's [synthesis] table with its schedule
scaled to an iteration count, step times measured interleaved (every arm shares the machine's
state), and the iterations each arm gets to run at the reference's wall-clock."""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dsv.config import SynthesisConfig, with_iterations
from dsv.pipeline import load_pipeline
from dsv.plugins import LoadedModel
from dsv.synthesis.build import build_run
from dsv.synthesis.execution import detach_terms

#: a run and the context each of its steps is taken in (autocast, or nothing)
TimedRun = tuple[Any, Callable[[], contextlib.AbstractContextManager]]


def scaled(path: Path, iterations: int, classes: list[int], extra: list[str], max_size: int = 0) -> SynthesisConfig:
    """The [synthesis] table of a pipeline file, its schedule scaled to ``iterations`` steps (and
    each resolution stage capped at ``max_size`` px when given: smoke runs), one candidate per class."""
    s = with_iterations(load_pipeline(path, overrides=extra).config.synthesis, iterations)
    if max_size:
        s.resolutions = [[start, min(size, max_size)] for start, size in s.resolutions] or [[1, max_size]]
    s.classes, s.targets, s.candidates_per_class = list(classes), [], 1
    return s


def final_size(s: SynthesisConfig) -> int:
    """The side length of the last resolution stage (224 without a schedule)."""
    return s.resolutions[-1][1] if s.resolutions else 224


def make_run(s: SynthesisConfig, generator: LoadedModel, plugins, seed: int, source: str):
    """A CPU run of ``s`` on a copy of the generator (every arm starts from the same weights)."""
    module = copy.deepcopy(generator.module)
    return build_run(
        module, generator.spec, s, plugins=plugins, device=torch.device("cpu"), seed=seed, source=source, progress=False
    )


def per_iteration_seconds(s: SynthesisConfig, seconds_at: dict[int, float]) -> float:
    """Mean seconds per iteration of a schedule, from the step time at each of its sizes."""
    total = 0.0
    for it in range(1, s.iterations + 1):
        size = next((sz for start, sz in reversed(s.resolutions) if it >= start), final_size(s))
        total += seconds_at[size]
    return total / s.iterations


def step_times(runs: dict[str, TimedRun], steps: int) -> dict[str, list[float]]:
    """Seconds of ``steps`` steps of each run, interleaved (one step of each in turn); the first
    step of each is a warm-up, not counted."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(1, steps + 2):
        for name, (run, wrap) in runs.items():
            start = time.perf_counter()
            with wrap():
                run.step(i)
            if i > 1:
                times[name].append(time.perf_counter() - start)
    return times


def calibrate(
    tables: dict[str, SynthesisConfig], generator: LoadedModel, plugins, steps: int
) -> dict[str, dict[int, float]]:
    """Median step seconds of each arm at each size of its schedule, the steps of every arm and
    size interleaved (one step of each in turn), so that all of them share the machine's state."""
    runs: dict[str, TimedRun] = {}
    keys = []
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


def budgets(cost: dict[str, float], iterations: int, reference: str, sections: dict[str, str]) -> dict[str, int]:
    """Iterations of each arm: the reference's wall-clock at each arm's ``cost`` (seconds per
    iteration), or the reference's iteration count for the reference itself and ``variants``."""
    return {
        name: iterations
        if name == reference or sections[name] == "variants"
        else max(1, round(iterations * cost[reference] / cost[name]))
        for name in cost
    }


def sizes_json(at: dict[str, dict[int, float]]) -> dict[str, dict[str, float]]:
    """Step seconds by arm and size, the sizes as JSON keys."""
    return {name: {str(size): sec for size, sec in by_size.items()} for name, by_size in at.items()}


def plan(
    at: dict[str, dict[int, float]],
    cost: dict[str, float],
    budget: dict[str, int],
    equal_iterations: list[str],
    *,
    iterations: int,
    seeds: int,
) -> tuple[dict[str, Any], list[str]]:
    """How long a run would take (its JSON, and its lines to print): each arm's iterations at the
    reference's wall-clock over ``seeds`` seeds, plus the equal-iterations runs of the arms named."""
    planned = {n: budget[n] * cost[n] * seeds for n in budget}
    planned_extra = sum(iterations * cost[n] * seeds for n in equal_iterations)
    lines = []
    for n in budget:
        steps = ", ".join(f"{at[n][size]:.2f} s @{size}" for size in sorted(at[n]))
        lines.append(f"  {n:<20} {budget[n]:>5} iterations x {seeds} seeds: {planned[n]:>7.0f} s  (steps {steps})")
    if equal_iterations:
        lines.append(f"  equal-iterations runs of {', '.join(equal_iterations)}: {planned_extra:.0f} s")
    total = sum(planned.values()) + planned_extra
    lines.append(f"synthesis in all: {total:.0f} s ({total / 3600:.2f} h), calibration not counted")
    result = {
        "plan_seconds": planned,
        "plan_total_seconds": total,
        "iterations": budget,
        "step_seconds_by_size": sizes_json(at),
    }
    return result, lines
