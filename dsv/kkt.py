"""The DeepKKT terms as plain functions on tensors: no I/O, no engine, no plugins.

Notation (DeepKKT, Lee et al. 2024, Eq. 7-9): candidates ``x_i`` with soft targets ``t_i``
(rows of ``targets``, summing to 1), multipliers ``lambda_i`` and a frozen model ``Phi(.; theta)``.
"""

from __future__ import annotations

import fnmatch
from typing import Iterable, Sequence

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

DISTANCES = ("l1", "l2")


@attrs.define
class KKTBatch:
    """Everything a loss term sees for one forward pass (clean or augmented)."""

    model: nn.Module
    inputs: Tensor  # (N, C, H, W) what the model saw
    logits: Tensor  # (N, K)
    targets: Tensor  # (N, K) soft targets
    lambdas: Tensor  # (N,) multipliers (dead candidates count as 0)
    alive: Tensor  # (N,) bool


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-candidate cross entropy against soft targets, shape (N,)."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1)


def misclassified(logits: Tensor, targets: Tensor) -> Tensor:
    """(N,) bool: the argmax of the model differs from the argmax of the target."""
    return logits.argmax(dim=1) != targets.argmax(dim=1)


def primal_loss(logits: Tensor, targets: Tensor, alive: Tensor) -> Tensor:
    """Eq. 7: mean over alive candidates of CE, counted only where the candidate is misclassified."""
    mask = (misclassified(logits, targets) & alive).to(logits.dtype)
    n_alive = alive.sum().clamp(min=1)
    return (mask * soft_cross_entropy(logits, targets)).sum() / n_alive


def lagrangian_gradient(
    logits: Tensor,
    targets: Tensor,
    lambdas: Tensor,
    params: Sequence[Tensor],
    *,
    create_graph: bool = True,
) -> list[Tensor]:
    """``sum_i lambda_i grad_theta CE(Phi(x_i), t_i)`` for each parameter tensor.

    With ``create_graph`` the result stays differentiable in ``x`` and ``lambda``: the mixed
    second derivative the stationarity term needs (double backward).
    """
    weighted = (lambdas * soft_cross_entropy(logits, targets)).sum()
    return list(torch.autograd.grad(weighted, params, create_graph=create_graph, allow_unused=True))


def stationarity_distance(
    params: Sequence[Tensor], lagrangian_grads: Sequence[Tensor | None], distance: str = "l1"
) -> Tensor:
    """Eq. 8: ``D(theta, -sum_i lambda_i grad)`` averaged per scalar parameter.

    ``l1``: mean |theta + G|; ``l2``: mean (theta + G)^2. A parameter the candidates do not reach
    (grad None) contributes |theta| as it is.
    """
    if distance not in DISTANCES:
        raise ValueError(f"unknown stationarity distance {distance!r} (known: {', '.join(DISTANCES)})")
    total = None
    count = 0
    for theta, grad in zip(params, lagrangian_grads):
        residual = theta.detach() + grad if grad is not None else theta.detach()
        part = residual.abs().sum() if distance == "l1" else residual.pow(2).sum()
        total = part if total is None else total + part
        count += theta.numel()
    return total / max(count, 1)


def stationarity_loss(
    logits: Tensor,
    targets: Tensor,
    lambdas: Tensor,
    alive: Tensor,
    params: Sequence[Tensor],
    distance: str = "l1",
) -> Tensor:
    """Stationarity residual with dead candidates excluded (their lambda counts as 0)."""
    grads = lagrangian_gradient(logits, targets, lambdas * alive.to(lambdas.dtype), params)
    return stationarity_distance(params, grads, distance)


def class_rows(params: Sequence[Tensor], grads: Sequence[Tensor | None], rows: Tensor):
    """Keep only the rows of the given classes in every tensor whose first dimension is the
    class count (the head's weight and bias): what few candidates of few classes can explain."""
    keep_p, keep_g = [], []
    for theta, grad in zip(params, grads):
        if theta.shape[0] == rows.shape[0]:
            theta, grad = theta[rows], (grad[rows] if grad is not None else None)
        keep_p.append(theta)
        keep_g.append(grad)
    return keep_p, keep_g


def zero_multiplier_distance(params: Sequence[Tensor], distance: str = "l1") -> Tensor:
    """The stationarity distance with every lambda = 0 (the reference of relative stationarity)."""
    return stationarity_distance(params, [None] * len(params), distance)


def total_variation(x: Tensor) -> Tensor:
    """Mean absolute difference between neighbouring pixels (anisotropic TV, L1)."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    return dh + dw


def norm_loss(x: Tensor) -> Tensor:
    """Mean squared value of the candidates (the L2 image prior)."""
    return x.pow(2).mean()


def prediction_entropy(logits: Tensor) -> Tensor:
    """Per-candidate entropy (nats) of the softmax prediction, shape (N,)."""
    logp = F.log_softmax(logits, dim=1)
    return -(logp.exp() * logp).sum(dim=1)


def newly_infeasible(lambdas: Tensor, alive: Tensor) -> Tensor:
    """Dual feasibility: alive candidates whose lambda went below 0 (to be marked dead)."""
    return alive & (lambdas.detach() < 0)


# --------------------------------------------------------------------------------------------------
# which parameters the stationarity term covers
# --------------------------------------------------------------------------------------------------


def classifier_head(model: nn.Module) -> tuple[str, nn.Linear]:
    """The last ``nn.Linear`` of the model: the layer whose gradient is (p - t) h(x)^T."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module)
    if last is None:
        raise ValueError("the model has no nn.Linear layer: name the stationarity parameters by glob")
    return last


def select_parameters(model: nn.Module, selection: str | Iterable[str]) -> list[tuple[str, Tensor]]:
    """Resolve a parameter selection: ``"head"`` (the last linear layer), ``"all"``, or globs
    over ``named_parameters`` names (``["classifier.*", "features.6.*"]``)."""
    named = list(model.named_parameters())
    if selection == "all":
        return named
    if selection == "head":
        head_name, _ = classifier_head(model)
        prefix = f"{head_name}." if head_name else ""
        return [(n, p) for n, p in named if n.startswith(prefix) and n[len(prefix):] in ("weight", "bias")]
    if isinstance(selection, str):
        selection = [selection]
    patterns = list(selection)
    chosen = [(n, p) for n, p in named if any(fnmatch.fnmatchcase(n, pat) for pat in patterns)]
    if not chosen:
        sample = ", ".join(n for n, _ in named[:8])
        raise ValueError(f"no parameter matches {patterns} (parameters are named like: {sample}, ...)")
    return chosen
