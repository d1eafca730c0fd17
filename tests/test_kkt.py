"""The DeepKKT terms of dsv.kkt against hand-computed values and finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from dsv import kkt
from dsv.builtin.models import ConvNet

F64 = torch.float64

# Two inputs for linear_3x2 (W = [[1, 0, -1], [0.5, 1, 0]], b = [0, 0.5]):
#   x1 = [1, 2, 0] -> z1 = [1, 3];   x2 = [0, 1, 1] -> z2 = [-1, 1.5]
X = [[1.0, 2.0, 0.0], [0.0, 1.0, 1.0]]
Z = [[1.0, 3.0], [-1.0, 1.5]]
W = [[1.0, 0.0, -1.0], [0.5, 1.0, 0.0]]
B = [0.0, 0.5]
# x1 targets class 0 (misclassified: argmax is 1), x2 targets class 1 (classified right)
T = [[1.0, 0.0], [0.0, 1.0]]


def _softmax(z):
    m = max(z)
    e = [math.exp(v - m) for v in z]
    return [v / sum(e) for v in e]


def _ce(z, t):
    lse = max(z) + math.log(sum(math.exp(v - max(z)) for v in z))
    return sum(ti * (lse - zi) for zi, ti in zip(z, t))


def _inputs():
    return torch.tensor(X, dtype=F64), torch.tensor(T, dtype=F64)


def test_logits_of_the_fixture_are_the_hand_computed_ones(linear_3x2):
    x, _ = _inputs()
    assert torch.allclose(linear_3x2(x), torch.tensor(Z, dtype=F64))


def test_soft_cross_entropy_hand_values_hard_and_soft_targets():
    logits = torch.tensor(Z, dtype=F64)
    ce = kkt.soft_cross_entropy(logits, torch.tensor(T, dtype=F64))
    assert ce.shape == (2,)
    # CE1 = log(e^1 + e^3) - 1 = 2 + log(1 + e^-2);  CE2 = log(e^-1 + e^1.5) - 1.5 = log(1 + e^-2.5)
    assert ce[0].item() == pytest.approx(2 + math.log(1 + math.exp(-2)), rel=1e-12)
    assert ce[1].item() == pytest.approx(math.log(1 + math.exp(-2.5)), rel=1e-12)
    soft = torch.tensor([[0.25, 0.75], [0.5, 0.5]], dtype=F64)
    ce_soft = kkt.soft_cross_entropy(logits, soft)
    assert ce_soft[0].item() == pytest.approx(_ce(Z[0], [0.25, 0.75]), rel=1e-12)
    assert ce_soft[1].item() == pytest.approx(_ce(Z[1], [0.5, 0.5]), rel=1e-12)


def test_misclassified_compares_argmax_of_logits_and_targets():
    logits = torch.tensor(Z, dtype=F64)
    assert kkt.misclassified(logits, torch.tensor(T, dtype=F64)).tolist() == [True, False]
    # a soft target counts by its argmax: 0.3/0.7 points at class 1
    soft = torch.tensor([[0.3, 0.7], [0.7, 0.3]], dtype=F64)
    assert kkt.misclassified(logits, soft).tolist() == [False, True]


def test_primal_loss_counts_only_misclassified_alive_candidates(linear_3x2):
    x, t = _inputs()
    logits = linear_3x2(x)
    alive = torch.tensor([True, True])
    # only x1 is wrong: mean over the 2 alive candidates of mask * CE = CE1 / 2
    expected = _ce(Z[0], T[0]) / 2
    assert kkt.primal_loss(logits, t, alive).item() == pytest.approx(expected, rel=1e-12)


def test_primal_loss_is_zero_once_every_candidate_is_classified_right(linear_3x2):
    x, _ = _inputs()
    logits = linear_3x2(x)
    right = torch.tensor([[0.0, 1.0], [0.0, 1.0]], dtype=F64)  # both argmax are class 1
    loss = kkt.primal_loss(logits, right, torch.tensor([True, True]))
    assert loss.item() == 0.0
    # hinge-like: no gradient pushes an already right candidate further
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(kkt.primal_loss(linear_3x2(xg), right, torch.tensor([True, True])), xg)
    assert torch.count_nonzero(g) == 0


def test_logit_margin_is_the_target_logit_minus_the_best_other():
    logits = torch.tensor([[1.0, 3.0, 2.5], [4.0, -1.0, 0.0]], dtype=F64)
    targets = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.2, 0.8]], dtype=F64)  # soft: argmax class 2
    assert kkt.logit_margin(logits, targets).tolist() == pytest.approx([0.5, -4.0])


def test_boundary_loss_penalizes_only_the_margin_above_its_band():
    from dsv.builtin.losses import Boundary

    logits = torch.tensor([[0.0, 3.0], [0.0, 0.5], [2.0, 0.0], [0.0, 9.0]], dtype=F64, requires_grad=True)
    targets = torch.tensor([[0.0, 1.0]] * 4, dtype=F64)
    alive = torch.tensor([True, True, True, False])
    batch = kkt.KKTBatch(
        model=nn.Identity(), inputs=logits, logits=logits, targets=targets, lambdas=torch.ones(4), alive=alive
    )
    # margins 3, 0.5, -2, (9 dead): only the first is above the band [0, 1], by 2; mean over 3 alive
    loss = Boundary(margin=1.0)(batch)
    assert loss.item() == pytest.approx(2.0 / 3)
    (grad,) = torch.autograd.grad(loss, logits)
    assert grad[1:].abs().sum() == 0  # inside the band, wrong, or dead: no pull
    assert grad[0].tolist() == pytest.approx([-1 / 3, 1 / 3])


def test_primal_loss_excludes_dead_candidates(linear_3x2):
    x, t = _inputs()
    logits = linear_3x2(x)
    # the misclassified x1 dead: nothing left to count
    assert kkt.primal_loss(logits, t, torch.tensor([False, True])).item() == 0.0
    # x2 dead: the mean is over the one alive candidate, so CE1 / 1
    assert kkt.primal_loss(logits, t, torch.tensor([True, False])).item() == pytest.approx(_ce(Z[0], T[0]), rel=1e-12)
    # every candidate dead: 0, not a division by zero
    loss = kkt.primal_loss(logits, t, torch.tensor([False, False]))
    assert torch.isfinite(loss) and loss.item() == 0.0


def _hand_lagrangian_gradient(lambdas):
    """sum_i lambda_i (p_i - t_i) x_i^T (weight) and sum_i lambda_i (p_i - t_i) (bias)."""
    gw = np.zeros((2, 3))
    gb = np.zeros(2)
    for lam, xi, zi, ti in zip(lambdas, X, Z, T):
        r = np.array(_softmax(zi)) - np.array(ti)
        gw += lam * np.outer(r, xi)
        gb += lam * r
    return gw, gb


def test_lagrangian_gradient_is_sum_of_lambda_p_minus_t_x_transposed(linear_3x2):
    x, t = _inputs()
    lambdas = torch.tensor([0.7, 2.0], dtype=F64)
    params = [linear_3x2.weight, linear_3x2.bias]
    gw, gb = kkt.lagrangian_gradient(linear_3x2(x), t, lambdas, params)
    hw, hb = _hand_lagrangian_gradient([0.7, 2.0])
    assert np.allclose(gw.detach().numpy(), hw, rtol=1e-12, atol=1e-14)
    assert np.allclose(gb.detach().numpy(), hb, rtol=1e-12, atol=1e-14)
    # create_graph=True (the default) keeps it differentiable in lambda; False does not
    lam = lambdas.clone().requires_grad_(True)
    assert kkt.lagrangian_gradient(linear_3x2(x), t, lam, params)[0].requires_grad
    assert not kkt.lagrangian_gradient(linear_3x2(x), t, lam, params, create_graph=False)[0].requires_grad


def test_lagrangian_gradient_of_an_unreached_parameter_is_none(linear_3x2):
    x, t = _inputs()
    unused = nn.Parameter(torch.ones(3, dtype=F64))
    grads = kkt.lagrangian_gradient(linear_3x2(x), t, torch.ones(2, dtype=F64), [linear_3x2.weight, unused])
    assert grads[0] is not None and grads[1] is None


def test_stationarity_distance_l1_and_l2_by_hand(linear_3x2):
    x, t = _inputs()
    lambdas = [0.7, 2.0]
    params = [linear_3x2.weight, linear_3x2.bias]
    hw, hb = _hand_lagrangian_gradient(lambdas)
    residual = np.concatenate([(np.array(W) + hw).ravel(), np.array(B) + hb])  # theta - (-sum lambda grad)
    assert residual.size == 8
    lam = torch.tensor(lambdas, dtype=F64)
    grads = kkt.lagrangian_gradient(linear_3x2(x), t, lam, params)
    l1 = kkt.stationarity_distance(params, grads, "l1")
    l2 = kkt.stationarity_distance(params, grads, "l2")
    assert l1.item() == pytest.approx(np.abs(residual).mean(), rel=1e-12)
    assert l2.item() == pytest.approx((residual**2).mean(), rel=1e-12)
    # stationarity_loss is the same with every candidate alive
    loss = kkt.stationarity_loss(linear_3x2(x), t, lam, torch.tensor([True, True]), params, "l1")
    assert loss.item() == pytest.approx(np.abs(residual).mean(), rel=1e-12)


def test_stationarity_distance_with_no_gradient_is_the_parameter_norm(linear_3x2):
    params = [linear_3x2.weight, linear_3x2.bias]
    theta = np.concatenate([np.ravel(W), B])
    assert kkt.zero_multiplier_distance(params, "l1").item() == pytest.approx(np.abs(theta).mean())
    assert kkt.zero_multiplier_distance(params, "l2").item() == pytest.approx((theta**2).mean())
    assert kkt.stationarity_distance(params, [None, None], "l1").item() == pytest.approx(np.abs(theta).mean())


def test_stationarity_distance_rejects_an_unknown_distance(linear_3x2):
    params = [linear_3x2.weight]
    with pytest.raises(ValueError, match=r"unknown stationarity distance 'l3'.*l1, l2"):
        kkt.stationarity_distance(params, [None], "l3")


def test_stationarity_loss_excludes_dead_candidates(tiny_mlp):
    torch.manual_seed(0)
    x = torch.randn(3, 3, dtype=F64, requires_grad=True)
    lam = torch.tensor([0.5, 1.5, 2.5], dtype=F64, requires_grad=True)
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.3, 0.7]], dtype=F64)
    params = [p for _, p in kkt.select_parameters(tiny_mlp, "all")]
    alive = torch.tensor([True, False, True])
    masked = kkt.stationarity_loss(tiny_mlp(x), t, lam, alive, params, "l2")
    keep = torch.tensor([0, 2])
    subset = kkt.stationarity_loss(tiny_mlp(x[keep]), t[keep], lam[keep], torch.ones(2, dtype=torch.bool), params, "l2")
    assert masked.item() == pytest.approx(subset.item(), rel=1e-12)
    gx, gl = torch.autograd.grad(masked, [x, lam])
    assert torch.all(gx[1] == 0) and gl[1] == 0  # the dead candidate gets no push at all
    assert torch.any(gx[0] != 0) and gl[0] != 0


# --------------------------------------------------------------------------------------------------
# gradients of the stationarity term (double backward) against central finite differences
# --------------------------------------------------------------------------------------------------


def _stationarity_setup(tiny_mlp):
    torch.manual_seed(7)
    x = torch.randn(3, 3, dtype=F64)
    lam = torch.tensor([0.8, 1.3, 0.4], dtype=F64)
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.25, 0.75]], dtype=F64)
    params = [p for _, p in kkt.select_parameters(tiny_mlp, "all")]
    alive = torch.ones(3, dtype=torch.bool)
    return x, lam, t, params, alive


def _central_differences(f, tensor, eps):
    grad = torch.zeros_like(tensor)
    flat, gflat = tensor.view(-1), grad.view(-1)
    for k in range(flat.numel()):
        old = flat[k].item()
        flat[k] = old + eps
        up = f()
        flat[k] = old - eps
        down = f()
        flat[k] = old
        gflat[k] = (up - down) / (2 * eps)
    return grad


@pytest.mark.parametrize("distance", ["l2", "l1"])
def test_stationarity_gradients_match_finite_differences(tiny_mlp, distance):
    x, lam, t, params, alive = _stationarity_setup(tiny_mlp)

    def loss_value():
        with torch.enable_grad():  # the loss itself needs grad wrt theta
            return kkt.stationarity_loss(tiny_mlp(x), t, lam, alive, params, distance).item()

    if distance == "l1":  # away from the kinks of |.|: every residual well away from 0
        grads = kkt.lagrangian_gradient(tiny_mlp(x), t, lam, params)
        smallest = min((p.detach() + g).abs().min().item() for p, g in zip(params, grads))
        assert smallest > 1e-3, "test point too close to a kink of the L1 distance"

    xg, lg = x.clone().requires_grad_(True), lam.clone().requires_grad_(True)
    loss = kkt.stationarity_loss(tiny_mlp(xg), t, lg, alive, params, distance)
    gx, gl = torch.autograd.grad(loss, [xg, lg])
    fd_x = _central_differences(loss_value, x, 1e-6)
    fd_l = _central_differences(loss_value, lam, 1e-6)
    assert torch.count_nonzero(gx) > 0  # the mixed derivative d/dx grad_theta CE is really there
    assert torch.allclose(gx, fd_x, rtol=1e-5, atol=1e-8), (gx, fd_x)
    assert torch.allclose(gl, fd_l, rtol=1e-5, atol=1e-8), (gl, fd_l)


def test_mixed_second_derivative_of_the_lagrangian_gradient(tiny_mlp):
    """d/dx <v, sum_i lambda_i grad_theta CE_i(x)> by double backward vs central differences."""
    x, lam, t, params, _ = _stationarity_setup(tiny_mlp)
    torch.manual_seed(3)
    directions = [torch.randn_like(p) for p in params]

    def projected(inputs):
        grads = kkt.lagrangian_gradient(tiny_mlp(inputs), t, lam, params)
        return sum((g * v).sum() for g, v in zip(grads, directions))

    xg = x.clone().requires_grad_(True)
    (mixed,) = torch.autograd.grad(projected(xg), xg)
    fd = _central_differences(lambda: projected(x).item(), x, 1e-6)
    assert torch.count_nonzero(mixed) == mixed.numel()
    assert torch.allclose(mixed, fd, rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------------------------------------
# priors and entropy
# --------------------------------------------------------------------------------------------------

IMAGE_3X3 = [[0.0, 1.0, 3.0], [2.0, 2.0, 0.0], [1.0, 0.0, 1.0]]


def test_total_variation_by_hand():
    x = torch.tensor(IMAGE_3X3).view(1, 1, 3, 3)
    # vertical |differences|: [2, 1, 3] and [1, 2, 1] -> 10 / 6; horizontal: [1, 2], [0, 2], [1, 1] -> 7 / 6
    assert kkt.total_variation(x).item() == pytest.approx(17 / 6)
    flat = torch.full((2, 3, 4, 4), 0.7)
    assert kkt.total_variation(flat).item() == 0.0
    # 2x2 checkerboard: every neighbour differs by 1
    checker = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).view(1, 1, 2, 2)
    assert kkt.total_variation(checker).item() == pytest.approx(2.0)


def test_norm_loss_by_hand():
    x = torch.tensor(IMAGE_3X3).view(1, 1, 3, 3)
    assert kkt.norm_loss(x).item() == pytest.approx(20 / 9)
    assert kkt.norm_loss(torch.tensor([[1.0, -2.0], [3.0, -4.0]]).view(1, 1, 2, 2)).item() == pytest.approx(30 / 4)


def test_prediction_entropy_of_known_distributions():
    probs = torch.tensor([[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]], dtype=F64)
    ent = kkt.prediction_entropy(probs.log() + 5.0)  # logits up to a constant
    assert ent.shape == (2,)
    assert ent[0].item() == pytest.approx(1.5 * math.log(2), rel=1e-12)
    assert ent[1].item() == pytest.approx(math.log(3), rel=1e-12)
    confident = kkt.prediction_entropy(torch.tensor([[100.0, 0.0, 0.0]]))
    assert 0.0 <= confident.item() < 1e-6


def test_newly_infeasible_marks_alive_candidates_with_negative_lambda():
    lambdas = torch.tensor([0.5, -0.1, -0.2, 0.0], requires_grad=True)
    alive = torch.tensor([True, True, False, True])
    out = kkt.newly_infeasible(lambdas, alive)
    assert out.dtype == torch.bool
    assert out.tolist() == [False, True, False, False]  # dead ones stay out; lambda = 0 is feasible


# --------------------------------------------------------------------------------------------------
# which parameters the stationarity term covers
# --------------------------------------------------------------------------------------------------


def test_select_parameters_head_is_the_last_linear_layer(tiny_mlp):
    names = [n for n, _ in kkt.select_parameters(tiny_mlp, "head")]
    assert names == ["2.weight", "2.bias"]
    convnet = ConvNet(1, 8, 10, width=4, depth=2)
    chosen = kkt.select_parameters(convnet, "head")
    assert [n for n, _ in chosen] == ["classifier.weight", "classifier.bias"]
    assert chosen[0][1] is convnet.classifier.weight
    bare = nn.Linear(3, 2)
    assert [n for n, _ in kkt.select_parameters(bare, "head")] == ["weight", "bias"]


def test_select_parameters_head_without_a_linear_layer_fails():
    with pytest.raises(ValueError, match="no nn.Linear"):
        kkt.select_parameters(nn.Sequential(nn.Conv2d(1, 2, 3)), "head")


def test_select_parameters_all_and_globs():
    convnet = ConvNet(1, 8, 10, width=4, depth=2)
    every = kkt.select_parameters(convnet, "all")
    assert [n for n, _ in every] == [n for n, _ in convnet.named_parameters()]
    conv0 = kkt.select_parameters(convnet, "features.0.*")
    assert [n for n, _ in conv0] == ["features.0.weight", "features.0.bias"]
    several = kkt.select_parameters(convnet, ["classifier.*", "features.4.weight"])
    assert [n for n, _ in several] == ["features.4.weight", "classifier.weight", "classifier.bias"]
    weights = kkt.select_parameters(convnet, "*.weight")
    assert all(n.endswith(".weight") for n, _ in weights) and len(weights) == 5


def test_select_parameters_glob_matching_nothing_lists_the_names():
    convnet = ConvNet(1, 8, 10, width=4, depth=2)
    with pytest.raises(ValueError) as info:
        kkt.select_parameters(convnet, ["head.*"])
    message = str(info.value)
    assert "no parameter matches ['head.*']" in message
    assert "features.0.weight" in message and "features.0.bias" in message


def test_auto_parameters_are_all_of_a_normalization_free_model_and_the_head_otherwise():
    from conftest import image_classifier

    from dsv.builtin.models import ConvNet

    plain = image_classifier()  # Flatten, Linear, Tanh, Linear
    assert [n for n, _ in kkt.select_parameters(plain, "auto")] == [n for n, _ in plain.named_parameters()]
    normed = ConvNet(1, 8, 10, width=4, depth=1)  # GroupNorm after each convolution
    assert [n for n, _ in kkt.select_parameters(normed, "auto")] == ["classifier.weight", "classifier.bias"]
    assert kkt.has_normalization(normed) and not kkt.has_normalization(plain)
    assert kkt.has_normalization(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)))
