"""DSVs among real samples: with the samples ``x_i`` fixed, only the multipliers are fitted.

Stationarity over the classifier head, ``theta_head + sum_i lambda_i grad_head CE(Phi(x_i), y_i) = 0``
with ``lambda >= 0``. The gradient of CE for a linear head is ``(p_i - t_i) h_i^T`` (``h_i`` the
head's input), so the sum is ``(P - T)^T diag(lambda) H``: one forward over the samples gives every
quantity, and the fit costs a few matrix products per step however many samples take part.
Samples are ranked by lambda within each class; the top-k of each class is the coreset.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsv.kkt import modes
from dsv.kkt.terms import (
    classifier_head,
    prediction_entropy,
    select_parameters,
    soft_cross_entropy,
    stationarity_distance,
    zero_multiplier_distance,
)
from dsv.plugins.output import progress_iter


def head_features(model: nn.Module, images: Tensor, batch_size: int = 1000) -> tuple[Tensor, Tensor]:
    """(logits (N, K), input of the classifier head (N, D)) of ``images`` (model input space)."""
    _, head = classifier_head(model)
    captured: list[Tensor] = []
    handle = head.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach()))
    logits = []
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                logits.append(model(images[start : start + batch_size]).detach())
    finally:
        handle.remove()
    return torch.cat(logits), torch.cat(captured).flatten(1)


def fit_multipliers(
    head: nn.Linear,
    logits: Tensor,
    features: Tensor,
    labels: Tensor,
    *,
    iterations: int = 300,
    lr: float = 0.05,
    lambda_init: float = 0.0,
    distance: str = "l2",
    progress: bool = False,
) -> tuple[Tensor, list[float]]:
    """Multipliers (N,) >= 0 minimizing the relative stationarity distance over ``head`` for fixed
    samples, and that distance after each step (1.0 = the multipliers explain nothing)."""
    residual_pt = F.softmax(logits, dim=1) - F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    weight, bias = head.weight.detach(), head.bias.detach() if head.bias is not None else None
    params = [weight] + ([bias] if bias is not None else [])
    reference = float(zero_multiplier_distance(params, distance))
    lambdas = torch.full((len(labels),), float(lambda_init), requires_grad=True)
    optimizer = torch.optim.Adam([lambdas], lr=lr)
    history = []
    steps: Iterable[int] = range(iterations)
    if progress:
        steps = progress_iter(steps, total=iterations, desc="select")
    for _ in steps:
        weighted = residual_pt * lambdas[:, None]
        grads = [weighted.T @ features] + ([weighted.sum(0)] if bias is not None else [])
        loss = stationarity_distance(params, grads, distance) / reference
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            lambdas.clamp_(min=0.0)  # dual feasibility by projection: a sample may drop to 0
        history.append(float(loss.detach()))
    return lambdas.detach(), history


def fit_feasible(
    head: nn.Linear, logits: Tensor, features: Tensor, labels: Tensor, *, feasible_only: bool = True, **options
) -> tuple[Tensor, list[float]]:
    """:func:`fit_multipliers` over the primal-feasible samples only (those the model classifies
    right) when ``feasible_only``; the others keep lambda = 0 and rank last."""
    keep = (logits.argmax(1) == labels) if feasible_only else torch.ones_like(labels, dtype=torch.bool)
    lambdas = torch.zeros(len(labels))
    fitted, history = fit_multipliers(head, logits[keep], features[keep], labels[keep], **options)
    lambdas[keep] = fitted
    return lambdas, history


def top_per_class(scores: Tensor, labels: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` highest scores of each class (classes in order, best first)."""
    out = []
    for cls in labels.unique().tolist():
        members = (labels == cls).nonzero().flatten()
        order = torch.argsort(scores[members], descending=True, stable=True)
        out.append(members[order[:k]])
    return torch.cat(out)


def top_lambda_candidates(lambdas: Tensor, alive: Tensor, labels: Tensor, k: int) -> Tensor:
    """Indices (sorted) of the ``k`` candidates of each class with the largest lambda, alive ones
    first: the DSVs kept from a pool of synthesized candidates (all of them when ``k`` is 0)."""
    if k == 0:
        return torch.arange(len(labels))
    score = torch.where(alive, lambdas.double(), lambdas.double() - 1e30)  # alive ranks above dead
    return top_per_class(score, labels, k).sort().values


