"""The DeepKKT terms as plain functions on tensors: no I/O, no engine, no plugins.

Notation (DeepKKT, Lee et al. 2024, Eq. 7-9): candidates ``x_i`` with soft targets ``t_i``
(rows of ``targets``, summing to 1), multipliers ``lambda_i`` and a frozen model ``Phi(.; theta)``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from typing import cast

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsv.kkt import modes
from dsv.kkt.modes import GateTracker

DISTANCES = ("l1", "l2")
#: what each candidate's gradient in theta is taken of (see :func:`candidate_objective`)
STATIONARITY_MARGINS = ("cross_entropy", "binary", "multiclass")


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


def logit_margin(logits: Tensor, targets: Tensor) -> Tensor:
    """(N,) the target's logit minus the largest other logit (> 0: classified as the target)."""
    target = targets.argmax(dim=1)
    own = logits.gather(1, target[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(target, logits.shape[1]).bool(), float("-inf"))
    return own - others.amax(dim=1)


def primal_loss(logits: Tensor, targets: Tensor, alive: Tensor) -> Tensor:
    """Eq. 7: mean over alive candidates of CE, counted only where the candidate is misclassified."""
    mask = (misclassified(logits, targets) & alive).to(logits.dtype)
    n_alive = alive.sum().clamp(min=1)
    return (mask * soft_cross_entropy(logits, targets)).sum() / n_alive


def candidate_objective(logits: Tensor, targets: Tensor, margin: str = "cross_entropy") -> Tensor:
    """(N,) the per-candidate function ``f_i`` whose gradient the stationarity term weighs, signed
    so that stationarity always reads ``theta + sum_i lambda_i grad_theta f_i = 0``.

    ``cross_entropy``: ``f_i = CE(Phi(x_i), t_i)`` (DeepKKT: theta = -sum lambda grad CE).
    ``binary`` (Haim et al. 2022) and ``multiclass`` (Buzaglo et al. 2023): ``f_i = -m_i``, the
    margin negated (the max-margin KKT point has theta = +sum lambda grad m). ``binary``: two
    outputs, ``m_i = Phi_y - Phi_other``; ``multiclass``: the smallest margin
    ``m_i = Phi_y - max_{j != y} Phi_j`` (the constraint that is active at a KKT point, one
    multiplier per candidate; equal to ``binary`` for two outputs). The margin forms take the
    target's argmax as the label.
    """
    if margin == "cross_entropy":
        return soft_cross_entropy(logits, targets)
    if margin not in STATIONARITY_MARGINS:
        raise ValueError(f"unknown stationarity margin {margin!r} (known: {', '.join(STATIONARITY_MARGINS)})")
    if margin == "binary" and logits.shape[1] != 2:
        raise ValueError(f"margin 'binary' needs a model of two outputs, this one has {logits.shape[1]}")
    if logits.shape[1] < 2:
        raise ValueError("the margin forms need at least two outputs")
    return -logit_margin(logits, targets)


def lagrangian_gradient(
    logits: Tensor,
    targets: Tensor,
    lambdas: Tensor,
    params: Sequence[Tensor],
    *,
    create_graph: bool = True,
    retain_graph: bool | None = None,
    margin: str = "cross_entropy",
) -> list[Tensor | None]:
    """``sum_i lambda_i grad_theta f_i`` for each parameter tensor (None where the candidates do
    not reach it), ``f_i`` the CE (default) or the negated margin (:func:`candidate_objective`).

    With ``create_graph`` the result stays differentiable in ``x`` and ``lambda``: the mixed
    second derivative the stationarity term needs (double backward).
    """
    weighted = (lambdas * candidate_objective(logits, targets, margin)).sum()
    return list(
        torch.autograd.grad(weighted, params, create_graph=create_graph, retain_graph=retain_graph, allow_unused=True)
    )


def stationarity_distance(
    params: Sequence[Tensor], lagrangian_grads: Sequence[Tensor | None], distance: str = "l1"
) -> Tensor:
    """Eq. 8: ``D(theta, -sum_i lambda_i grad)`` averaged per scalar parameter.

    ``l1``: mean |theta + G|; ``l2``: mean (theta + G)^2. A parameter the candidates do not reach
    (grad None) contributes |theta| as it is.
    """
    if distance not in DISTANCES:
        raise ValueError(f"unknown stationarity distance {distance!r} (known: {', '.join(DISTANCES)})")
    total: Tensor | None = None
    count = 0
    for theta, grad in zip(params, lagrangian_grads):
        residual = theta.detach() + grad if grad is not None else theta.detach()
        part = residual.abs().sum() if distance == "l1" else residual.pow(2).sum()
        total = part if total is None else total + part
        count += theta.numel()
    return cast(Tensor, total) / max(count, 1)  # total is None only for no params at all


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


# --------------------------------------------------------------------------------------------------
# the stationarity term with a choice of how its mixed derivative is taken (see dsv/kkt/modes.py)
# --------------------------------------------------------------------------------------------------

STATIONARITY_MODES = ("exact", "jvp", "finite_difference")


def _class_shaped(theta: Tensor, rows: Tensor | None) -> bool:
    return rows is not None and theta.dim() > 0 and theta.shape[0] == rows.shape[0]


def covered_parameters(params: Sequence[Tensor], rows: Tensor | None = None) -> list[Tensor]:
    """The parameter entries a stationarity term covers (detached): all, or with ``rows`` (K,) bool
    only those rows of the tensors whose first dimension is the class count (see class_rows)."""
    return [p.detach()[rows] if _class_shaped(p, rows) else p.detach() for p in params]


def stationarity_term(
    batch: KKTBatch,
    named_params: Sequence[tuple[str, Tensor]],
    *,
    distance: str = "l1",
    mode: str = "exact",
    rows: Tensor | None = None,
    scale: float = 1.0,
    fd_eps: float | None = None,
    gates: GateTracker | None = None,
    micro_batch: int = 0,
    fd_dtype: torch.dtype | None = None,
    margin: str = "cross_entropy",
) -> Tensor:
    """``scale * D(theta, -sum_i lambda_i grad_theta CE_i)`` over the named parameters (their
    ``rows`` only where class-shaped), dead candidates counting lambda = 0.

    ``mode`` says how its gradient in ``x`` (through ``batch.inputs``) and ``lambda`` is taken:
    ``exact`` (double backward), ``jvp`` (forward-mode AD in theta, exact) or
    ``finite_difference`` (step ``fd_eps`` relative to the parameters' RMS; one-sided when ``gates``,
    a :class:`dsv.kkt.modes.GateTracker` on the model, kept the gates of the forward that made
    ``batch.logits``, central otherwise). The fast modes return a surrogate whose value is the
    distance and whose gradient is the mode's; their extra passes take ``micro_batch`` candidates
    at a time (0: all), which bounds the memory they add. ``fd_dtype``: the precision of the
    finite-difference passes (None: the model's; float64: central differences in double). Under ``no_grad``
    or with neither inputs nor lambdas requiring grad, only the value is computed.
    ``margin``: the per-candidate function (:func:`candidate_objective`); the margin forms take
    ``exact`` only.
    """

    if mode not in STATIONARITY_MODES:
        raise ValueError(f"unknown stationarity mode {mode!r} (known: {', '.join(STATIONARITY_MODES)})")
    if distance not in DISTANCES:
        raise ValueError(f"unknown stationarity distance {distance!r} (known: {', '.join(DISTANCES)})")
    if margin != "cross_entropy" and mode != "exact":
        raise ValueError(f"stationarity margin {margin!r} takes mode 'exact' only, got {mode!r}")
    names = [n for n, _ in named_params]
    params = [p for _, p in named_params]
    lam = batch.lambdas * batch.alive.to(batch.lambdas.dtype)
    grad_on = torch.is_grad_enabled()
    need_x = grad_on and batch.inputs.requires_grad
    need_lambda = grad_on and batch.lambdas.requires_grad
    if mode == "exact":
        with torch.enable_grad():
            grads = lagrangian_gradient(
                batch.logits,
                batch.targets,
                lam,
                params,
                create_graph=need_x or need_lambda,
                retain_graph=True,
                margin=margin,
            )  # the logits' graph stays for the other terms
        covered, grads = class_rows(params, grads, rows) if rows is not None else (params, grads)
        return stationarity_distance(covered, grads, distance) * scale
    # G = sum_i lambda_i grad_theta CE_i on the logits already there (the graph stays for the others);
    # one-sided differences also take the input gradient at theta from this backward
    one_sided = mode == "finite_difference" and gates is not None and gates.pattern_of(batch.inputs) is not None
    with_inputs = one_sided and need_x
    with torch.enable_grad():
        ce = soft_cross_entropy(batch.logits, batch.targets)
        weighted = (lam.detach() * ce).sum()
        grads = list(
            torch.autograd.grad(
                weighted, [*params, *([batch.inputs] if with_inputs else [])], retain_graph=True, allow_unused=True
            )
        )
    base = ((grads[-1] if with_inputs else None), ce.detach()) if one_sided else None
    seen_storage = {grads[-1].data_ptr()} if with_inputs and grads[-1] is not None else set()
    grads = list(grads[: len(params)])
    for i, g in enumerate(grads):  # modified in place below: no gradient may share storage
        if g is not None:
            if g.data_ptr() in seen_storage:
                grads[i] = g = g.clone()
            seen_storage.add(g.data_ptr())
    # residuals theta + G, then the direction s, in the storage of G (parameter-sized temporaries
    # weigh as much as the activations of a small batch); entries outside the covered rows drop out
    count = max(sum(t.numel() for t in covered_parameters(params, rows)), 1)
    direction = []
    value = torch.zeros((), dtype=batch.logits.dtype, device=batch.logits.device)
    for p, g in zip(params, grads):
        r = g.add_(p.detach()) if g is not None else p.detach().clone()
        if rows is not None and _class_shaped(p, rows):
            r.mul_(rows.view(-1, *([1] * (p.dim() - 1))))
        if distance == "l1":
            value = value + r.abs().sum()
            direction.append(r.sign_().mul_(scale / count))
        else:
            value = value + r.pow(2).sum()
            direction.append(r.mul_(2 * scale / count))
    del grads
    value = value / count
    value = (value * scale).detach()
    if not (need_x or need_lambda):
        return value
    if mode == "jvp":
        grad_x, tangent = modes.jvp_directional(
            batch.model, batch.inputs, batch.targets, lam.detach(), names, params, direction, need_x, micro_batch
        )
    else:
        step = modes.fd_step(
            covered_parameters(params, rows),
            covered_parameters(direction, rows),
            modes.FD_EPS if fd_eps is None else fd_eps,
        )
        grad_x, tangent = modes.finite_difference_directional(
            batch.model,
            batch.inputs,
            batch.targets,
            lam.detach(),
            names,
            params,
            direction,
            step,
            need_x,
            gates=gates,
            base=base,
            micro_batch=micro_batch,
            dtype=fd_dtype,
        )
    with torch.enable_grad():  # d/dx through what the model saw, d/dlambda_i = alive_i dCE_i
        surrogate = (lam * tangent).sum()
        if grad_x is not None:  # need_x
            surrogate = surrogate + (batch.inputs * grad_x).sum()
    return value + (surrogate - surrogate.detach())


def total_variation(x: Tensor) -> Tensor:
    """Mean absolute difference between neighbouring pixels (anisotropic TV, L1)."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    return dh + dw


def total_variation_l2(x: Tensor) -> Tensor:
    """DeepInversion's ``loss_var_l2``: the sum over the four neighbour directions (down, right
    and both diagonals) of the L2 norm of the pixel differences over the whole batch. Not averaged:
    its weight is meant for DeepInversion's batch and image size."""
    diffs = (
        x[..., :, :-1] - x[..., :, 1:],
        x[..., :-1, :] - x[..., 1:, :],
        x[..., 1:, :-1] - x[..., :-1, 1:],
        x[..., :-1, :-1] - x[..., 1:, 1:],
    )
    return sum((torch.linalg.vector_norm(d) for d in diffs), torch.zeros((), dtype=x.dtype, device=x.device))


