"""The ``interpolate`` stage: soft labels as latents, strips from class a to class b.

Image ``j`` of a strip of ``steps`` targets ``(1 - d_j) y_a + d_j y_b`` with ``d_j = j / (steps - 1)``.
Two ways to start it (``start``), both with the pipeline's [synthesis] table (its priors, the
augmented copy, the resolution schedule) in sub-runs of the store (:mod:`dsv.pipeline.subrun`):

- ``blend`` (the default): the two ends are synthesized first (sub-run ``interpolate``, the full
  schedule); each middle image then starts from the pixel blend ``(1 - d) x_a + d x_b`` of its
  strip's ends and is refined towards its soft target for ``refine_iterations`` at the model's
  size of the ends (sub-run ``interpolate_blend``; 0: the blend as it is). The strip is a path between two
  images the model names, so what independent classifiers see moves with ``d``.
- ``noise``: every image of a strip is synthesized on its own from one shared noise image, so the
  strip differs by its targets only (every image costs the full schedule).

All strips go to one PNG, a row each. With an [evaluate] table each of its verifiers scores them
(:func:`dsv.evaluation.latent.score_strip`: the ends' top-1, p(to_class) per step and its rank
correlation with the step, both classes in the top-5 in the middle): result ``interpolation``,
and p(to_class) under each verifier in the titles.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import attrs
import numpy as np
import torch

from dsv import config as cfg
from dsv.evaluation.latent import score_strip
from dsv.pipeline import Stage, StageContext
from dsv.pipeline.subrun import check_class, run_subsynthesis
from dsv.stages.evaluate import verifier_probabilities_of
from dsv.store import RunStore
from dsv.store.export import save_rows, to_images


@attrs.define(kw_only=True)
class StripSpec:
    #: the class at d = 0
    from_class: int
    #: the class at d = 1
    to_class: int


@attrs.define(kw_only=True)
class InterpolateConfig:
    """Strips from one class to another: targets ``(1 - d) y_a + d y_b`` for ``steps`` values of
    ``d`` from 0 to 1. One strip: ``from_class`` and ``to_class``; several: ``strips``."""

    #: the class at d = 0 of the one strip (or give ``strips``)
    from_class: int | None = None
    #: the class at d = 1 of the one strip
    to_class: int | None = None
    #: several strips, each ``{ from_class = a, to_class = b }``
    strips: list[StripSpec] = attrs.field(factory=list)
    #: images in a strip, both ends included
    steps: int = 5
    #: ``blend``: ends first, the middle from their pixel blend; ``noise``: every image from one noise image
    start: Literal["blend", "noise"] = "blend"
    #: iterations of the ends (``blend``) or of every image (``noise``), the schedule scaled to them;
    #: 0: ``synthesis.iterations``
    iterations: int = 0
    #: ``blend``: iterations refining each middle image at the ends' size (0: the pixel blend as it is)
    refine_iterations: int = 60
    #: ``blend``: the learning rate of x while refining; 0: ``synthesis.lr_x``
    refine_lr_x: float = 0.0
    #: the strips, written inside the run store
    png: str = "interpolation.png"

    def pairs(self) -> list[tuple[int, int]]:
        """(from_class, to_class) of every strip, the one-strip keys first."""
        return [(a, b) for _, a, b in self.keyed()]

    def keyed(self) -> list[tuple[str, int, int]]:
        """(key prefix, from_class, to_class) of every strip: ``interpolate.`` or ``interpolate.strips[i].``."""
        one = [("interpolate.", self.from_class, self.to_class)]
        many = [(f"interpolate.strips[{i}].", s.from_class, s.to_class) for i, s in enumerate(self.strips)]
        return [(k, a, b) for k, a, b in one + many if a is not None and b is not None]


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
    pairs = c.pairs()
    for prefix, a, b in c.keyed():
        check_class(context, f"{prefix}from_class", a)
        check_class(context, f"{prefix}to_class", b)
    strips, meta = (blend_strips if c.start == "blend" else noise_strips)(context, store, c, pairs)
    classes = context.model.spec.classes
    images = [list(to_images(x, meta["mean"], meta["std"])) for x in strips]
    ds = [j / (c.steps - 1) for j in range(c.steps)]
    titles = [[f"{1 - d:.2f} {classes[a]}\n{d:.2f} {classes[b]}" for d in ds] for a, b in pairs]
    probs = verifier_probabilities_of(context, np.concatenate(strips), meta["mean"], meta["std"])
    scored = {
        name: [score_strip(p[i * c.steps : (i + 1) * c.steps], a, b, classes) for i, (a, b) in enumerate(pairs)]
        for name, p in probs.items()
    }
    for i, row in enumerate(titles):  # p(to) under each verifier, in the order of [evaluate]
        for j in range(c.steps):
            if scored:
                row[j] += "\np(to) " + " / ".join(f"{v[i]['p_to'][j]:.2f}" for v in scored.values())
    store.put_result(
        "interpolation",
        {"strips": [[classes[a], classes[b]] for a, b in pairs], "d": ds, "start": c.start, "verifiers": scored},
    )
    names = "; ".join(f"{classes[a]} -> {classes[b]}" for a, b in pairs)
    title = names if len(pairs) == 1 else "interpolation"
    if scored:
        title += f"  (p(to) under {' / '.join(scored)})"
    return [save_rows(images, titles, store.export_path(c.png), title=title)]


def strip_images(context: StageContext, store: RunStore) -> list[np.ndarray]:
    """The strips of a run that ran the stage, (steps, C, H, W) each in model space, in the
    order of the [interpolate] table (for benchmarks and tests)."""
    c: InterpolateConfig = context.table("interpolate")
    return (blend_strips if c.start == "blend" else noise_strips)(context, store, c, c.pairs())[0]


def noise_strips(context: StageContext, store: RunStore, c: InterpolateConfig, pairs) -> tuple[list[np.ndarray], dict]:
    s = context.config.synthesis
    init = s.init
    if isinstance(init, cfg.PluginSpec) and init.name == "noise":  # one start: the strip varies by its targets
        init = attrs.evolve(init, options={**init.options, "shared": True})
    targets = [t for a, b in pairs for t in mixture_targets(a, b, c.steps)]
    synthesis = attrs.evolve(
        cfg.with_iterations(s, c.iterations or s.iterations),
        classes=[],
        candidates_per_class=1,
        init=init,
        targets=targets,
    )
    sub = run_subsynthesis(context, store, "interpolate", synthesis, source=f"{context.source} [interpolate]")
    x = sub.candidates()["x"]
    return [x[i * c.steps : (i + 1) * c.steps] for i in range(len(pairs))], sub.meta


@attrs.define
class BlendStart:
    """An initializer returning given start images (model space), resized to the run's shape."""

    x: torch.Tensor

    def __call__(self, shape, labels: torch.Tensor, context) -> torch.Tensor:
        x = self.x
        if tuple(x.shape[-2:]) != tuple(shape[-2:]):
            x = torch.nn.functional.interpolate(x, size=tuple(shape[-2:]), mode="bilinear", antialias=True)
        return x.clone()


