"""The ``edit`` stage: start from a user's image, synthesize towards another class.

Every edit of the [edit] table starts a candidate from its image file (the ``image``
initializer) and targets its class; they run together as one sub-run of the store
(:mod:`dsv.pipeline.subrun`) with the pipeline's [synthesis] terms at one working resolution (no
schedule: the image's detail is the starting point). The export shows each image before and
after, side by side, titled with the class the model gives it; with an [evaluate] table also
with what each verifier names the edit and its SSIM to the image (result ``edits``: per edit the
generator's and each verifier's top-1, whether it is the target and p(target), the SSIM, and
whether the edit is adversarial: the generator names the target, no verifier does).
"""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np
import torch

from dsv import config as cfg
from dsv.evaluation.latent import adversarial, edit_ssim, pixels, score_edit, ssim_map
from dsv.pipeline import Stage, StageContext
from dsv.pipeline.subrun import check_class, run_subsynthesis
from dsv.plugins import InitContext
from dsv.stages.evaluate import verifier_probabilities_of
from dsv.store import RunStore
from dsv.store.export import save_rows, to_images


@attrs.define(kw_only=True)
class EditSpec:
    #: a PNG or JPEG file to start from; read, never written
    image: str
    #: the class to edit it towards
    target: int


@attrs.define(kw_only=True)
class EditConfig:
    """Class edits of given images: start from the image, synthesize towards another class."""

    #: the edits, each ``{ image = "file.png", target = <class index> }``
    edits: list[EditSpec]
    #: iterations of each edit; 0: ``synthesis.iterations``
    iterations: int = 0
    #: working resolution; 0: the model's input size (the resolution schedule is not used)
    size: int = 0
    #: the learning rate of x; 0: ``synthesis.lr_x``
    lr_x: float = 0.0
    #: the weight of ``1 - SSIM`` between each edit and its image in the total (0: none): the edit
    #: keeps the photograph's structure while the class terms pull it towards the target
    keep: float = 0.0
    #: the image priors of the edits (a [synthesis] ``priors`` list); not given: ``synthesis.priors``
    priors: list[cfg.PluginSpec] | None = None
    #: the strip of each image and its edit, written inside the run store
    png: str = "edits.png"


def edit_synthesis(context: StageContext) -> cfg.SynthesisConfig:
    """The [synthesis] table of the edits: their targets, their images as the start, one resolution."""
    e: EditConfig = context.table("edit")
    s = context.config.synthesis
    size = e.size or context.model.spec.size
    return attrs.evolve(
        cfg.with_iterations(s, e.iterations or s.iterations),
        classes=[],
        candidates_per_class=1,
        targets=[x.target for x in e.edits],
        init=cfg.PluginSpec(name="image", options={"paths": [x.image for x in e.edits]}),
        resolutions=[[0, size]],
        lr_x=e.lr_x or s.lr_x,
        priors=s.priors if e.priors is None else list(e.priors),
    )


@attrs.define(eq=False)
class Keep:
    """A prior: ``1 - SSIM`` (:func:`dsv.evaluation.latent.ssim_map`) between the candidates and
    the images they started from, in pixels; the mean over candidates."""

    start: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    weight: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        start = self.start.to(x.device)
        if start.shape != x.shape:
            raise ValueError(f"keep: candidates {tuple(x.shape)} against start images {tuple(start.shape)}")
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        a, b = (x * std + mean).clamp(0, 1), start * std + mean
        return 1 - ssim_map(a, b).mean()


@torch.no_grad()
def _probabilities(context: StageContext, x: np.ndarray) -> torch.Tensor:
    module = context.model.module
    return module(torch.as_tensor(x).to(context.device)).softmax(1).cpu()