def range_excess(x: Tensor, low: float | Tensor, high: float | Tensor) -> Tensor:
    """Mean squared excess of ``x`` beyond ``[low, high]`` (numbers, or tensors broadcasting
    against x, e.g. (1, C, 1, 1) per channel); 0 inside."""
    return (x - high).clamp(min=0).pow(2).mean() + (low - x).clamp(min=0).pow(2).mean()


def norm_loss(x: Tensor) -> Tensor:
    """Mean squared value of the candidates (the L2 image prior)."""
    return x.pow(2).mean()


def l2_norm(x: Tensor) -> Tensor:
    """The L2 norm of all candidates together (DeepInversion's ``l2`` prior, ``torch.norm(x, 2)``)."""
    return torch.linalg.vector_norm(x)


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


NORMALIZATIONS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def has_normalization(model: nn.Module) -> bool:
    """Whether any layer of ``model`` normalizes its input (batch, instance, group, layer norm)."""
    return any(isinstance(m, NORMALIZATIONS) for m in model.modules())


#: keywords of a parameter selection besides globs (see :func:`select_parameters`)
SELECTION_KEYWORDS = ("all", "auto", "head", "norm_affine", "last_block")


def _head_parameters(model: nn.Module, named: list[tuple[str, Tensor]]) -> list[tuple[str, Tensor]]:
    head_name, _ = classifier_head(model)
    prefix = f"{head_name}." if head_name else ""
    return [(n, p) for n, p in named if n.startswith(prefix) and n[len(prefix) :] in ("weight", "bias")]


