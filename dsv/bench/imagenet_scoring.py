"""Scoring an arm of ``benchmarks/imagenet_gen.py`` during its run: synthesize over the seeds, let
both verifiers name the images (over all seeds, and per seed with its spread), measure how natural
they are; then the result JSON of the run so far, and each arm's grid."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsv.bench.imagenet_arms import VERIFIERS
from dsv.bench.imagenet_timing import make_run
from dsv.config import SynthesisConfig
from dsv.evaluation.naturalness import natural_measures
from dsv.evaluation.verifier import score, verifier_probabilities
from dsv.plugins import LoadedModel
from dsv.store.export import save_rows, to_images
from dsv.synthesis.engine import build_engine
from dsv.synthesis.execution import detach_terms


def synthesize(
    s: SynthesisConfig, generator: LoadedModel, plugins, seed: int, source: str
) -> tuple[np.ndarray, np.ndarray, float, float | None]:
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


def verified(
    probs: torch.Tensor, targets: np.ndarray, seed_of: np.ndarray, classes: list[str], model: str
) -> dict[str, Any]:
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


def score_arm(
    name: str,
    s: SynthesisConfig,
    seeds: list[int],
    generator: LoadedModel,
    plugins,
    verifiers: dict[str, LoadedModel],
    step_seconds: float,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """One arm: ``s`` synthesized once per seed, named by each verifier, its naturalness measured
    (inside ``verifiers["lite1"]``). Keys starting ``_`` (the images and their titles) are for the
    grid, not the JSON."""
    xs, targets, seed_of, seconds, relative = [], [], [], 0.0, []
    for seed in seeds:
        x, t, sec, rel = synthesize(s, generator, plugins, seed, name)
        if rel is not None:
            relative.append(rel)
        xs.append(x)
        targets.append(t)
        seed_of += [seed] * len(x)
        seconds += sec
        say(f"  {name}: seed {seed}, {s.iterations} iterations, {sec:.0f} s")
    x, t = np.concatenate(xs), np.concatenate(targets)
    spec = generator.spec
    result: dict[str, Any] = {"seconds": seconds, "step_seconds": step_seconds, "iterations": s.iterations}
    if relative:  # how much of the covered parameters the candidates explain (1.0: nothing), mean over seeds
        result["relative_stationarity"] = statistics.mean(relative)
    top: list[int] = []
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


def for_json(result: dict[str, Any]) -> dict[str, Any]:
    """An arm's result without its images and titles."""
    return {k: v for k, v in result.items() if not k.startswith("_")}


def comparison_json(
    results: dict[str, dict],
    sections: dict[str, str],
    equal_iterations: dict[str, dict],
    *,
    ablation: bool,
    reference: str,
    partial: bool,
) -> dict[str, Any]:
    """The arms of a run by section: in an ablation ``ablation`` and ``methods`` (whose ``dsv`` is
    the full arm), else ``methods``, ``variants`` and ``equal_iterations``; ``partial`` until the
    run has finished. The caller adds the run's own keys (photographs, classes, seeds, ...)."""
    out: dict[str, Any] = {"partial": True} if partial else {}
    by_section = lambda section: {n: for_json(r) for n, r in results.items() if sections[n] == section}  # noqa: E731
    if ablation:
        out["ablation"] = by_section("ablation")
        out["methods"] = {"dsv": for_json(results[reference])} if reference in results else {}
        out["methods"].update(by_section("methods"))
    else:
        out["methods"] = by_section("methods")
        out["variants"] = by_section("variants")
        out["equal_iterations"] = {n: for_json(r) for n, r in equal_iterations.items()}
    return out


def save_grid(name: str, result: dict[str, Any], per_row: int, path: Path) -> Path:
    """An arm's images as a grid, ``per_row`` to a row (one per class), titled with the figures."""
    images, titles = result["_images"], result["_titles"]
    rows = [list(images[i : i + per_row]) for i in range(0, len(images), per_row)]
    names = [titles[i : i + per_row] for i in range(0, len(titles), per_row)]
    title = (
        f"{name}: {result['iterations']} iterations, top-1 Lite1 {result['lite1']['top1']:.2f}, "
        f"Lite2 {result['lite2']['top1']:.2f}"
    )
    return save_rows(rows, names, path, title=title)
