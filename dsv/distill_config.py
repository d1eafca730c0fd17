"""The tables of the distillation stages: ``[select]``, ``[retrain]`` and ``[analyse]``.

Each is an attrs class structured by :data:`dsv.config.CONVERTER` (unknown keys and wrong types
are errors naming the key path); the range checks are in :func:`check_distill`, called from
:func:`dsv.config._check`.
"""

from __future__ import annotations

import attrs

from dsv.plugin_spec import PluginSpec


@attrs.define(kw_only=True)
class SelectConfig:
    """Coreset selection: fit lambda for real training samples with x fixed, rank per class."""

    split: str = "train"
    pool_per_class: int = 0  # samples per class the multipliers are fitted for (0: every sample)
    iterations: int = 300
    lr_lambda: float = 0.05
    lambda_init: float = 0.0
    distance: str = "l2"  # stationarity distance over the classifier head: l1 or l2
    # only correctly classified samples (primal feasible) get a multiplier. On all of Fashion-MNIST
    # the fit with the misclassified ones diverged (relative stationarity 2.28 after 300 steps, worse
    # than lambda = 0), without them it reached 0.63 (measured with benchmarks/distill.py)
    feasible_only: bool = True
    top_k: list[int] = attrs.field(factory=lambda: [1, 10])  # exported coreset sizes, per class
    random_samples: int = 1000  # random samples whose entropy is compared with the selected ones'
    npz: str = "coreset.npz"  # written inside the run store


@attrs.define(kw_only=True)
class RetrainConfig:
    """Train fresh models (the [model] source with new weights) on a DSV set or on a coreset."""

    retrainer: PluginSpec = attrs.field(
        factory=lambda: PluginSpec(name="adam", options={"epochs": 300, "batch_size": 256, "lr": 1e-3}))
    source: str = "candidates"  # "candidates" (the synthesized DSVs) or "coreset" (the select stage's)
    top_k: int = 0  # with source = "coreset": which exported size (0: the largest)
    seeds: int = 3
    augmentations: list[PluginSpec] = attrs.field(factory=list)  # applied to each training batch
    keep_dead: bool = False  # also train on candidates whose lambda went negative


@attrs.define(kw_only=True)
class AnalyseConfig:
    """Entropy over the synthesis, per-class sum of lambda against class-wise test accuracy."""

    lambda_source: str = "auto"  # "select", "synthesis", or "auto" (select's when it ran)
    entropy_png: str = "entropy.png"  # written inside the run store; "" for none
    lambda_png: str = "lambda_accuracy.png"


def check_distill(select: SelectConfig | None, retrain: RetrainConfig | None,
                  analyse: AnalyseConfig | None) -> list[str]:
    """Range checks of the three tables (each may be absent)."""
    problems = []
    if select is not None:
        for key in ("iterations", "random_samples"):
            if getattr(select, key) < 1:
                problems.append(f"select.{key}: must be at least 1, got {getattr(select, key)}")
        if select.pool_per_class < 0:
            problems.append(f"select.pool_per_class: must be at least 0 (0: every sample), got {select.pool_per_class}")
        if select.lr_lambda <= 0:
            problems.append(f"select.lr_lambda: must be positive, got {select.lr_lambda}")
        if select.lambda_init < 0:
            problems.append(f"select.lambda_init: must be at least 0 (dual feasibility), got {select.lambda_init}")
        if select.distance not in ("l1", "l2"):
            problems.append(f"select.distance: expected 'l1' or 'l2', got {select.distance!r}")
        if select.split not in ("train", "test"):
            problems.append(f"select.split: expected 'train' or 'test', got {select.split!r}")
        if not select.top_k or any(k < 1 for k in select.top_k):
            problems.append(f"select.top_k: a non-empty list of sizes >= 1, got {select.top_k}")
        problems += _file_names("select", {"npz": select.npz})
    if retrain is not None:
        if retrain.seeds < 1:
            problems.append(f"retrain.seeds: must be at least 1, got {retrain.seeds}")
        if retrain.source not in ("candidates", "coreset"):
            problems.append(f"retrain.source: expected 'candidates' or 'coreset', got {retrain.source!r}")
        if retrain.top_k < 0:
            problems.append(f"retrain.top_k: must be at least 0 (0: the largest), got {retrain.top_k}")
    if analyse is not None:
        if analyse.lambda_source not in ("auto", "select", "synthesis"):
            problems.append(f"analyse.lambda_source: expected 'auto', 'select' or 'synthesis', got {analyse.lambda_source!r}")
        problems += _file_names("analyse", {"entropy_png": analyse.entropy_png, "lambda_png": analyse.lambda_png})
    return problems


def _file_names(table: str, names: dict[str, str]) -> list[str]:
    from dsv.config import _is_plain_file_name

    return [f"{table}.{key}: a file name inside the run store, not a path, got {name!r}"
            for key, name in names.items() if name and not _is_plain_file_name(name)]