def run(context: StageContext, store: RunStore | None) -> list[Path]:
    assert store is not None
    e: EditConfig = context.table("edit")
    classes = context.model.spec.classes
    for i, x in enumerate(e.edits):
        check_class(context, f"edit.edits[{i}].target", x.target)
    synthesis = edit_synthesis(context)
    spec = context.model.spec
    size = synthesis.resolutions[0][1]
    shape = (len(e.edits), spec.channels, size, size)
    before = start_images(context, shape)
    priors, describe = [], None
    if e.keep:
        view = lambda v: torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1)  # noqa: E731
        start = torch.from_numpy(before)
        priors, describe = [Keep(start, view(spec.mean), view(spec.std), e.keep)], {"keep": e.keep}
    sub = run_subsynthesis(
        context, store, "edit", synthesis, source=f"{context.source} [edit]", priors=priors, describe=describe
    )
    after = sub.candidates()["x"]
    mean, std = sub.meta["mean"], sub.meta["std"]
    model_before, model_after = _probabilities(context, before), _probabilities(context, after)
    verifiers = verifier_probabilities_of(context, after, mean, std)
    before_px, after_px = pixels(before, mean, std), pixels(after, mean, std)
    results, titles = [], []
    for i, x in enumerate(e.edits):
        scored = {name: score_edit(p[i], x.target, classes) for name, p in verifiers.items()}
        generator = score_edit(model_after[i], x.target, classes)
        results.append(
            {
                "image": x.image,
                "target": classes[x.target],
                "before": classes[int(model_before[i].argmax())],
                "after": generator["top1"],
                "generator": generator,
                "verifiers": scored,
                "ssim": round(edit_ssim(before_px[i], after_px[i]), 4),
                "adversarial": adversarial(generator["named"], [v["named"] for v in scored.values()]),
            }
        )
        marks = "".join(f"\n{name}: {v['top1']} {'✓' if v['named'] else '✗'}" for name, v in scored.items())
        titles.append(
            [
                f"{Path(x.image).name}\nmodel: {results[-1]['before']}",
                f"target {classes[x.target]}\nmodel: {generator['top1']}{marks}\nSSIM {results[-1]['ssim']:.2f}",
            ]
        )
    store.put_result("edits", results)
    rows = [list(pair) for pair in zip(to_images(before, mean, std), to_images(after, mean, std))]
    return [save_rows(rows, titles, store.export_path(e.png), title="edits: before | after")]


def start_images(context: StageContext, shape: tuple[int, ...]) -> np.ndarray:
    """The candidates as the edit's sub-run started them (its checkpoints keep only the latest state)."""
    synthesis = edit_synthesis(context)
    init = cfg.build(synthesis.init, context.plugins.registry("initializers"), source=context.source, path="edit.edits")
    start = InitContext(torch.Generator(), context.model.spec)
    return init(shape, torch.zeros(shape[0], dtype=torch.long), start).numpy()


def check(edit: EditConfig, config: cfg.PipelineConfig) -> list[str]:
    """Range checks (class indices are checked against the model when the stage runs)."""
    problems: list[str] = []
    if not edit.edits:
        problems.append("edit.edits: give at least one { image = ..., target = ... }")
    for i, e in enumerate(edit.edits):
        if e.target < 0:
            problems.append(f"edit.edits[{i}].target: a class index, got {e.target}")
        if not e.image:
            problems.append(f"edit.edits[{i}].image: a PNG or JPEG file")
    if edit.iterations < 0:
        problems.append(f"edit.iterations: must be at least 0, got {edit.iterations}")
    if edit.size != 0 and edit.size < 8:
        problems.append(f"edit.size: 0 (the model's size) or at least 8, got {edit.size}")
    if edit.keep < 0:
        problems.append(f"edit.keep: must be at least 0, got {edit.keep}")
    if edit.lr_x < 0:
        problems.append(f"edit.lr_x: must be at least 0 (0: synthesis.lr_x), got {edit.lr_x}")
    problems += cfg.file_name_problems("edit", {"png": edit.png})
    return problems


STAGE = Stage(name="edit", run=run, order=700, table=EditConfig, needs_table=True, check=check)
