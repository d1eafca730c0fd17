"""The ``reconstruction`` stage: are the synthesized candidates the model's training images?

After a synthesis, every training image of the ``[data]`` set (its train split: the ``per_class``
and ``classes`` of ``[data]``'s options already choose it) is matched to its nearest candidate by
normalised cross-correlation and the pair scored by SSIM, by the protocol of Haim et al. 2022
(:mod:`dsv.evaluation.reconstruction`). The result ``reconstruction`` holds the counts above SSIM
0.4 and 0.6, the mean SSIM of the 10 best, and the per-sample lists; the figure shows the best
pairs and, with ``premise = true``, SSIM against each sample's normalised margin and lambda
(:func:`dsv.kkt.premise.measure_premise`).
"""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np
import torch

from dsv import config as cfg
from dsv.errors import DsvError
from dsv.evaluation.reconstruction import evaluate_reconstruction, plot_reconstruction
from dsv.kkt.premise import MARGIN_FORMS, measure_premise
from dsv.pipeline import Stage, StageContext
from dsv.plugins import normalize
from dsv.store import RunStore

CANDIDATE_SETS = ("all", "alive")


@attrs.define(kw_only=True)
class ReconstructionConfig:
    """Match every training image to its nearest candidate (NCC), score the pairs by SSIM."""

    #: training images scored: 0 for every image of the ``[data]`` set's train split (its
    #: ``per_class`` and ``classes`` options choose them), else this many of them drawn at random
    #: (``run.seed``)
    samples: int = 0
    #: the candidates they are matched among: ``all`` (Haim et al. keep every one) or ``alive``
    #: (those dual feasibility kept)
    candidates: str = "all"
    #: the figure (the best pairs, SSIM against margin and lambda), written inside the run store;
    #: empty for none
    png: str = "reconstruction.png"
    #: pairs drawn in the figure, best SSIM first
    best: int = 10
    #: also measure DeepKKT's premise on the scored images (:func:`dsv.kkt.premise.measure_premise`)
    #: and plot SSIM against each one's normalised margin and lambda
    premise: bool = False
    #: scored images the premise is measured on, drawn at random (0: all of them); the others
    #: have no margin or lambda (null in the result)
    premise_samples: int = 200
    #: the parameters of the premise: ``"all"``, ``"head"``, ``"auto"``, or globs over names
    premise_params: str | list[str] = "all"
    #: the premise's margin form: ``"binary"``, ``"multiclass"``, ``"cross_entropy"`` or ``"auto"``
    premise_margin: str = "auto"


def _premise(context: StageContext, images: torch.Tensor, labels: torch.Tensor, r: ReconstructionConfig, gen):
    """Each scored image's normalised margin (its smallest constraint's) and lambda (summed over
    its constraints); NaN for the images not measured."""
    data = context.require_data()
    rows = torch.arange(len(images))
    if r.premise_samples and r.premise_samples < len(images):
        rows = torch.randperm(len(images), generator=gen)[: r.premise_samples].sort().values
    measured = measure_premise(
        context.model.module.cpu().eval(),
        normalize(images[rows], data.mean, data.std),
        labels[rows],
        params=r.premise_params,
        margin=r.premise_margin,
    )
    margins = np.full(len(images), np.nan)
    lambdas = np.full(len(images), np.nan)
    margins[rows.numpy()] = measured.margins.min(axis=1)
    lambdas[rows.numpy()] = measured.lambdas.sum(axis=1)
    return margins, lambdas, measured.summary()


def run(context: StageContext, store: RunStore | None) -> list[Path]:
    """The reconstruction stage: result ``reconstruction`` and its figure."""
    assert store is not None
    r = context.table("reconstruction") or ReconstructionConfig()
    if not store.has_candidates:
        raise DsvError(f"{store.path}: no candidates to score; run the synthesize stage first")
    data = context.require_data()
    images, labels = data.tensors("train")
    gen = torch.Generator().manual_seed(context.seed)
    if r.samples and r.samples < len(images):
        rows = torch.randperm(len(images), generator=gen)[: r.samples].sort().values
        images, labels = images[rows], labels[rows]
    c = store.candidates()
    keep = c["alive"] if r.candidates == "alive" else np.ones(len(c["x"]), dtype=bool)
    if not keep.any():
        raise DsvError(f"{store.path}: reconstruction.candidates = 'alive', but no candidate is alive")
    meta = store.meta
    # the candidates back in pixel values (per channel); scored min-max scaled per image
    mean = np.asarray(meta.get("mean", data.mean), dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(meta.get("std", data.std), dtype=np.float32).reshape(1, -1, 1, 1)
    candidates = torch.from_numpy(c["x"][keep] * std + mean)
    margins = lambdas = None
    premise = None
    if r.premise:
        margins, lambdas, premise = _premise(context, images, labels, r, gen)
    score = evaluate_reconstruction(images, labels, candidates, margins, lambdas, candidate_labels=c["labels"][keep])
    result = score.summary()
    # indices into the store's candidates, not into the kept ones
    result["candidate"] = np.flatnonzero(keep)[score.candidate].tolist()
    result["candidate_set"] = r.candidates
    if premise is not None:
        result["premise"] = {k: premise[k] for k in ("residual", "n", "margin", "on_margin", "nonzero_lambda")}
    files = []
    if r.png:
        files.append(plot_reconstruction(score, images, candidates, store.export_path(r.png), best=r.best))
        result["png"] = r.png
    store.put_result("reconstruction", result)
    return files


def check(r: ReconstructionConfig, config: cfg.PipelineConfig) -> list[str]:
    """Range checks of the [reconstruction] table."""
    problems: list[str] = []
    if r.samples < 0:
        problems.append(f"reconstruction.samples: must be at least 0 (0: the whole train split), got {r.samples}")
    if r.candidates not in CANDIDATE_SETS:
        problems.append(f"reconstruction.candidates: expected 'all' or 'alive', got {r.candidates!r}")
    if r.best < 1:
        problems.append(f"reconstruction.best: must be at least 1, got {r.best}")
    if r.premise_samples < 0:
        problems.append(
            f"reconstruction.premise_samples: must be at least 0 (0: every scored image), got {r.premise_samples}"
        )
    if r.premise_margin not in MARGIN_FORMS:
        problems.append(
            f"reconstruction.premise_margin: expected one of {', '.join(map(repr, MARGIN_FORMS))}, "
            f"got {r.premise_margin!r}"
        )
    problems += cfg.file_name_problems("reconstruction", {"png": r.png})
    return problems


STAGE = Stage(name="reconstruction", run=run, order=450, table=ReconstructionConfig, needs_data=True, check=check)