def _norm_affine_parameters(model: nn.Module) -> list[tuple[str, Tensor]]:
    """The affine weight and bias of every normalization layer (the scale and shift of BatchNorm)."""
    out: list[tuple[str, Tensor]] = []
    for name, module in model.named_modules():
        if isinstance(module, NORMALIZATIONS):
            prefix = f"{name}." if name else ""
            out += [(prefix + n, p) for n, p in module.named_parameters(recurse=False)]
    if not out:
        raise ValueError("params = 'norm_affine': the model has no normalization layer with affine parameters")
    return out


def _last_block_parameters(model: nn.Module, named: list[tuple[str, Tensor]]) -> list[tuple[str, Tensor]]:
    """The parameters of the last block of the model's longest stack of blocks (the ModuleList or
    Sequential with the most children that hold parameters, normalization layers not counted) and
    those registered after it, the classifier head excepted (EfficientNet: the last MBConv block,
    the head convolution and its BatchNorm; a plain Sequential: the last convolution and its norm)."""
    stacks = [  # the children that hold parameters, a normalization layer counted with the one before it
        (name, [c for c, m in module.named_children() if any(True for _ in m.parameters())])
        for name, module in model.named_modules()
        if isinstance(module, (nn.ModuleList, nn.Sequential))
    ]
    stacks = [
        (
            name,
            [c for c in children if not isinstance(model.get_submodule(f"{name}.{c}" if name else c), NORMALIZATIONS)],
        )
        for name, children in stacks
    ]
    stacks = [(name, children) for name, children in stacks if len(children) >= 2]
    if not stacks:
        raise ValueError("params = 'last_block': the model has no ModuleList or Sequential of blocks")
    name, children = max(stacks, key=lambda item: len(item[1]))
    first = f"{name}.{children[-1]}." if name else f"{children[-1]}."
    start = next(i for i, (n, _) in enumerate(named) if n.startswith(first))
    head = {id(p) for _, p in _head_parameters(model, named)}
    return [(n, p) for n, p in named[start:] if id(p) not in head]


