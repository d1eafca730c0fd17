"""DeepKKT's premise, measured: how close is a trained model to a KKT point of a max-margin problem?

Everything DeepKKT does rests on stationarity, ``theta = sum_c lambda_c grad_theta m_c`` with
``lambda_c >= 0``, over the samples the model was trained on (Lyu & Li 2020; Ji & Telgarsky 2020:
homogeneous networks trained long from a small initialization converge in direction to such a
point). With the samples fixed, the best multipliers are a non-negative least-squares problem:

    residual = min_{lambda >= 0} ||theta - G lambda|| / ||theta||

over the columns ``G[:, c] = grad_theta m_c`` of the chosen parameters. ``theta`` is a direction
(the KKT condition holds up to a positive scale), and the unconstrained size of ``lambda`` absorbs
that scale. The constraints ``m_c`` (the *margin form*):

- ``binary`` (Haim et al. 2022): ``m_i = s_i Phi(x_i)``, ``s_i = +1`` for label 1 and ``-1`` for
  label 0, for a single-output model; for two outputs ``Phi_y(x_i) - Phi_other(x_i)``;
- ``multiclass`` (Buzaglo et al. 2023): ``m_ij = Phi_{y_i}(x_i) - Phi_j(x_i)`` for every class
  ``j != y_i``, one multiplier per pair;
- ``cross_entropy`` (the weight-decay form): the column is ``-grad_theta CE(Phi(x_i), y_i)``,
  one multiplier per sample; the margin reported is the logit margin.

Solved exactly: the Gram matrix ``G^T G`` and ``G^T theta`` are accumulated from per-constraint
gradients (``torch.func``; in blocks when ``G`` outgrows ``memory``), the problem is rewritten over
a square root of the Gram matrix and handed to the active-set NNLS of SciPy (Lawson-Hanson), with
accelerated projected gradient as the fallback, stopped on the NNLS problem's own KKT conditions.
The residual is then recomputed directly, ``theta - G lambda`` by one weighted backward pass.

Normalised margins are ``m_c / min_c m_c`` (1 on the margin). For a model that is positively
homogeneous in all its parameters (bias-free ReLU networks: ``Phi(a theta) = a^L Phi(theta)``,
``L`` found numerically), the theory's normalised margin ``min m / ||theta||^L`` is given too; it
divides every margin by the same number, so which samples lie on the margin does not change.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import Any

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsv.kkt.terms import select_parameters

MARGIN_FORMS = ("auto", "binary", "multiclass", "cross_entropy")

#: a sample lies on the margin when its normalised margin is at most ``1 + ON_MARGIN_TOL``
ON_MARGIN_TOL = 0.05
#: a multiplier counts as non-zero above this fraction of the largest one
LAMBDA_TOL = 1e-3


@attrs.frozen(eq=False)
class PremiseResult:
    """What :func:`measure_premise` measured. Per-constraint arrays are ``(n, m)``: ``m = 1``
    for the binary and cross-entropy forms, ``K - 1`` for the multiclass form (the classes other
    than the sample's own, in order)."""

    #: ``min_{lambda >= 0} ||theta - G lambda|| / ||theta||`` (0: a KKT point; 1: nothing explained)
    residual: float
    #: samples classified right whose smallest normalised margin is at most ``1 + tol``
    on_margin: int
    #: multipliers above ``lambda_tol`` times the largest one
    nonzero_lambda: int
    #: samples measured
    n: int
    #: (n, m) the fitted multipliers (in the units that make ``G lambda`` best match theta)
    lambdas: np.ndarray
    #: (n, m) the constraints' margins divided by the smallest positive one (1 on the margin)
    margins: np.ndarray
    #: the margin form: ``binary``, ``multiclass`` or ``cross_entropy``
    margin: str
    #: the names of the parameters covered
    params: list[str]
    #: (n, m) the constraints' margins as the model gives them
    raw_margins: np.ndarray
    #: (n,) the samples' labels
    labels: np.ndarray
    #: samples with at least one non-zero multiplier (the support vectors)
    support: int
    #: samples the model classifies wrong (a KKT point of the max-margin problem has none)
    misclassified: int
    #: ``L`` where the model is positively homogeneous of degree L in all its parameters, else None
    degree: int | None
    #: the smallest margin (over correctly classified constraints)
    min_margin: float
    #: ``min_margin / ||theta_all||^L`` (the theory's normalised margin) when ``degree`` is known
    theta_margin: float | None
    #: the share of ``sum lambda`` on constraints off the margin (complementary slackness: 0)
    lambda_off_margin: float
    #: scalar parameters covered
    parameters: int
    tol: float
    lambda_tol: float
    #: ``nnls`` (active set, exact) or ``apg`` (accelerated projected gradient)
    solver: str
    #: the NNLS problem's own KKT residual ``||lambda - max(0, lambda - grad)||_inf / ||G^T theta||_inf``
    solver_kkt: float

    @property
    def normalisation(self) -> str:
        """How ``margins`` are normalised, in words."""
        base = "margin / min margin"
        return f"{base} (theta-homogeneous of degree {self.degree})" if self.degree else base

    def summary(self) -> dict[str, Any]:
        """The scalars as JSON values (the select stage's ``premise`` result)."""
        return {
            "residual": self.residual,
            "on_margin": self.on_margin,
            "nonzero_lambda": self.nonzero_lambda,
            "support": self.support,
            "n": self.n,
            "constraints": int(self.lambdas.size),
            "margin": self.margin,
            "params": _describe_params(self.params),
            "parameters": self.parameters,
            "misclassified": self.misclassified,
            "normalisation": self.normalisation,
            "degree": self.degree,
            "min_margin": self.min_margin,
            "theta_margin": self.theta_margin,
            "lambda_off_margin": self.lambda_off_margin,
            "tol": self.tol,
            "lambda_tol": self.lambda_tol,
            "solver": self.solver,
            "solver_kkt": self.solver_kkt,
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """The per-constraint arrays (for an ``.npz`` beside the result)."""
        return {
            "lambdas": self.lambdas,
            "margins": self.margins,
            "raw_margins": self.raw_margins,
            "labels": self.labels,
        }

    def __repr__(self) -> str:
        return (
            f"PremiseResult(residual={self.residual:.4g}, n={self.n}, on_margin={self.on_margin}, "
            f"nonzero_lambda={self.nonzero_lambda}, margin={self.margin!r}, {self.parameters} parameters)"
        )


def _describe_params(names: list[str]) -> str:
    return ", ".join(names) if len(names) <= 6 else f"{', '.join(names[:6])}, ... ({len(names)} tensors)"


# --------------------------------------------------------------------------------------------------
# the constraints: each is w_c . Phi(x_{s_c}) with a fixed weight vector w_c
# --------------------------------------------------------------------------------------------------


def resolve_margin(margin: str, num_outputs: int) -> str:
    """The margin form for a model of ``num_outputs`` outputs (``auto``: binary up to two, else
    multiclass); ValueError for a form the model cannot have."""
    if margin not in MARGIN_FORMS:
        raise ValueError(f"margin: expected one of {', '.join(map(repr, MARGIN_FORMS))}, got {margin!r}")
    if margin == "auto":
        return "binary" if num_outputs <= 2 else "multiclass"
    if margin == "binary" and num_outputs > 2:
        raise ValueError(f"margin 'binary' needs a model of one or two outputs, this one has {num_outputs}")
    if margin == "multiclass" and num_outputs < 2:
        raise ValueError("margin 'multiclass' needs at least two outputs; a single-output model takes 'binary'")
    return margin


def constraints(logits: Tensor, labels: Tensor, margin: str) -> tuple[Tensor, Tensor, Tensor]:
    """(weights (n, m, K), margins (n, m)) of the constraints ``m = w . Phi(x)`` per sample, and
    (n,) whether each sample is classified right. ``margin`` is a resolved form."""
    n, k = logits.shape
    if k == 1:  # a single output: labels 0/1 are the signs -1/+1
        if bool(((labels != 0) & (labels != 1)).any()):
            raise ValueError("a single-output model needs labels 0 and 1")
        sign = (2 * labels - 1).to(logits.dtype)
        value = sign * logits[:, 0]
        if margin == "cross_entropy":  # -d/dPhi log(1 + exp(-s Phi)) = s sigmoid(-s Phi)
            weights = (sign * torch.sigmoid(-value))[:, None, None]
        else:
            weights = sign[:, None, None]
        return weights, value[:, None], value > 0
    own = F.one_hot(labels, k).to(logits.dtype)
    if margin == "cross_entropy":
        weights = (own - logits.softmax(1))[:, None, :]  # -grad_logits CE: (t - p), p held fixed
        others = logits.masked_fill(own.bool(), float("-inf")).amax(1)
        value = logits.gather(1, labels[:, None])[:, 0] - others
        return weights, value[:, None], value > 0
    if margin == "binary":  # two outputs: Phi_y - Phi_other
        weights = (own - (1 - own))[:, None, :]
    else:
        eye = torch.eye(k, dtype=logits.dtype)
        rows = [[own[i] - eye[j] for j in range(k) if j != int(labels[i])] for i in range(n)]
        weights = torch.stack([torch.stack(r) for r in rows])
    values = torch.einsum("nmk,nk->nm", weights, logits)
    return weights, values, values.amin(1) > 0


# --------------------------------------------------------------------------------------------------
# per-constraint gradients, their Gram matrix, the NNLS problem
# --------------------------------------------------------------------------------------------------


class _Gradients:
    """Rows ``grad_theta (w_c . Phi(x_{s_c}))`` over the selected parameters of a float64 model."""

    def __init__(self, model: nn.Module, names: list[str], inputs: Tensor, samples: Tensor, weights: Tensor):
        self.model, self.names = model, names
        self.inputs, self.samples, self.weights = inputs, samples, weights
        params = dict(model.named_parameters())
        self.selected = {n: params[n].detach() for n in names}
        self.rest = {n: p.detach() for n, p in params.items() if n not in self.selected}
        self.rest.update(dict(model.named_buffers()))

    def rows(self, chunk: Tensor) -> Tensor:
        """(len(chunk), P) float64 gradient rows of the constraints ``chunk``."""
        x, w = self.inputs[self.samples[chunk]], self.weights[chunk]
        try:
            return self._vmapped(x, w)
        except (RuntimeError, NotImplementedError):  # an op torch.func cannot batch: one at a time
            return torch.stack([self._one(x[i], w[i]) for i in range(len(chunk))])

    def _vmapped(self, x: Tensor, w: Tensor) -> Tensor:
        from torch.func import functional_call, grad, vmap

        def score(selected: dict[str, Tensor], xi: Tensor, wi: Tensor) -> Tensor:
            return (functional_call(self.model, {**selected, **self.rest}, (xi[None],))[0] * wi).sum()

        grads = vmap(grad(score), in_dims=(None, 0, 0))(self.selected, x, w)
        return torch.cat([grads[n].reshape(len(x), -1) for n in self.names], dim=1)

    def _one(self, xi: Tensor, wi: Tensor) -> Tensor:
        params = dict(self.model.named_parameters())
        thetas = [params[n] for n in self.names]
        for t in thetas:
            t.requires_grad_(True)
        try:
            with torch.enable_grad():
                parts = torch.autograd.grad((self.model(xi[None])[0] * wi).sum(), thetas, allow_unused=True)
        finally:
            for t in thetas:
                t.requires_grad_(False)
        return torch.cat([(p if p is not None else torch.zeros_like(t)).reshape(-1) for p, t in zip(parts, thetas)])


def gram(gradients: _Gradients, theta: Tensor, count: int, memory: int) -> tuple[Tensor, Tensor]:
    """(``G^T G`` (C, C), ``G^T theta`` (C,)), from rows computed ``memory`` bytes at a time (blocks
    of rows recomputed pairwise when all of ``G`` does not fit)."""
    size = max(1, memory // max(1, theta.numel() * 8))
    chunks = [torch.arange(i, min(i + size, count)) for i in range(0, count, size)]
    q = torch.zeros(count, count, dtype=torch.float64)
    b = torch.zeros(count, dtype=torch.float64)
    for a, ca in enumerate(chunks):
        ga = gradients.rows(ca)
        b[ca] = ga @ theta
        q[ca[:, None], ca] = ga @ ga.T
        for cb in chunks[a + 1 :]:
            gb = gradients.rows(cb)
            block = ga @ gb.T
            q[ca[:, None], cb] = block
            q[cb[:, None], ca] = block.T
    return q, b


def nnls_gram(q: Tensor, b: Tensor, *, tol: float = 1e-10, max_iter: int = 20000) -> tuple[np.ndarray, str, float]:
    """``argmin_{lambda >= 0} lambda^T Q lambda - 2 b^T lambda`` (least squares in Gram form): the
    active-set NNLS of SciPy over a square root of ``Q``; accelerated projected gradient, stopped
    when the problem's KKT residual falls below ``tol`` (relative), where SciPy gives up.
    Returns (lambda, solver, relative KKT residual)."""
    from scipy.optimize import nnls

    qn, bn = q.numpy(), b.numpy()
    values_t, vectors_t = torch.linalg.eigh(q)  # (torch's: several times faster than numpy's here)
    values, vectors = values_t.numpy(), vectors_t.numpy()
    keep = values > max(float(values.max()), 0.0) * 1e-13
    root = np.sqrt(values[keep])
    a = root[:, None] * vectors[:, keep].T  # A^T A = Q on its range
    c = (vectors[:, keep].T @ bn) / root  # A^T c = b (b lies in the range of Q)
    solver = "nnls"
    try:
        lam, _ = nnls(a, c, maxiter=max(50 * len(bn), 1000))
    except RuntimeError:
        lam, solver = _apg(qn, bn, tol, max_iter), "apg"
    kkt = _kkt_residual(qn, bn, lam)
    if kkt > 1e-6 and solver == "nnls":  # polish an inexact active set
        polished = _apg(qn, bn, tol, max_iter, start=lam)
        if _kkt_residual(qn, bn, polished) < kkt:
            lam, solver, kkt = polished, "nnls+apg", _kkt_residual(qn, bn, polished)
    return lam, solver, kkt


def _kkt_residual(q: np.ndarray, b: np.ndarray, lam: np.ndarray) -> float:
    """``||lambda - max(0, lambda - grad)||_inf`` over ``||b||_inf`` (grad = Q lambda - b; 0 exactly
    at the NNLS optimum: lambda >= 0, grad >= 0, lambda * grad = 0)."""
    grad = q @ lam - b
    return float(np.abs(lam - np.maximum(0.0, lam - grad)).max() / max(np.abs(b).max(), 1e-300))


def _apg(q: np.ndarray, b: np.ndarray, tol: float, max_iter: int, start: np.ndarray | None = None) -> np.ndarray:
    """Accelerated projected gradient (FISTA with restarts) on the Gram form, to a KKT tolerance."""
    step = 1.0 / max(float(np.linalg.eigvalsh(q).max()), 1e-300)
    lam = np.zeros_like(b) if start is None else start.copy()
    y, t = lam.copy(), 1.0
    for _ in range(max_iter):
        new = np.maximum(0.0, y - step * (q @ y - b))
        t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
        y = new + ((t - 1) / t_new) * (new - lam)
        if (new - lam) @ (q @ new - b) > 0:  # the objective went up: restart the momentum
            y, t_new = new.copy(), 1.0
        lam, t = new, t_new
        if _kkt_residual(q, b, lam) < tol:
            break
    return lam


def multiplier_combination(model: nn.Module, names: list[str], inputs: Tensor, per_sample: Tensor) -> Tensor:
    """``G lambda = grad_theta sum_i per_sample_i . Phi(x_i)`` flattened over the parameters
    ``names`` (``per_sample`` (n, K): each sample's multipliers times its constraint weights), by
    one weighted backward pass."""
    params = dict(model.named_parameters())
    thetas = [params[n] for n in names]
    for t in thetas:
        t.requires_grad_(True)
    try:
        with torch.enable_grad():
            parts = torch.autograd.grad((model(inputs) * per_sample).sum(), thetas, allow_unused=True)
    finally:
        for t in thetas:
            t.requires_grad_(False)
    return torch.cat([(p if p is not None else torch.zeros_like(t)).reshape(-1) for p, t in zip(parts, thetas)])


def homogeneity_degree(model: nn.Module, inputs: Tensor, rtol: float = 1e-6) -> int | None:
    """``L`` when ``Phi(2 theta) = 2^L Phi(theta)`` on ``inputs`` for every output (all parameters
    scaled; a bias-free ReLU network of L linear layers), else None."""
    with torch.no_grad():
        base = model(inputs)
        scaled = copy.deepcopy(model)
        for p in scaled.parameters():
            p.mul_(2.0)
        doubled = scaled(inputs)
    big = base.abs() > base.abs().max() * 1e-6
    if not bool(big.any()):
        return None
    ratio = doubled[big] / base[big]
    if bool((ratio <= 0).any()):
        return None
    exponents = torch.log2(ratio)
    degree = round(float(exponents.median()))
    if degree < 1 or not torch.allclose(ratio, torch.full_like(ratio, 2.0**degree), rtol=rtol, atol=0):
        return None
    return degree


def measure_premise(
    model: nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    params: str | Iterable[str] = "all",
    margin: str = "auto",
    tol: float = ON_MARGIN_TOL,
    lambda_tol: float = LAMBDA_TOL,
    memory: int = 1 << 29,
    batch_size: int = 500,
) -> PremiseResult:
    """How far ``model`` is from a KKT point of the max-margin problem on ``inputs`` (model input
    space, the samples it was trained on) with ``labels``: the best relative stationarity
    ``min_{lambda >= 0} ||theta - G lambda|| / ||theta||`` over ``params`` (a selection as
    :func:`dsv.kkt.select_parameters` takes it: ``"all"``, ``"head"``, globs, ...), the normalised
    margins, how many samples lie on the margin and how many multipliers are non-zero.

    :param margin: ``binary`` (Haim et al.), ``multiclass`` (Buzaglo et al.), ``cross_entropy``
        (the weight-decay form), or ``auto`` (binary for one or two outputs, else multiclass).
    :param tol: a sample is on the margin when its normalised margin is at most ``1 + tol``.
    :param lambda_tol: a multiplier is non-zero above this fraction of the largest one.
    :param memory: bytes of gradient rows held at once (``G`` is built in blocks beyond it).
    :param batch_size: samples per forward pass of the direct residual.

    Everything is computed in float64 on a copy of the model on the CPU; ``model`` is not changed.
    """
    if tol < 0 or lambda_tol < 0:
        raise ValueError(f"tol and lambda_tol must be >= 0, got {tol} and {lambda_tol}")
    if len(inputs) != len(labels) or len(inputs) == 0:
        raise ValueError(f"inputs and labels: expected the same non-zero length, got {len(inputs)} and {len(labels)}")
    work = copy.deepcopy(model).cpu().double().eval()
    for p in work.parameters():
        p.requires_grad_(False)
    x = inputs.detach().cpu().double()
    y = labels.detach().cpu().long()
    names = [n for n, _ in select_parameters(work, params)]
    with torch.no_grad():
        logits = torch.cat([work(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    form = resolve_margin(margin, logits.shape[1])
    weights, raw, right = constraints(logits, y, form)
    n, m = raw.shape
    named = dict(work.named_parameters())
    theta = torch.cat([named[k].detach().reshape(-1) for k in names])
    samples = torch.arange(n).repeat_interleave(m)
    gradients = _Gradients(work, names, x, samples, weights.reshape(n * m, -1))
    q, b = gram(gradients, theta, n * m, memory)
    lam, solver, kkt = nnls_gram(q, b)
    lam_t = torch.from_numpy(lam).reshape(n, m)
    per_sample = torch.einsum("nm,nmk->nk", lam_t, weights)
    residual = _batched_residual(work, names, x, per_sample, batch_size, theta)
    relative = float(residual.norm() / theta.norm().clamp(min=1e-300))
    # the smallest margin of a sample classified right (a misclassified sample's other constraints
    # can be positive and smaller: normalising by one of them would leave nobody on the margin)
    sample_raw = raw.min(dim=1).values
    positive = sample_raw[sample_raw > 0]
    min_margin = float(positive.min()) if len(positive) else float("nan")
    normalised = (raw / min_margin).numpy() if len(positive) else np.full((n, m), np.nan)
    sample_margin = normalised.min(axis=1)
    on_margin_c = normalised <= 1 + tol
    threshold = lambda_tol * max(float(lam.max()), 0.0) if lam.size else 0.0
    nonzero = lam.reshape(n, m) > threshold if threshold > 0 else np.zeros((n, m), bool)
    total = float(lam.sum())
    degree = homogeneity_degree(work, x[:batch_size])
    theta_all = torch.cat([p.detach().reshape(-1) for p in work.parameters()])
    return PremiseResult(
        residual=relative,
        on_margin=int(((sample_margin > 0) & (sample_margin <= 1 + tol)).sum()),
        nonzero_lambda=int(nonzero.sum()),
        n=n,
        lambdas=lam.reshape(n, m),
        margins=normalised,
        margin=form,
        params=names,
        raw_margins=raw.numpy(),
        labels=y.numpy(),
        support=int(nonzero.any(axis=1).sum()),
        misclassified=int((~right).sum()),
        degree=degree,
        min_margin=min_margin,
        theta_margin=(min_margin / float(theta_all.norm()) ** degree if degree is not None and len(positive) else None),
        lambda_off_margin=float(lam.reshape(n, m)[~on_margin_c].sum() / total) if total > 0 else 0.0,
        parameters=int(theta.numel()),
        tol=tol,
        lambda_tol=lambda_tol,
        solver=solver,
        solver_kkt=kkt,
    )


def _batched_residual(
    model: nn.Module, names: list[str], x: Tensor, per_sample: Tensor, batch_size: int, theta: Tensor
) -> Tensor:
    """``theta - G lambda`` over all samples, ``batch_size`` at a time."""
    explained = torch.zeros_like(theta)
    for i in range(0, len(x), batch_size):
        explained += multiplier_combination(model, names, x[i : i + batch_size], per_sample[i : i + batch_size])
    return theta - explained
