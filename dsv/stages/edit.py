"""The ``edit`` stage: start from a user's image, synthesize towards another class.

Every edit of the [edit] table starts a candidate from its image file (the ``image``
initializer) and targets its class; they run together as one sub-run of the store
(:mod:`dsv.pipeline.subrun`) with the pipeline's [synthesis] terms at one working resolution (no
schedule: the image's detail is the starting point). The export shows each image before and
after, side by side, titled with the class the model gives it.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np
import torch

from dsv import config as cfg
from dsv.pipeline import Stage, StageContext
from dsv.pipeline.subrun import check_class, run_subsynthesis
from dsv.plugins import InitContext
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
    #: the strip of each image and its edit, written inside the run store
    png: str = "edits.png"


def edit_synthesis(context: StageContext) -> cfg.SynthesisConfig:
    """The [synthesis] table of the edits: their targets, their images as the start, one resolution."""
    e: EditConfig = context.table("edit")
    s = context.config.synthesis
    size = e.size or context.model.spec.size
    return attrs.evolve(
        s,
        classes=[],
        candidates_per_class=1,
        targets=[x.target for x in e.edits],
        init=cfg.PluginSpec(name="image", options={"paths": [x.image for x in e.edits]}),
        resolutions=[[0, size]],
        iterations=e.iterations or s.iterations,
        lr_x=e.lr_x or s.lr_x,
    )


@torch.no_grad()
def _predicted(context: StageContext, x: np.ndarray) -> list[int]:
    module = context.model.module
    return module(torch.as_tensor(x).to(context.device)).argmax(1).tolist()


def run(context: StageContext, store: RunStore | None) -> list[Path]:
    assert store is not None
    e: EditConfig = context.table("edit")
    classes = context.model.spec.classes
    for i, x in enumerate(e.edits):
        check_class(context, f"edit.edits[{i}].target", x.target)
    synthesis = edit_synthesis(context)
    sub = run_subsynthesis(context, store, "edit", synthesis, source=f"{context.source} [edit]")
    after = sub.candidates()["x"]
    before = _start_images(context, synthesis, after.shape)
    mean, std = sub.meta["mean"], sub.meta["std"]
    predicted = list(zip(_predicted(context, before), _predicted(context, after)))
    rows = [list(pair) for pair in zip(to_images(before, mean, std), to_images(after, mean, std))]
    titles = [
        [f"{Path(x.image).name}\nmodel: {classes[pb]}", f"target {classes[x.target]}\nmodel: {classes[pa]}"]
        for x, (pb, pa) in zip(e.edits, predicted)
    ]
    store.put_result(
        "edits",
        [
            {"image": x.image, "target": classes[x.target], "before": classes[pb], "after": classes[pa]}
            for x, (pb, pa) in zip(e.edits, predicted)
        ],
    )
    return [save_rows(rows, titles, store.export_path(e.png), title="edits: before | after")]


def _start_images(context: StageContext, synthesis: cfg.SynthesisConfig, shape: tuple[int, ...]) -> np.ndarray:
    """The candidates as the sub-run started them (its checkpoints keep only the latest state)."""
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
    if edit.lr_x < 0:
        problems.append(f"edit.lr_x: must be at least 0 (0: synthesis.lr_x), got {edit.lr_x}")
    problems += cfg.file_name_problems("edit", {"png": edit.png})
    return problems


STAGE = Stage(name="edit", run=run, order=700, table=EditConfig, needs_table=True, check=check)
