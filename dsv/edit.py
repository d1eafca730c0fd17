"""The ``edit`` stage: start from a user's image, synthesize towards another class.

Every edit of the [edit] table starts a candidate from its image file (the ``image``
initializer) and targets its class; they run together as one sub-run of the store
(:mod:`dsv.subrun`) with the pipeline's [synthesis] terms at one working resolution (no
schedule: the image's detail is the starting point). The export shows each image before and
after, side by side, titled with the class the model gives it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import numpy as np
import torch

from dsv import config as cfg
from dsv.builtin.initializers import InitContext
from dsv.export import save_rows, to_images
from dsv.subrun import check_class, run_subsynthesis

if TYPE_CHECKING:
    from dsv.pipeline import Pipeline
    from dsv.store import RunStore


def edit_synthesis(pipeline: "Pipeline") -> cfg.SynthesisConfig:
    """The [synthesis] table of the edits: their targets, their images as the start, one resolution."""
    e = pipeline.config.edit
    s = pipeline.config.synthesis
    size = e.size or pipeline.loaded_model.spec.size
    return attrs.evolve(
        s, classes=[], candidates_per_class=1, targets=[x.target for x in e.edits],
        init=cfg.PluginSpec(name="image", options={"paths": [x.image for x in e.edits]}),
        resolutions=[[0, size]], iterations=e.iterations or s.iterations, lr_x=e.lr_x or s.lr_x,
    )


@torch.no_grad()
def _predicted(pipeline: "Pipeline", x) -> list[int]:
    module = pipeline.loaded_model.module
    return module(torch.as_tensor(x).to(pipeline.device)).argmax(1).tolist()


def edit(pipeline: "Pipeline", store: "RunStore") -> list[Path]:
    e = pipeline.config.edit
    classes = pipeline.loaded_model.spec.classes
    for i, x in enumerate(e.edits):
        check_class(pipeline, f"edit.edits[{i}].target", x.target)
    synthesis = edit_synthesis(pipeline)
    sub = run_subsynthesis(pipeline, store, "edit", synthesis, source=f"{pipeline.source} [edit]")
    after = sub.candidates()["x"]
    before = _start_images(pipeline, synthesis, after.shape)
    mean, std = sub.meta["mean"], sub.meta["std"]
    predicted = list(zip(_predicted(pipeline, before), _predicted(pipeline, after)))
    rows = [list(pair) for pair in zip(to_images(before, mean, std), to_images(after, mean, std))]
    titles = [[f"{Path(x.image).name}\nmodel: {classes[pb]}", f"target {classes[x.target]}\nmodel: {classes[pa]}"]
              for x, (pb, pa) in zip(e.edits, predicted)]
    store.put_result("edits", [{"image": x.image, "target": classes[x.target], "before": classes[pb],
                                "after": classes[pa]} for x, (pb, pa) in zip(e.edits, predicted)])
    return [save_rows(rows, titles, store.export_path(e.png), title="edits: before | after")]


def _start_images(pipeline: "Pipeline", synthesis: cfg.SynthesisConfig, shape) -> np.ndarray:
    """The candidates as the sub-run started them (its checkpoints keep only the latest state)."""
    init = cfg.build(synthesis.init, pipeline.plugins.registry("initializers"), source=pipeline.source,
                     path="edit.edits")
    context = InitContext(torch.Generator(), pipeline.loaded_model.spec)
    return init(shape, torch.zeros(shape[0], dtype=torch.long), context).numpy()
