"""How the stationarity term gets its gradient: the mixed derivative d/dx of a gradient in theta.

With ``G = sum_i lambda_i grad_theta CE_i`` and the residual ``r = theta + G`` over the covered
parameters, the distance ``D = mean |r|`` (L1) or ``mean r^2`` (L2) depends on ``x`` and ``lambda``
through ``G`` only, so with ``s = dD/dG`` (``sign(r) / P`` or ``2 r / P``, held fixed):

    dD/dx        = grad_x <s, G(x)> = grad_x d/deps sum_i lambda_i CE_i(x; theta + eps s)
    dD/dlambda_i = <s, grad_theta CE_i> = d/deps CE_i(x; theta + eps s)

both at ``eps = 0``: one derivative along a single direction of theta, then one gradient in x.
``exact`` takes it by double backward (``create_graph``). The other modes compute ``G`` and ``s``
first (one backward in theta on the logits already there), then the directional derivative:

- ``jvp``: forward-mode AD in theta along ``s`` (dual parameters, one forward that carries
  primal and tangent), then one backward in x through that forward. Exact.
- ``finite_difference``: input gradients at ``theta +/- h s`` (the DARTS trick), their difference
  over ``2h``; the lambda gradient from the same two passes. Piecewise-linear activations
  (ReLU, ReLU6, Hardtanh, LeakyReLU modules) keep in the second pass the gates the first pass saw:
  otherwise units that cross a kink between the two passes add jumps of size O(1/h) and the
  estimate is far from the derivative that autograd (and ``exact``) computes.

The fast modes return a surrogate scalar: its value is the distance, its gradient in x (through
the inputs the model saw) and in lambda is the mode's.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.autograd import forward_ad
from torch.func import functional_call

FD_EPS = 3e-6  # step of finite_difference, relative to the RMS of the covered parameters


def soft_cross_entropy_tangent(logits: Tensor, tangent: Tensor, targets: Tensor) -> Tensor:
    """d/deps of the soft cross entropy along a logit tangent, per candidate:
    ``CE = sum(t) logsumexp(z) - <t, z>``, so ``dCE = <sum(t) softmax(z) - t, dz>``."""
    weight = targets.sum(dim=1, keepdim=True) * torch.softmax(logits, dim=1) - targets
    return (weight * tangent).sum(dim=1)


def jvp_directional(
    model: nn.Module, inputs: Tensor, targets: Tensor, names: Sequence[str], params: Sequence[Tensor],
    direction: Sequence[Tensor],
) -> Tensor:
    """Per-candidate ``d/deps CE_i(inputs; theta + eps s)`` by forward-mode AD, differentiable in
    ``inputs``: one forward carrying primal and tangent (only the covered parameters are duals)."""
    with forward_ad.dual_level():
        duals = {n: forward_ad.make_dual(p.detach(), s) for n, p, s in zip(names, params, direction)}
        logits, tangent = forward_ad.unpack_dual(functional_call(model, duals, (inputs,)))
    if tangent is None:  # no covered parameter reaches the logits
        return torch.zeros(inputs.shape[0], dtype=logits.dtype, device=logits.device)
    return soft_cross_entropy_tangent(logits, tangent, targets)


# --------------------------------------------------------------------------------------------------
# finite differences with frozen activation gates
# --------------------------------------------------------------------------------------------------

GATED = (nn.ReLU, nn.Hardtanh, nn.LeakyReLU)  # nn.ReLU6 is a Hardtanh


class _Gates:
    """Forward hooks on the piecewise-linear activation modules of a model: ``record`` keeps each
    call's gate pattern, ``replay`` applies the recorded patterns (call order) to new inputs."""

    def __init__(self) -> None:
        self.mode = "off"
        self.patterns: list[tuple[Tensor, ...]] = []
        self.cursor = 0

    def __call__(self, module: nn.Module, args: tuple, output: Tensor):
        a = args[0]
        if self.mode == "record":
            if isinstance(module, nn.Hardtanh):
                self.patterns.append(((a > module.min_val) & (a < module.max_val), a >= module.max_val, a <= module.min_val))
            else:
                self.patterns.append((a > 0,))
            return None
        if self.mode != "replay":
            return None
        pattern = self.patterns[self.cursor]
        self.cursor += 1
        if isinstance(module, nn.Hardtanh):
            inside, top, bottom = pattern
            return a * inside + module.max_val * top + module.min_val * bottom
        if isinstance(module, nn.LeakyReLU):
            return torch.where(pattern[0], a, a * module.negative_slope)
        return a * pattern[0]


@contextlib.contextmanager
def frozen_gates(model: nn.Module) -> Iterator[_Gates]:
    """Hooks on every gated activation module; in-place activations run out of place meanwhile
    (a forward hook must still see the pre-activation)."""
    gates = _Gates()
    modules = [m for m in model.modules() if isinstance(m, GATED)]
    inplace = [getattr(m, "inplace", False) for m in modules]
    handles = [m.register_forward_hook(gates) for m in modules]
    for m in modules:
        if hasattr(m, "inplace"):
            m.inplace = False
    try:
        yield gates
    finally:
        for h in handles:
            h.remove()
        for m, flag in zip(modules, inplace):
            if hasattr(m, "inplace"):
                m.inplace = flag


def fd_step(thetas: Sequence[Tensor], directions: Sequence[Tensor], eps: float = FD_EPS) -> float:
    """The step ``h`` of ``theta +/- h s``: ``eps * rms(theta) / rms(s)`` over the covered entries
    (the same relative move whatever the scale of ``s``); 0.0 where ``s`` is 0."""
    count = sum(t.numel() for t in thetas)
    s_rms = (sum(float(s.pow(2).sum()) for s in directions) / max(count, 1)) ** 0.5
    if s_rms == 0.0:
        return 0.0
    theta_rms = (sum(float(t.detach().pow(2).sum()) for t in thetas) / max(count, 1)) ** 0.5
    return eps * (theta_rms if theta_rms > 0 else 1.0) / s_rms


def finite_difference_directional(
    model: nn.Module, inputs: Tensor, targets: Tensor, weights: Tensor, names: Sequence[str],
    params: Sequence[Tensor], direction: Sequence[Tensor], step: float, need_x: bool = True,
) -> tuple[Tensor | None, Tensor]:
    """Central differences along ``s``: (``grad_inputs sum_i w_i dCE_i`` or None, per-candidate
    ``dCE_i``) from input gradients and CE values at ``theta +/- step * s``."""
    if step == 0.0:  # s = 0: D is flat in G here
        zero_ce = torch.zeros(inputs.shape[0], dtype=inputs.dtype, device=inputs.device)
        return (torch.zeros_like(inputs) if need_x else None), zero_ce
    sides = []
    with frozen_gates(model) as gates:
        for sign, mode in ((1.0, "record"), (-1.0, "replay")):
            gates.mode = mode
            moved = {n: p.detach() + (sign * step) * s for n, p, s in zip(names, params, direction)}
            with torch.enable_grad() if need_x else torch.no_grad():
                seen = inputs.detach().requires_grad_(need_x)
                logits = functional_call(model, moved, (seen,))
                ce = -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1)
                grad = torch.autograd.grad((weights * ce).sum(), seen)[0] if need_x else None
            sides.append((grad, ce.detach()))
        gates.patterns = []
    (g_up, ce_up), (g_down, ce_down) = sides
    grad_x = (g_up - g_down) / (2 * step) if need_x else None
    return grad_x, (ce_up - ce_down) / (2 * step)
