"""The reading DeepKKT rests on, checked on a model whose multipliers are known exactly.

A model trained with L2 weight decay ``wd`` (torch's coupled ``weight_decay``) minimizes
``L(theta) = (1/n) sum_i CE_i + (wd/2) |theta|^2``; at a stationary point
``theta = -(1/(n wd)) sum_i grad_theta CE_i``: DeepKKT stationarity over every parameter with
``lambda_i = 1/(n wd)`` on the n training samples. For any theta the residual
``theta + (1/(n wd)) sum_i grad_i`` equals ``grad L / wd``, so it vanishes exactly as training
converges. The model here has a smooth activation (tanh) so that L-BFGS reaches a tight stationary
point in seconds (with ReLU it stalls at a gradient norm of about 1e-3; see docs/reproduction.md).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dsv.builtin.models import MLP
from dsv.kkt.selection import fit_multipliers, head_features
from dsv.kkt.terms import KKTBatch, select_parameters, stationarity_term, zero_multiplier_distance

WD = 1e-2


@pytest.fixture(scope="module")
def digits64():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images / 16.0 - 0.5, dtype=torch.float64).unsqueeze(1)
    return x, torch.tensor(d.target)


def regularized_loss(model: nn.Module, x, y) -> torch.Tensor:
    return F.cross_entropy(model(x), y) + 0.5 * WD * sum(p.pow(2).sum() for p in model.parameters())


def trained(x, y, iterations: int) -> nn.Module:
    torch.manual_seed(0)
    model = MLP(1, 8, 10, width=16, depth=1).double()
    model.features[2] = nn.Tanh()  # smooth, so that the stationary point can be reached tightly
    if iterations:
        opt = torch.optim.LBFGS(
            model.parameters(),
            lr=1,
            max_iter=iterations,
            tolerance_grad=1e-12,
            tolerance_change=1e-15,
            history_size=100,
            line_search_fn="strong_wolfe",
        )

        def closure():
            opt.zero_grad()
            loss = regularized_loss(model, x, y)
            loss.backward()
            return loss

        opt.step(closure)
    return model.eval()


@pytest.fixture(scope="module")
def converged(digits64):
    return trained(*digits64, iterations=600)


def residual(model: nn.Module, x, y, *, mode="exact", distance="l1", alive=None) -> tuple[float, float]:
    """dsv's stationarity term over every parameter with lambda_i = 1/(n wd): (value, value relative
    to lambda = 0)."""
    n = len(y)
    named = select_parameters(model, "all")
    batch = KKTBatch(
        model=model,
        inputs=x,
        logits=model(x),
        targets=F.one_hot(y, 10).double(),
        lambdas=torch.full((n,), 1.0 / (n * WD), dtype=torch.float64),
        alive=torch.ones(n, dtype=torch.bool) if alive is None else alive,
    )
    value = float(stationarity_term(batch, named, distance=distance, mode=mode))
    return value, value / float(zero_multiplier_distance([p for _, p in named], distance))


@pytest.mark.parametrize("mode", ["exact", "jvp", "finite_difference"])
@pytest.mark.parametrize("distance", ["l1", "l2"])
def test_the_stationarity_residual_is_the_regularized_gradient_over_wd(digits64, mode, distance):
    x, y = digits64
    model = trained(x, y, iterations=30)  # anywhere on the way, not only at the end
    grads = torch.autograd.grad(regularized_loss(model, x, y), list(model.parameters()))
    count = sum(p.numel() for p in model.parameters())
    if distance == "l1":
        expected = sum(float((g / WD).abs().sum()) for g in grads) / count
    else:
        expected = sum(float((g / WD).pow(2).sum()) for g in grads) / count
    value, _ = residual(model, x, y, mode=mode, distance=distance)
    assert value == pytest.approx(expected, rel=1e-9)


def test_a_model_trained_to_a_stationary_point_meets_kkt_stationarity_with_lambda_one_over_n_wd(digits64, converged):
    x, y = digits64
    grad_norm = torch.sqrt(
        sum(g.pow(2).sum() for g in torch.autograd.grad(regularized_loss(converged, x, y), converged.parameters()))
    )
    assert grad_norm < 1e-5
    assert (converged(x).argmax(1) == y).double().mean() > 0.95
    for distance in ("l1", "l2"):
        _, relative = residual(converged, x, y, distance=distance)
        assert relative < 1e-3, distance
    # the same multipliers explain a barely trained model poorly: the residual is no free zero
    _, early = residual(trained(x, y, iterations=5), x, y)
    assert early > 0.1
    # and dropping the samples (lambda = 0 for all) explains nothing
    _, none_alive = residual(converged, x, y, alive=torch.zeros(len(y), dtype=torch.bool))
    assert none_alive == pytest.approx(1.0)


def test_the_select_stage_fit_recovers_the_multipliers_scale(digits64, converged):
    """The select stage fits lambda >= 0 over the head for fixed samples: on the converged model it
    meets head stationarity and finds the multipliers' scale 1/(n wd) (a sample whose loss gradient
    is negligible may take any lambda, so single multipliers are not identified, their mean is)."""
    x, y = digits64
    logits, features = head_features(converged, x)
    # lr 0.02: at the select stage's 0.05 Adam reaches 2e-5 by step 100, then oscillates (0.025 at
    # step 1500 on an AMD EPYC, below 1e-3 on the machine this was written on): the last step of an
    # oscillating fit is no measure of what the fit can reach
    lambdas, history = fit_multipliers(
        converged.classifier, logits, features, y, iterations=1500, lr=0.02, lambda_init=0.0, distance="l2"
    )
    assert history[-1] < 1e-3 < history[0]
    assert float(lambdas.mean()) == pytest.approx(1.0 / (len(y) * WD), rel=0.05)
