"""The ``interpolate`` stage: soft labels as latents, a strip from class a to class b.

Candidate ``j`` of ``steps`` targets ``(1 - d_j) y_a + d_j y_b`` with ``d_j = j / (steps - 1)``;
the strip is synthesized with the pipeline's [synthesis] table (its priors, augmentations and
resolution schedule) in a sub-run of the store (:mod:`dsv.subrun`) and exported as one PNG row.
With the ``noise`` initializer every candidate starts from the same noise image, so the strip
differs by its targets only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from dsv import config as cfg
from dsv.export import save_rows, to_images
from dsv.subrun import check_class, run_subsynthesis

if TYPE_CHECKING:
    from dsv.pipeline import Pipeline
    from dsv.store import RunStore


def mixture_targets(from_class: int, to_class: int, steps: int) -> list[dict[str, float]]:
    """The targets of the strip, as [synthesis] targets (tables of class index = weight)."""
    out = []
    for j in range(steps):
        d = j / (steps - 1)
        row = {str(from_class): 1.0 - d}
        row[str(to_class)] = row.get(str(to_class), 0.0) + d  # from_class == to_class: one class
        out.append({k: v for k, v in row.items() if v > 0})
    return out


def interpolate(pipeline: "Pipeline", store: "RunStore") -> list[Path]:
    c = pipeline.config.interpolate
    classes = pipeline.loaded_model.spec.classes
    for key in ("from_class", "to_class"):
        check_class(pipeline, f"interpolate.{key}", getattr(c, key))
    s = pipeline.config.synthesis
    init = s.init
    if isinstance(init, cfg.PluginSpec) and init.name == "noise":  # one start: the strip varies by its targets
        init = attrs.evolve(init, options={**init.options, "shared": True})
    synthesis = attrs.evolve(s, classes=[], candidates_per_class=1, init=init,
                             targets=mixture_targets(c.from_class, c.to_class, c.steps),
                             iterations=c.iterations or s.iterations)
    sub = run_subsynthesis(pipeline, store, "interpolate", synthesis, source=f"{pipeline.source} [interpolate]")
    x = sub.candidates()["x"]
    images = list(to_images(x, sub.meta["mean"], sub.meta["std"]))
    names = (classes[c.from_class], classes[c.to_class])
    titles = [f"{1 - j / (c.steps - 1):.2f} {names[0]}\n{j / (c.steps - 1):.2f} {names[1]}" for j in range(c.steps)]
    return [save_rows([images], [titles], store.export_path(c.png), title=f"{names[0]} -> {names[1]}")]
