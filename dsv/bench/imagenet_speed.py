"""``benchmarks/imagenet_gen.py --speed``: the time of one synthesis step at 224 px for dsv,
DeepInversion and variants (without bn_stats, one forward, channels_last, bf16 autocast,
torch.compile), the steps of all variants interleaved so that they share the machine's state."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dsv import config as cfg
from dsv.bench.imagenet_timing import TimedRun, make_run, scaled, step_times
from dsv.pipeline import load_pipeline
from dsv.plugins import LoadedModel
from dsv.synthesis.execution import detach_terms

#: DeepInversion's augmentations in place of dsv's
JITTER = ['synthesis.augmentations=[{ name = "jitter", pixels = 30 }, { name = "flip", p = 0.5 }]']


def one_forward(path: Path) -> list[str]:
    """Overrides of a pipeline with every loss on the augmented copy only: one forward per step."""
    loaded = load_pipeline(path).raw["synthesis"]
    losses = [{**loss, "augmented": True, "clean": False} for loss in loaded["losses"]]
    priors = [{**p, "augmented": True} if p["name"] == "bn_stats" else p for p in loaded["priors"]]
    return [f"synthesis.losses={cfg.toml_inline(losses)}", f"synthesis.priors={cfg.toml_inline(priors)}"]


def without_bn(path: Path) -> list[str]:
    """Overrides of a pipeline without its bn_stats prior."""
    priors = [p for p in load_pipeline(path).raw["synthesis"]["priors"] if p["name"] != "bn_stats"]
    return [f"synthesis.priors={cfg.toml_inline(priors)}"]


def variants(methods: dict[str, Path], compile: bool = False) -> dict[str, tuple[Path, list[str], dict[str, bool]]]:
    """The variants timed, by name: (pipeline file, its overrides, how the run is changed:
    ``channels_last``, ``bf16``, ``compile``)."""
    dsv, di = methods["dsv"], methods["deepinversion"]
    out: dict[str, tuple[Path, list[str], dict[str, bool]]] = {
        "deepinversion": (di, [], {}),
        "dsv": (dsv, [], {}),
        "dsv without bn_stats": (dsv, without_bn(dsv), {}),
        "dsv_paper": (methods["dsv_paper"], [], {}),
        "dsv channels_last (model and candidates)": (dsv, [], {"channels_last": True}),
        "dsv channels_last (model only)": (dsv, ["synthesis.channels_last=true"], {}),
        "deepinversion channels_last (model only)": (di, ["synthesis.channels_last=true"], {}),
        "dsv bf16 autocast": (dsv, [], {"bf16": True}),
        "dsv one forward (augmented only)": (dsv, one_forward(dsv), {}),
        "dsv one forward + jitter/flip": (dsv, one_forward(dsv) + JITTER, {}),
    }
    if compile:
        out["deepinversion torch.compile"] = (di, [], {"compile": True})
        out["dsv one forward + jitter/flip, torch.compile"] = (dsv, one_forward(dsv) + JITTER, {"compile": True})
    return out


def speed(
    methods: dict[str, Path],
    generator: LoadedModel,
    plugins,
    classes: list[int],
    steps: int,
    compile: bool = False,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Median step seconds at 224 px of every variant, interleaved, with its ratio to
    DeepInversion's; ``first_step_seconds`` where torch.compile ran; dsv's bn_stats overhead."""
    runs: dict[str, TimedRun] = {}
    compile_seconds = {}
    for name, (path, overrides, how) in variants(methods, compile).items():
        s = scaled(path, 600, classes, overrides)
        s.resolutions = [[1, 224]]
        run = make_run(s, generator, plugins, 0, name)
        wrap: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
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
                say(f"{name}: torch.compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
                detach_terms(run.losses + run.priors)
                continue
            compile_seconds[name] = time.perf_counter() - start
        runs[name] = (run, wrap)
    times = step_times(runs, steps)
    for run, _ in runs.values():
        detach_terms(run.losses + run.priors)
    return {"speed": ratios(times, compile_seconds), "threads": torch.get_num_threads(), "candidates": len(classes)}


def ratios(times: dict[str, list[float]], compile_seconds: dict[str, float]) -> dict[str, dict[str, float]]:
    """Each variant's median step seconds and its ratio to ``deepinversion``'s; dsv's row also
    carries the share of its step that ``dsv without bn_stats`` saves."""
    base = statistics.median(times["deepinversion"])
    rows: dict[str, dict[str, float]] = {}
    for name, t in times.items():
        median = statistics.median(t)
        rows[name] = {"step_seconds": median, "ratio_to_deepinversion": median / base}
        if name in compile_seconds:
            rows[name]["first_step_seconds"] = compile_seconds[name]
    rows["dsv"]["bn_stats_overhead"] = 1 - rows["dsv without bn_stats"]["step_seconds"] / rows["dsv"]["step_seconds"]
    return rows
