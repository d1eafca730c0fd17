"""Reconstruction through the synthesis (Haim et al. 2022, Buzaglo et al. 2023): the stationarity
term's margin forms against hand-computed gradients of a tiny linear model, the lambda floor, the
softplus-smoothed copy of the model, and the option checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dsv import config as cfg
from dsv import kkt
from dsv.builtin.losses import Stationarity
from dsv.errors import ConfigError
from dsv.kkt.terms import candidate_objective
from dsv.plugins import get_plugin_manager

F64 = torch.float64


def _linear(k: int, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(5, k, bias=False).to(F64)


def _candidates(n: int, k: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=F64)
    labels = torch.arange(n) % k
    lam = torch.rand(n, generator=g, dtype=F64) + 0.1
    return x, F.one_hot(labels, k).to(F64), labels, lam


def _lagrangian(model, x, t, lam, margin):
    return kkt.lagrangian_gradient(model(x), t, lam, [model.weight], create_graph=False, margin=margin)[0]


def test_binary_margin_gradient_is_hand_computed():
    model = _linear(2)
    x, t, labels, lam = _candidates(6, 2)
    expected = torch.zeros(2, 5, dtype=F64)  # sum lambda grad(-m), m = (W_y - W_other) x
    for i in range(6):
        y = int(labels[i])
        expected[y] -= lam[i] * x[i]
        expected[1 - y] += lam[i] * x[i]
    assert torch.allclose(_lagrangian(model, x, t, lam, "binary"), expected)


def test_multiclass_margin_takes_the_smallest_margin():
    model = _linear(3)
    x, t, labels, lam = _candidates(7, 3)
    logits = model(x).detach()
    expected = torch.zeros(3, 5, dtype=F64)
    for i in range(7):
        y = int(labels[i])
        nearest = max((j for j in range(3) if j != y), key=lambda j: float(logits[i, j]))
        expected[y] -= lam[i] * x[i]
        expected[nearest] += lam[i] * x[i]
    assert torch.allclose(_lagrangian(model, x, t, lam, "multiclass"), expected)
    # two outputs: the smallest margin is the binary one
    two = _linear(2)
    x2, t2, _, lam2 = _candidates(4, 2)
    assert torch.allclose(_lagrangian(two, x2, t2, lam2, "multiclass"), _lagrangian(two, x2, t2, lam2, "binary"))


def test_cross_entropy_is_the_default_and_unchanged():
    model = _linear(3)
    x, t, _, lam = _candidates(5, 3)
    expected = ((lam[:, None] * (model(x).softmax(1) - t)).T @ x).detach()
    assert torch.allclose(_lagrangian(model, x, t, lam, "cross_entropy"), expected)
    assert torch.equal(candidate_objective(model(x), t), kkt.soft_cross_entropy(model(x), t))


def test_margin_stationarity_is_zero_at_a_max_margin_kkt_point():
    """theta = +sum lambda grad m: the binary form's distance vanishes there, the CE form's does not."""
    x, t, labels, lam = _candidates(6, 2)
    sign = (2 * t - 1).T  # (2, n): +1 on the own row, -1 on the other
    model = _linear(2)
    with torch.no_grad():
        model.weight.copy_((sign * lam) @ x)
    batch = kkt.KKTBatch(model, x, model(x), t, lam, torch.ones(6, dtype=torch.bool))
    named = kkt.select_parameters(model, "all")
    binary = kkt.stationarity_term(batch, named, distance="l2", mode="exact", margin="binary")
    assert float(binary) == pytest.approx(0.0, abs=1e-24)
    assert float(kkt.stationarity_term(batch, named, distance="l2", mode="exact")) > 1e-3


def test_margin_forms_refuse_what_they_cannot_do():
    x, t, _, lam = _candidates(3, 3)
    model = _linear(3)
    with pytest.raises(ValueError, match="'binary' needs a model of two outputs"):
        candidate_objective(model(x), t, "binary")
    batch = kkt.KKTBatch(model, x, model(x), t, lam, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="exact"):
        kkt.stationarity_term(batch, kkt.select_parameters(model, "all"), mode="jvp", margin="multiclass")


def _term_value_and_lambda_grad(term, model, x, t, lam):
    lg = lam.clone().requires_grad_(True)
    xg = x.clone().requires_grad_(True)
    value = term(kkt.KKTBatch(model, xg, model(xg), t, lg, torch.ones(len(x), dtype=torch.bool)))
    (grad,) = torch.autograd.grad(value, [lg])
    return float(value.detach()), grad


def test_lambda_floor_keeps_the_used_multipliers_above_it():
    model = _linear(2)
    x, t, _, _ = _candidates(4, 2)
    lam = torch.tensor([0.01, -0.3, 0.7, 0.2], dtype=F64)
    floored = Stationarity(margin="binary", lambda_floor=0.25, distance="l2", relative=False)
    plain = Stationarity(margin="binary", distance="l2", relative=False)
    floored.attach(model)
    plain.attach(model)
    value, grad = _term_value_and_lambda_grad(floored, model, x, t, lam)
    reference, _ = _term_value_and_lambda_grad(plain, model, x, t, lam.clamp(min=0.25))
    assert value == pytest.approx(reference, rel=1e-12)
    assert bool((grad[[0, 1, 3]] == 0).all()) and float(grad[2]) != 0.0  # below the floor: held
    assert (
        floored._term_batch(kkt.KKTBatch(model, x, model(x), t, lam, torch.ones(4, dtype=torch.bool))).lambdas.min()
        == 0.25
    )


def test_relu_smoothing_uses_a_softplus_copy_only():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8, bias=False), nn.ReLU(), nn.Linear(8, 2, bias=False)).to(F64)
    for p in model.parameters():
        p.requires_grad_(False)
    before = [p.clone() for p in model.parameters()]
    x, t, _, lam = _candidates(4, 2)
    term = Stationarity(margin="binary", relu_smoothing=50.0, params="all", distance="l2")
    term.attach(model)
    assert isinstance(model[1], nn.ReLU) and not any(p.requires_grad for p in model.parameters())
    smooth = term._model
    assert smooth is not model and isinstance(smooth[1], nn.Softplus) and smooth[1].beta == 50.0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # the value is that of a plain term on the smoothed copy, whatever logits the batch carries
    reference = Stationarity(margin="binary", params="all", distance="l2")
    reference.attach(smooth)
    value, _ = _term_value_and_lambda_grad(term, model, x, t, lam)
    expected, _ = _term_value_and_lambda_grad(reference, smooth, x, t, lam)
    assert value == pytest.approx(expected, rel=1e-12)
    # the mixed derivative in x is no longer zero almost everywhere: it reaches x through the copy
    xg = x.clone().requires_grad_(True)
    out = term(kkt.KKTBatch(model, xg, model(xg), t, lam, torch.ones(4, dtype=torch.bool)))
    (gx,) = torch.autograd.grad(out, [xg])
    assert float(gx.abs().sum()) > 0


@pytest.mark.parametrize(("key", "value"), [("margin", "hinge"), ("lambda_floor", -0.1), ("relu_smoothing", -1.0)])
def test_bad_options_are_refused_naming_the_key(key, value):
    registry = get_plugin_manager().registry("losses")
    with pytest.raises(ConfigError) as info:
        cfg.build(
            cfg.PluginSpec(name="stationarity", options={key: value}),
            registry,
            source="p.toml",
            path="synthesis.losses[0]",
        )
    message = str(info.value)
    assert message.startswith("p.toml: synthesis.losses[0]") and key in message
    term = cfg.build(
        cfg.PluginSpec(
            name="stationarity", options={"margin": "multiclass", "lambda_floor": 0.1, "relu_smoothing": 100.0}
        ),
        registry,
        source="p.toml",
        path="synthesis.losses[0]",
    )
    assert (term.margin, term.lambda_floor, term.relu_smoothing) == ("multiclass", 0.1, 100.0)
    default = Stationarity()
    assert (default.margin, default.lambda_floor, default.relu_smoothing) == ("cross_entropy", 0.0, 0.0)


def test_prune_false_keeps_a_candidate_whose_lambda_goes_negative(make_run):
    # synthesis.prune = false (Haim et al.'s reconstruction: the stationarity term floors lambda
    # itself): a lambda below 0 no longer drops the candidate, which keeps moving; its lambda is
    # projected back to 0 (dual feasibility, as the store checks it)
    assert cfg.SynthesisConfig().prune is True  # the default: dual-feasibility pruning, as before
    pruned = make_run()
    kept = make_run(prune=False)
    for run in (pruned, kept):
        with torch.no_grad():
            run.lambdas[1] = -0.5  # far below what one Adam step can undo
    x_before = kept.x.detach()[1].clone()
    assert pruned.step(1)["alive"] == 3.0 and pruned.alive.tolist() == [True, False, True, True]
    for i in range(1, 4):
        assert kept.step(i)["alive"] == 4.0
    assert bool(kept.alive.all()) and float(kept.lambdas.detach().min()) >= 0
    assert not torch.equal(kept.x.detach()[1], x_before)