def pool_indices(labels: Tensor, per_class: int, generator: torch.Generator) -> Tensor:
    """A random pool of ``per_class`` samples of each class (every sample when 0), sorted."""
    if per_class == 0:
        return torch.arange(len(labels))
    chosen = []
    for cls in labels.unique().tolist():
        members = (labels == cls).nonzero().flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.cat(chosen).sort().values


def mean_entropy(logits: Tensor) -> float:
    return float(prediction_entropy(logits).mean()) if len(logits) else float("nan")


def fit_multipliers_stationarity(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    *,
    params: str | list[str] = "all",
    iterations: int = 100,
    lr: float = 1.0,
    lambda_init: float = 0.0,
    distance: str = "l1",
    mode: str = "jvp",
    optimizer: str = "sgd",
    batch_size: int = 500,
    progress: bool = False,
) -> tuple[Tensor, list[float]]:
    """The paper's fit (Sec. 5.1): multipliers (N,) >= 0 of fixed samples ``images`` (model input
    space) that minimize the stationarity distance ``D(theta, -sum_i lambda_i grad_theta CE_i)``
    over ``params`` (a selection as the stationarity loss takes it: ``"all"``, ``"head"``, globs),
    averaged per parameter and divided by its value at lambda = 0; the distance after each step.

    Each step: ``G`` by one backward over the samples (``batch_size`` at a time), then
    ``dD/dlambda_i = <s, grad_theta CE_i>`` (``s = dD/dG``) for every sample at once as a
    directional derivative along ``s`` (``mode``: ``jvp``, exact; or ``finite_difference``,
    central differences in float64), then a step on lambda: plain gradient (``optimizer = "sgd"``,
    as the paper's Algorithm 1) or Adam; negative multipliers are projected to 0."""
    named = select_parameters(model, params)
    names = [n for n, _ in named]
    thetas = [p for _, p in named]
    for param in model.parameters():
        param.requires_grad_(False)
    for theta in thetas:
        theta.requires_grad_(True)
    with torch.no_grad():
        num_classes = model(images[:1]).shape[1]
    targets = F.one_hot(labels, num_classes).to(images.dtype)
    reference = float(zero_multiplier_distance(thetas, distance))
    count = sum(p.numel() for p in thetas)
    lambdas = torch.full((len(labels),), float(lambda_init), requires_grad=True)
    step_opt = torch.optim.Adam([lambdas], lr=lr) if optimizer == "adam" else torch.optim.SGD([lambdas], lr=lr)
    rows = [slice(i, min(i + batch_size, len(labels))) for i in range(0, len(labels), batch_size)]
    history: list[float] = []
    steps: Iterable[int] = range(iterations)
    if progress:
        steps = progress_iter(steps, total=iterations, desc="select")
    try:
        for _ in steps:
            grads = [torch.zeros_like(p) for p in thetas]
            for r in rows:
                weights = lambdas.detach()[r]
                if not bool((weights != 0).any()):
                    continue
                with torch.enable_grad():
                    ce = soft_cross_entropy(model(images[r]), targets[r])
                    parts = torch.autograd.grad((weights * ce).sum(), thetas, allow_unused=True)
                for g, part in zip(grads, parts):
                    if part is not None:
                        g.add_(part)
            residuals = [p.detach() + g for p, g in zip(thetas, grads)]
            if distance == "l1":
                value = sum(float(r.abs().sum()) for r in residuals) / count
                direction = [r.sign() / (count * reference) for r in residuals]
            else:
                value = sum(float(r.pow(2).sum()) for r in residuals) / count
                direction = [2 * r / (count * reference) for r in residuals]
            history.append(value / reference)
            tangent = torch.zeros(len(labels))
            ones = torch.ones(len(labels))
            for r in rows:
                if mode == "jvp":
                    _, t = modes.jvp_directional(
                        model, images[r], targets[r], ones[r], names, thetas, direction, need_x=False
                    )
                else:
                    step = modes.fd_step(thetas, direction, 1e-4)
                    _, t = modes.finite_difference_directional(
                        model,
                        images[r],
                        targets[r],
                        ones[r],
                        names,
                        thetas,
                        direction,
                        step,
                        need_x=False,
                        dtype=torch.float64,
                    )
                tangent[r] = t
            step_opt.zero_grad()
            lambdas.grad = tangent
            step_opt.step()
            with torch.no_grad():
                lambdas.clamp_(min=0.0)
    finally:
        for theta in thetas:
            theta.requires_grad_(False)
    return lambdas.detach(), history