def select_parameters(model: nn.Module, selection: str | Iterable[str]) -> list[tuple[str, Tensor]]:
    """Resolve a parameter selection: ``"head"`` (the last linear layer), ``"all"``, ``"auto"``
    (all of a model without normalization layers, else the head: weights followed by a
    normalization are scale-invariant, their gradient is orthogonal to them, so no multipliers
    can meet their stationarity), ``"norm_affine"`` (the normalization layers' scale and shift,
    which are not scale-invariant), ``"last_block"`` (the last block of the model's stack of blocks
    and what follows it, the head excepted), or globs over ``named_parameters`` names
    (``["classifier.*", "features.6.*"]``); a list may mix keywords and globs
    (``["head", "norm_affine"]``), each parameter counted once, in the model's order."""
    named: list[tuple[str, Tensor]] = list(model.named_parameters())
    if selection == "auto":
        selection = "head" if has_normalization(model) else "all"
    if selection == "all":
        return named
    if isinstance(selection, str):
        selection = [selection]
    patterns = list(selection)
    chosen_ids: set[int] = set()
    for item in patterns:
        if item in ("all", "auto"):
            chosen_ids |= {id(p) for _, p in select_parameters(model, item)}
        elif item == "head":
            chosen_ids |= {id(p) for _, p in _head_parameters(model, named)}
        elif item == "norm_affine":
            chosen_ids |= {id(p) for _, p in _norm_affine_parameters(model)}
        elif item == "last_block":
            chosen_ids |= {id(p) for _, p in _last_block_parameters(model, named)}
    globs = [pat for pat in patterns if pat not in SELECTION_KEYWORDS]
    chosen = [(n, p) for n, p in named if id(p) in chosen_ids or any(fnmatch.fnmatchcase(n, g) for g in globs)]
    if not chosen:
        sample = ", ".join(n for n, _ in named[:8])
        raise ValueError(f"no parameter matches {patterns} (parameters are named like: {sample}, ...)")
    return chosen
