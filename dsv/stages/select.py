"""The ``select`` stage: DSVs among real training samples (coreset selection by lambda).

The fit is :mod:`dsv.kkt.selection`: with the samples ``x_i`` fixed, only the multipliers are
fitted, stationarity over the classifier head (``theta_head + sum_i lambda_i grad_head CE_i = 0``,
``lambda >= 0``) in closed form, so all of a data set fits in a few matrix products per step.
Samples are ranked by lambda within each class; the top-k of each class is the coreset, exported
as ``coreset.npz`` inside the run store.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np
import torch
from torch import Tensor

from dsv import config as cfg
from dsv import kkt
from dsv.errors import DsvError
from dsv.kkt.premise import MARGIN_FORMS, measure_premise
from dsv.kkt.selection import (
    fit_feasible,
    fit_multipliers_stationarity,
    head_features,
    mean_entropy,
    pool_indices,
    top_per_class,
)
from dsv.pipeline import Stage, StageContext
from dsv.plugins import normalize
from dsv.store import RunStore

SELECT_FITS = ("head", "stationarity")


@attrs.define(kw_only=True)
class SelectConfig:
    """Coreset selection: fit lambda for real training samples with x fixed, rank per class."""

    #: the split whose samples are ranked: ``train`` or ``test``
    split: str = "train"
    #: samples per class the multipliers are fitted for (0: every sample)
    pool_per_class: int = 0
    #: steps of the multipliers' fit
    iterations: int = 300
    #: the learning rate of the multipliers
    lr_lambda: float = 0.05
    #: every sample's lambda at the start
    lambda_init: float = 0.0
    #: the stationarity distance over the classifier head: ``l1`` or ``l2``
    distance: str = "l2"
    #: how lambda is fitted: ``"head"`` (closed form over the classifier head's gradient, Adam on
    #: lambda) or ``"stationarity"`` (the paper's: the distance over ``params``, every sample's
    #: lambda gradient as a directional derivative by ``mode``, steps by ``optimizer``)
    fit: str = "head"
    #: the parameters of the ``"stationarity"`` fit: ``"all"``, ``"head"``, or globs over names
    params: str | list[str] = "all"
    #: the directional derivative of the ``"stationarity"`` fit: ``"jvp"`` (forward-mode AD,
    #: exact) or ``"finite_difference"`` (central differences in float64)
    mode: str = "jvp"
    #: the steps of the ``"stationarity"`` fit: ``"sgd"`` (plain gradient steps, the paper's) or ``"adam"``
    optimizer: str = "sgd"
    #: samples per forward pass of the ``"stationarity"`` fit (memory, not results)
    batch_size: int = 500
    # On all of Fashion-MNIST the fit with the misclassified ones diverged (relative stationarity
    # 2.28 after 300 steps, worse than lambda = 0), without them it reached 0.63 (measured with
    # benchmarks/distill.py)
    #: only correctly classified samples (primal feasible) get a multiplier
    feasible_only: bool = True
    #: the exported coreset sizes, per class
    top_k: list[int] = attrs.field(factory=lambda: [1, 10])
    #: random samples whose entropy is compared with the selected ones'
    random_samples: int = 1000
    #: the coresets, written inside the run store
    npz: str = "coreset.npz"
    # off by default: it costs a Gram matrix of one row per constraint (samples x (classes - 1) in
    # the multiclass form) and its eigendecomposition, 5-15 s for 200 digits on 2 cores
    #: measure DeepKKT's premise (:func:`dsv.kkt.premise.measure_premise`) on the pool: the best
    #: relative stationarity with lambda >= 0, the samples on the margin, the non-zero multipliers
    premise: bool = False
    #: samples of the pool the premise is measured on, drawn at random (0: the whole pool)
    premise_samples: int = 200
    #: the parameters of the premise: ``"all"``, ``"head"``, ``"auto"``, or globs over names
    premise_params: str | list[str] = "all"
    #: the premise's margin form: ``"binary"`` (Haim et al.), ``"multiclass"`` (Buzaglo et al.),
    #: ``"cross_entropy"`` (the weight-decay form) or ``"auto"`` (binary up to two outputs)
    premise_margin: str = "auto"
    #: a sample is on the margin when its margin is at most ``1 + premise_tol`` times the smallest
    premise_tol: float = 0.05
    #: the premise's per-sample multipliers and margins, written inside the run store
    premise_npz: str = "premise.npz"


def read_coreset(store: RunStore, name: str, top_k: int = 0) -> tuple[Tensor, Tensor]:
    """Images in [0, 1] and labels of the coreset of size ``top_k`` per class (0: the largest)."""
    path = store.export_path(name)
    if not path.is_file():
        raise DsvError(f"{path}: no coreset; run the select stage first")
    with np.load(path, allow_pickle=False) as z:
        sizes = sorted(int(k) for k in z["top_k"])
        k = top_k or sizes[-1]
        if k not in sizes:
            raise DsvError(f"{path}: no coreset of {k} per class (it holds {sizes}); set retrain.top_k")
        return torch.from_numpy(z[f"top{k}_images"]), torch.from_numpy(z[f"top{k}_labels"]).long()


def fit_lambdas(model, images: Tensor, labels: Tensor, s: SelectConfig, progress: bool = False):
    """(lambda of each sample, relative stationarity after each step, logits, head features) for
    ``images`` (model input space) under the table's ``fit``: the closed-form head fit, or the
    paper's (L1 stationarity over ``params``, directional derivatives, plain gradient steps)."""
    logits, features = head_features(model, images)
    if s.fit == "head":
        lambdas, history = fit_feasible(
            kkt.classifier_head(model)[1],
            logits,
            features,
            labels,
            feasible_only=s.feasible_only,
            iterations=s.iterations,
            lr=s.lr_lambda,
            lambda_init=s.lambda_init,
            distance=s.distance,
            progress=progress,
        )
        return lambdas, history, logits, features
    keep = (logits.argmax(1) == labels) if s.feasible_only else torch.ones_like(labels, dtype=torch.bool)
    lambdas = torch.zeros(len(labels))
    fitted, history = fit_multipliers_stationarity(
        model,
        images[keep],
        labels[keep],
        params=s.params,
        iterations=s.iterations,
        lr=s.lr_lambda,
        lambda_init=s.lambda_init,
        distance=s.distance,
        mode=s.mode,
        optimizer=s.optimizer,
        batch_size=s.batch_size,
        progress=progress,
    )
    lambdas[keep] = fitted
    return lambdas, history, logits, features


