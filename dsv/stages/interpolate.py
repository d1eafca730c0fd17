"""The ``interpolate`` stage: soft labels as latents, a strip from class a to class b.

Candidate ``j`` of ``steps`` targets ``(1 - d_j) y_a + d_j y_b`` with ``d_j = j / (steps - 1)``;
the strip is synthesized with the pipeline's [synthesis] table (its priors, augmentations and
resolution schedule) in a sub-run of the store (:mod:`dsv.pipeline.subrun`) and exported as one PNG row.
With the ``noise`` initializer every candidate starts from the same noise image, so the strip
differs by its targets only.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from dsv import config as cfg
from dsv.pipeline import Stage, StageContext
from dsv.pipeline.subrun import check_class, run_subsynthesis
from dsv.store import RunStore
from dsv.store.export import save_rows, to_images


@attrs.define(kw_only=True)
class InterpolateConfig:
    """A strip from class ``from_class`` to ``to_class``: targets ``(1 - d) y_a + d y_b`` for
    ``steps`` values of ``d`` from 0 to 1."""

    #: the class at d = 0
    from_class: int
    #: the class at d = 1
    to_class: int
    #: images in the strip, both ends included
    steps: int = 5
    #: iterations of each image; 0: ``synthesis.iterations``
    iterations: int = 0
    #: the strip, written inside the run store
    png: str = "interpolation.png"


def mixture_targets(from_class: int, to_class: int, steps: int) -> list[cfg.Target]:
    """The targets of the strip, as [synthesis] targets (tables of class index = weight)."""
    out: list[cfg.Target] = []
    for j in range(steps):
        d = j / (steps - 1)
        row = {str(from_class): 1.0 - d}
        row[str(to_class)] = row.get(str(to_class), 0.0) + d  # from_class == to_class: one class
        out.append({k: v for k, v in row.items() if v > 0})
    return out


def run(context: StageContext, store: RunStore | None) -> list[Path]:
    assert store is not None
    c: InterpolateConfig = context.table("interpolate")
    classes = context.model.spec.classes
    for key in ("from_class", "to_class"):
        check_class(context, f"interpolate.{key}", getattr(c, key))
    s = context.config.synthesis
    init = s.init
    if isinstance(init, cfg.PluginSpec) and init.name == "noise":  # one start: the strip varies by its targets
        init = attrs.evolve(init, options={**init.options, "shared": True})
    synthesis = attrs.evolve(
        s,
        classes=[],
        candidates_per_class=1,
        init=init,
        targets=mixture_targets(c.from_class, c.to_class, c.steps),
        iterations=c.iterations or s.iterations,
    )
    sub = run_subsynthesis(context, store, "interpolate", synthesis, source=f"{context.source} [interpolate]")
    x = sub.candidates()["x"]
    images = list(to_images(x, sub.meta["mean"], sub.meta["std"]))
    names = (classes[c.from_class], classes[c.to_class])
    titles = [f"{1 - j / (c.steps - 1):.2f} {names[0]}\n{j / (c.steps - 1):.2f} {names[1]}" for j in range(c.steps)]
    return [save_rows([images], [titles], store.export_path(c.png), title=f"{names[0]} -> {names[1]}")]


def check(interpolate: InterpolateConfig, config: cfg.PipelineConfig) -> list[str]:
    """Range checks (class indices are checked against the model when the stage runs)."""
    problems: list[str] = []
    if interpolate.steps < 2:
        problems.append(f"interpolate.steps: must be at least 2 (both ends), got {interpolate.steps}")
    if interpolate.iterations < 0:
        problems.append(f"interpolate.iterations: must be at least 0, got {interpolate.iterations}")
    for key in ("from_class", "to_class"):
        if getattr(interpolate, key) < 0:
            problems.append(f"interpolate.{key}: a class index, got {getattr(interpolate, key)}")
    problems += cfg.file_name_problems("interpolate", {"png": interpolate.png})
    return problems


STAGE = Stage(name="interpolate", run=run, order=600, table=InterpolateConfig, needs_table=True, check=check)
