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
- ``finite_difference``: the input gradient at ``theta + h s`` against the one at theta (which
  comes with the backward for ``G``), over ``h`` (the DARTS trick, one extra pass); the lambda
  gradient from the CE values of the same pass. The piecewise-linear activation modules (ReLU,
  ReLU6, Hardtanh, LeakyReLU) keep in that pass the gates they had in the forward at theta (a
  :class:`GateTracker` keeps the gates of each forward): otherwise units that cross a kink add
  jumps of size O(1/h), and the estimate is far from the derivative that autograd (and ``exact``)
  computes. Without the gates of theta's forward (another forward came between), central
  differences: passes at ``theta +/- h s``, the second with the gates of the first.

The fast modes return a surrogate scalar: its value is the distance, its gradient in x (through
the inputs the model saw) and in lambda is the mode's.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.autograd import forward_ad
from torch.func import functional_call

FD_EPS = 3e-6  # step of finite_difference, relative to the RMS of the covered parameters
# auto: exact while the double backward covers at most this fraction of the forward's work
# (benchmarks/kkt_step.py: exact costs about 1 + 7 f forward+backwards, finite_difference 2.5 to 3)
AUTO_EXACT_BELOW = 0.2


def work_behind(model: nn.Module, sample: Tensor, params: Sequence[Tensor]) -> float:
    """Fraction of the forward's multiply-adds done in and after the first module (in execution
    order) that holds one of ``params``: the stretch a double backward runs through twice.
    Counted on one forward of ``sample`` (no grad): output elements times fan-in of each module
    with a weight matrix or kernel."""
    covered = {id(p) for p in params}
    work: list[tuple[int, bool]] = []

    def count(module: nn.Module, args: tuple, output) -> None:
        weight = getattr(module, "weight", None)
        macs = 0
        if isinstance(weight, Tensor) and weight.dim() >= 2 and isinstance(output, Tensor):
            macs = output.numel() * (weight.numel() // weight.shape[0])
        work.append((macs, any(id(p) in covered for p in module.parameters(recurse=False))))

    handles = [
        m.register_forward_hook(count)
        for m in model.modules()
        if not any(True for _ in m.children()) or any(True for _ in m.parameters(recurse=False))
    ]
    try:
        with torch.no_grad():
            model(sample)
    finally:
        for h in handles:
            h.remove()
    total = sum(m for m, _ in work)
    first = next((i for i, (_, holds) in enumerate(work) if holds), len(work))
    return sum(m for m, _ in work[first:]) / total if total > 0 else 1.0


def soft_cross_entropy_tangent(logits: Tensor, tangent: Tensor, targets: Tensor) -> Tensor:
    """d/deps of the soft cross entropy along a logit tangent, per candidate:
    ``CE = sum(t) logsumexp(z) - <t, z>``, so ``dCE = <sum(t) softmax(z) - t, dz>``."""
    weight = targets.sum(dim=1, keepdim=True) * torch.softmax(logits, dim=1) - targets
    return (weight * tangent).sum(dim=1)


def chunks(n: int, micro_batch: int = 0) -> list[slice]:
    """Candidate slices of at most ``micro_batch`` (0: all at once) for the extra passes: a pass
    keeps its graph only until its input gradient is taken, so smaller slices, smaller peaks."""
    size = n if micro_batch <= 0 or micro_batch >= n else micro_batch
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def jvp_directional(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    weights: Tensor,
    names: Sequence[str],
    params: Sequence[Tensor],
    direction: Sequence[Tensor],
    need_x: bool = True,
    micro_batch: int = 0,
) -> tuple[Tensor | None, Tensor]:
    """(``grad_inputs sum_i w_i dCE_i`` or None, per-candidate ``dCE_i = d/deps CE_i(theta + eps s)``)
    by forward-mode AD: a forward carrying primal and tangent (only the covered parameters are
    duals), then one backward in the inputs through it."""
    grads: list[Tensor] = []
    tangents: list[Tensor] = []
    for rows in chunks(inputs.shape[0], micro_batch):
        with torch.enable_grad() if need_x else torch.no_grad():
            seen = inputs.detach()[rows].requires_grad_(need_x)
            with forward_ad.dual_level():  # left before the backward: it needs no tangents
                duals = {n: forward_ad.make_dual(p.detach(), s) for n, p, s in zip(names, params, direction)}
                logits, tangent = forward_ad.unpack_dual(functional_call(model, duals, (seen,)))
            if tangent is None:  # no covered parameter reaches the logits
                tangent = torch.zeros_like(logits)
            dce = soft_cross_entropy_tangent(logits, tangent, targets[rows])
            grad = torch.autograd.grad((weights[rows] * dce).sum(), seen)[0] if need_x else None
        if grad is not None:  # need_x
            grads.append(grad)
        tangents.append(dce.detach())
    return (torch.cat(grads) if need_x else None), torch.cat(tangents)


# --------------------------------------------------------------------------------------------------
# finite differences with frozen activation gates
# --------------------------------------------------------------------------------------------------

GATED = (nn.ReLU, nn.Hardtanh, nn.LeakyReLU)  # nn.ReLU6 is a Hardtanh


def _gate_code(module: nn.Module, a: Tensor) -> Tensor:
    """One byte per unit. ReLU, LeakyReLU: above the kink (bool). Hardtanh: 0 at or below the lower
    kink, 1 between, 2 at or above the upper one (uint8, three passes over ``a``)."""
    if isinstance(module, nn.Hardtanh):
        return (a > module.min_val).view(torch.uint8).add_((a >= module.max_val).view(torch.uint8))
    return a > 0


def _apply_gates(module: nn.Module, a: Tensor, code: Tensor) -> Tensor:
    """The activation as the recorded gates make it: linear in ``a``, exact where they agree."""
    if isinstance(module, nn.Hardtanh):
        inside = (code == 1).to(a.dtype)
        fixed = (code == 2).to(a.dtype).mul_(module.max_val)
        if module.min_val != 0:
            fixed = fixed.add_((code == 0).to(a.dtype).mul_(module.min_val))
        return a * inside + fixed
    if isinstance(module, nn.LeakyReLU):
        return a * (code.to(a.dtype) * (1 - module.negative_slope) + module.negative_slope)
    return a * code.to(a.dtype)


class GateTracker:
    """Hooks on a model's piecewise-linear activation modules (ReLU, ReLU6, Hardtanh, LeakyReLU).

    ``track`` (the default): every forward of the model keeps its gate pattern, one byte per
    unit, until the next forward (so the pattern of the forward that made a batch's logits is there
    when the term sees the batch). ``record``: a pass keeps its own pattern. ``replay``: a pass
    applies the kept pattern, call by call. Finite differences replay the pattern of theta in the
    perturbed passes: without it, units crossing a kink add O(1/h) jumps to the estimate.
    """

    def __init__(self, model: nn.Module) -> None:
        self.mode = "track"
        self.patterns: list[Tensor] = []
        self.cursor = 0
        self.rows: slice | None = None  # replay these candidates of the kept pattern only
        self._inputs: weakref.ref[Tensor] | None = None
        self.modules = [m for m in model.modules() if isinstance(m, GATED) and m is not model]
        self._handles = [model.register_forward_pre_hook(self._start)]
        for m in self.modules:
            self._handles.append(m.register_forward_pre_hook(self._record))
            self._handles.append(m.register_forward_hook(self._replay))

    def _start(self, module: nn.Module, args: tuple) -> None:
        if self.mode == "track":
            self.patterns = []
            self._inputs = weakref.ref(args[0]) if args and isinstance(args[0], Tensor) else None

    def _record(self, module: nn.Module, args: tuple) -> None:
        if self.mode in ("track", "record"):  # before the call: an in-place activation overwrites a
            self.patterns.append(_gate_code(module, args[0].detach()))

    def _replay(self, module: nn.Module, args: tuple, output: Tensor):
        if self.mode != "replay":
            return None
        code = self.patterns[self.cursor]
        self.cursor += 1
        code = code if self.rows is None else code[self.rows]
        if torch.equal(_gate_code(module, args[0].detach()), code):
            return None  # no unit crossed a kink here: the module's own output is the frozen one
        return _apply_gates(module, args[0], code)

    def pattern_of(self, inputs: Tensor) -> list[Tensor] | None:
        """The kept pattern if the model's latest forward was on ``inputs`` (and had gates)."""
        seen = self._inputs() if self._inputs is not None else None
        return self.patterns if seen is inputs and self.patterns else None

    @contextlib.contextmanager
    def passes(self) -> Iterator[GateTracker]:
        """Around the perturbed passes: in-place activations run out of place (the replay needs
        the pre-activation); afterwards back to tracking, the kept pattern untouched."""
        kept = self.patterns
        flags = [getattr(m, "inplace", False) for m in self.modules]
        for m in self.modules:
            if hasattr(m, "inplace"):
                m.inplace = False
        try:
            yield self
        finally:
            for m, flag in zip(self.modules, flags):
                if hasattr(m, "inplace"):
                    m.inplace = flag
            self.mode, self.cursor, self.patterns, self.rows = "track", 0, kept, None

    @contextlib.contextmanager
    def paused(self) -> Iterator[GateTracker]:
        """A forward that is none of the batches': the kept pattern stays as it is."""
        mode, self.mode = self.mode, "off"
        try:
            yield self
        finally:
            self.mode = mode

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self.patterns, self._inputs = [], [], None


@contextlib.contextmanager
def frozen_gates(model: nn.Module) -> Iterator[GateTracker]:
    """A GateTracker for the time of a block, in ``record`` mode (then set ``replay``)."""
    tracker = GateTracker(model)
    try:
        with tracker.passes():
            tracker.mode = "record"
            yield tracker
    finally:
        tracker.remove()


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
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    weights: Tensor,
    names: Sequence[str],
    params: Sequence[Tensor],
    direction: Sequence[Tensor],
    step: float,
    need_x: bool = True,
    gates: GateTracker | None = None,
    base: tuple[Tensor | None, Tensor] | None = None,
    micro_batch: int = 0,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor | None, Tensor]:
    """The directional derivative along ``s`` by differences: (``grad_inputs sum_i w_i dCE_i`` or
    None, per-candidate ``dCE_i``).

    With ``base`` = (input gradient, CE values) at theta and ``gates`` holding the pattern of that
    forward: one-sided, one pass at ``theta + step * s`` replaying theta's gates. Otherwise central:
    passes at ``theta +/- step * s``, the second replaying the gates of the first.

    ``dtype`` (e.g. float64, for a float32 model): the passes run in that precision (every
    parameter and buffer cast, the inputs too), always central (the base came from the model's own
    precision); the results come back in the inputs' dtype. The difference of two float32 passes
    carries rounding noise of about 1e-7 / step relative: run to run (thread count, summation
    order) that noise differs, and it decides which way the candidates move.
    """
    n = inputs.shape[0]
    if step == 0.0:  # s = 0: D is flat in G here
        return (torch.zeros_like(inputs) if need_x else None), torch.zeros(n, dtype=inputs.dtype, device=inputs.device)
    out_dtype = inputs.dtype
    wide = dtype is not None and dtype != out_dtype
    if wide:
        base = None  # central differences in the wide precision
        assert dtype is not None
        fixed = {
            k: t.detach().to(dtype) if t.is_floating_point() else t
            for k, t in (*model.named_parameters(), *model.named_buffers())
        }
        inputs, targets, weights = inputs.detach().to(dtype), targets.to(dtype), weights.to(dtype)
        params = [p.detach().to(dtype) for p in params]
        direction = [s.to(dtype) for s in direction]
    else:
        fixed = {}

    def moved(sign: float) -> dict[str, Tensor]:
        return {**fixed, **{k: p.detach() + (sign * step) * s for k, p, s in zip(names, params, direction)}}

    def one_pass(sign: float, rows: slice, mode: str) -> tuple[Tensor | None, Tensor]:
        tracker.mode, tracker.cursor = mode, 0
        if mode == "record":
            tracker.patterns = []
        with torch.enable_grad() if need_x else torch.no_grad():
            seen = inputs.detach()[rows].requires_grad_(need_x)
            logits = functional_call(model, moved(sign), (seen,))
            ce = -(targets[rows] * torch.log_softmax(logits, dim=1)).sum(dim=1)
            grad = torch.autograd.grad((weights[rows] * ce).sum(), seen)[0] if need_x else None
        return grad, ce.detach()

    own = gates is None
    tracker = GateTracker(model) if gates is None else gates
    one_sided = base is not None and bool(tracker.patterns)
    # a kept pattern is sliced per candidate: only where every gated tensor is batch-first
    sliceable = not one_sided or all(code.dim() > 0 and code.shape[0] == n for code in tracker.patterns)
    parts: list[tuple[Tensor | None, Tensor]] = []
    try:
        with tracker.passes():
            for rows in chunks(n, micro_batch if sliceable else 0):
                if one_sided:
                    tracker.rows = rows if sliceable and (rows.start, rows.stop) != (0, n) else None
                    parts.append(one_pass(1.0, rows, "replay"))
                else:
                    g_up, ce_up = one_pass(1.0, rows, "record")
                    g_down, ce_down = one_pass(-1.0, rows, "replay")
                    # the input gradients are there exactly when need_x
                    g_diff = g_up - g_down if g_up is not None and g_down is not None else None
                    parts.append((g_diff, ce_up - ce_down))
    finally:
        if own:
            tracker.remove()
    diff_x = torch.cat([g for g, _ in parts if g is not None]) if need_x else None
    diff_ce = torch.cat([c for _, c in parts])
    if wide:
        return (
            (diff_x / (2 * step)).to(out_dtype) if diff_x is not None else None,
            (diff_ce / (2 * step)).to(out_dtype),
        )
    if one_sided:
        assert base is not None  # one_sided says so
        g_base, ce_base = base
        if need_x:
            assert diff_x is not None and g_base is not None  # the caller's base holds theta's input gradient
            return (diff_x - g_base) / step, (diff_ce - ce_base) / step
        return None, (diff_ce - ce_base) / step
    return ((diff_x / (2 * step)) if diff_x is not None else None), diff_ce / (2 * step)