def run(context: StageContext, store: RunStore | None) -> list[Path]:
    """The select stage: fit lambda over a pool of real samples, export the top-k per class."""
    assert store is not None
    s = context.table("select") or SelectConfig()
    data = context.require_data()
    images, labels = data.tensors(s.split)
    gen = torch.Generator().manual_seed(context.seed)
    pool = pool_indices(labels, s.pool_per_class, gen)
    model = context.model.module.cpu().eval()
    lambdas, history, logits, _ = fit_lambdas(
        model, normalize(images[pool], data.mean, data.std), labels[pool], s, context.progress
    )
    arrays = {
        "top_k": np.asarray(s.top_k),
        "pool_indices": pool.numpy(),
        "pool_lambda": lambdas.numpy(),
        "pool_labels": labels[pool].numpy(),
    }
    entropy_selected = {}
    for k in s.top_k:
        chosen = top_per_class(lambdas, labels[pool], k)
        arrays[f"top{k}_indices"] = pool[chosen].numpy()
        arrays[f"top{k}_images"] = images[pool[chosen]].numpy()
        arrays[f"top{k}_labels"] = labels[pool[chosen]].numpy()
        entropy_selected[str(k)] = mean_entropy(logits[chosen])
    random_rows = torch.randperm(len(pool), generator=gen)[: s.random_samples]
    path = store.export_path(s.npz)
    np.savez(path, **arrays, allow_pickle=False)  # plain arrays only: a store holds no pickles
    store.put_result(
        "select",
        {
            "pool": int(len(pool)),
            "positive_lambda": int((lambdas > 0).sum()),
            "relative_stationarity": history[-1],
            "entropy_selected": entropy_selected,
            "entropy_random": mean_entropy(logits[random_rows]),
            "npz": s.npz,
        },
    )
    files = [path]
    if s.premise:
        files.append(_measure_premise(store, model, images[pool], labels[pool], pool, data, s, gen))
    return files