def blend_strips(context: StageContext, store: RunStore, c: InterpolateConfig, pairs) -> tuple[list[np.ndarray], dict]:
    s = context.config.synthesis
    ends = list(dict.fromkeys(k for pair in pairs for k in pair))  # each end class once
    synthesis = attrs.evolve(
        cfg.with_iterations(s, c.iterations or s.iterations), classes=[], candidates_per_class=1, targets=ends
    )
    sub = run_subsynthesis(context, store, "interpolate", synthesis, source=f"{context.source} [interpolate]")
    x = sub.candidates()["x"]
    x_end = {k: x[i] for i, k in enumerate(ends)}
    ds = [j / (c.steps - 1) for j in range(1, c.steps - 1)]
    middle = [np.stack([(1 - d) * x_end[a] + d * x_end[b] for d in ds]) for a, b in pairs]
    if ds and c.refine_iterations:
        size = int(x_end[pairs[0][0]].shape[-1])  # where the ends' schedule ended
        blend = attrs.evolve(
            cfg.with_iterations(s, c.refine_iterations),
            classes=[],
            candidates_per_class=1,
            targets=[t for a, b in pairs for t in mixture_targets(a, b, c.steps)[1:-1]],
            # the hash of the sub-run names its start: the ends' run and the blend weights
            init=cfg.PluginSpec(name="blend", options={"ends": sub.meta["config_hash"], "d": ds}),
            resolutions=[[0, size]],
            lr_x=c.refine_lr_x or s.lr_x,
        )
        start = BlendStart(torch.from_numpy(np.concatenate(middle)))
        refined = run_subsynthesis(
            context, store, "interpolate_blend", blend, source=f"{context.source} [interpolate]", init=start
        ).candidates()["x"]
        middle = [refined[i * len(ds) : (i + 1) * len(ds)] for i in range(len(pairs))]
    strips = [np.concatenate([x_end[a][None], m, x_end[b][None]]) for (a, b), m in zip(pairs, middle)]
    return strips, sub.meta


def check(interpolate: InterpolateConfig, config: cfg.PipelineConfig) -> list[str]:
    """Range checks (class indices are checked against the model when the stage runs)."""
    c = interpolate
    problems: list[str] = []
    if (c.from_class is None) != (c.to_class is None):
        problems.append("interpolate: give both from_class and to_class (one strip), or strips")
    if not c.pairs():
        problems.append(
            "interpolate: no strip: give from_class and to_class, or strips = [{ from_class = ..., to_class = ... }]"
        )
    if c.steps < 2:
        problems.append(f"interpolate.steps: must be at least 2 (both ends), got {c.steps}")
    for key in ("iterations", "refine_iterations"):
        if getattr(c, key) < 0:
            problems.append(f"interpolate.{key}: must be at least 0, got {getattr(c, key)}")
    if c.refine_lr_x < 0:
        problems.append(f"interpolate.refine_lr_x: must be at least 0 (0: synthesis.lr_x), got {c.refine_lr_x}")
    for prefix, a, b in c.keyed():
        problems += [
            f"{prefix}{key}: a class index, got {v}" for key, v in (("from_class", a), ("to_class", b)) if v < 0
        ]
    problems += cfg.file_name_problems("interpolate", {"png": c.png})
    return problems


STAGE = Stage(name="interpolate", run=run, order=600, table=InterpolateConfig, needs_table=True, check=check)