def _measure_premise(store: RunStore, model, images: Tensor, labels: Tensor, pool: Tensor, data, s, gen) -> Path:
    """The premise on ``premise_samples`` of the pool: the result ``premise`` (its scalars) and
    the per-sample arrays in ``premise_npz``."""
    rows = torch.arange(len(pool))
    if s.premise_samples and s.premise_samples < len(pool):
        rows = torch.randperm(len(pool), generator=gen)[: s.premise_samples].sort().values
    measured = measure_premise(
        model,
        normalize(images[rows], data.mean, data.std),
        labels[rows],
        params=s.premise_params,
        margin=s.premise_margin,
        tol=s.premise_tol,
    )
    path = store.export_path(s.premise_npz)
    np.savez(path, indices=pool[rows].numpy(), **measured.arrays(), allow_pickle=False)
    store.put_result("premise", {**measured.summary(), "npz": s.premise_npz})
    return path


def check(select: SelectConfig, config: cfg.PipelineConfig) -> list[str]:
    """Range checks of the [select] table."""
    problems: list[str] = []
    for key in ("iterations", "random_samples"):
        if getattr(select, key) < 1:
            problems.append(f"select.{key}: must be at least 1, got {getattr(select, key)}")
    if select.pool_per_class < 0:
        problems.append(f"select.pool_per_class: must be at least 0 (0: every sample), got {select.pool_per_class}")
    if select.lr_lambda <= 0:
        problems.append(f"select.lr_lambda: must be positive, got {select.lr_lambda}")
    if select.lambda_init < 0:
        problems.append(f"select.lambda_init: must be at least 0 (dual feasibility), got {select.lambda_init}")
    if select.fit not in SELECT_FITS:
        problems.append(f"select.fit: expected one of {', '.join(map(repr, SELECT_FITS))}, got {select.fit!r}")
    if select.mode not in ("jvp", "finite_difference"):
        problems.append(f"select.mode: expected 'jvp' or 'finite_difference', got {select.mode!r}")
    if select.optimizer not in ("sgd", "adam"):
        problems.append(f"select.optimizer: expected 'sgd' or 'adam', got {select.optimizer!r}")
    if select.batch_size < 1:
        problems.append(f"select.batch_size: must be at least 1, got {select.batch_size}")
    if select.distance not in ("l1", "l2"):
        problems.append(f"select.distance: expected 'l1' or 'l2', got {select.distance!r}")
    if select.split not in ("train", "test"):
        problems.append(f"select.split: expected 'train' or 'test', got {select.split!r}")
    if not select.top_k or any(k < 1 for k in select.top_k):
        problems.append(f"select.top_k: a non-empty list of sizes >= 1, got {select.top_k}")
    if select.premise_samples < 0:
        problems.append(f"select.premise_samples: must be at least 0 (0: the whole pool), got {select.premise_samples}")
    margin = select.premise_margin
    if margin not in MARGIN_FORMS:
        problems.append(f"select.premise_margin: expected one of {', '.join(map(repr, MARGIN_FORMS))}, got {margin!r}")
    if select.premise_tol < 0:
        problems.append(f"select.premise_tol: must be at least 0, got {select.premise_tol}")
    problems += cfg.file_name_problems("select", {"npz": select.npz, "premise_npz": select.premise_npz})
    return problems


STAGE = Stage(name="select", run=run, order=200, table=SelectConfig, needs_data=True, check=check)
