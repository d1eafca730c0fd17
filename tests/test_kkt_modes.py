"""The stationarity modes (exact, jvp, finite_difference): same value, same gradients in x and
lambda as the double backward, on tiny float64 models and real digits; parameter subsets, target
rows, L1 and L2; the option checks of the loss term."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import image_classifier
from torch import nn

from dsv import config as cfg
from dsv import kkt
from dsv.builtin.losses import Stationarity
from dsv.builtin.models import ConvNet
from dsv.errors import ConfigError
from dsv.kkt import modes as kkt_modes
from dsv.plugins import get_plugin_manager

F64 = torch.float64
FAST = ("jvp", "finite_difference")


def _cosine(a, b):
    a, b = a.flatten(), b.flatten()
    return float(a @ b / (a.norm() * b.norm()))


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _convnet(classes: int = 10) -> nn.Module:
    """ConvNet (conv -> group norm -> ReLU -> avgpool, twice; linear), float64: ReLU gates are
    what finite differences must keep fixed."""
    torch.manual_seed(0)
    return _freeze(ConvNet(1, 8, classes, width=6, depth=2).double())


def _mlp() -> nn.Module:
    torch.manual_seed(1)
    return _freeze(nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.Tanh(), nn.Linear(12, 10)).double())


def _candidates(digits_bundle, n: int = 5, dtype=F64):
    images, labels = digits_bundle.tensors("train")
    x = ((images[:n] - 0.5) / 0.3).to(dtype)
    targets = F.one_hot((labels[:n] + 1) % 10, 10).to(dtype)  # mostly wrong classes: big gradients
    gen = torch.Generator().manual_seed(5)
    lambdas = (0.5 + torch.rand(n, generator=gen)).to(dtype)
    return x, targets, lambdas


def _gradients(
    model, x, targets, lambdas, *, mode, selection="all", distance="l1", rows=None, alive=None, augment=None, scale=1.0
):
    """(value, d/dx, d/dlambda) of the term as the engine takes them: a batch on (augmented) x."""
    named = kkt.select_parameters(model, selection)
    for _, p in named:
        p.requires_grad_(True)
    x = x.clone().requires_grad_(True)
    lam = lambdas.clone().requires_grad_(True)
    inputs = augment(x) if augment is not None else x
    alive = alive if alive is not None else torch.ones(len(x), dtype=torch.bool)
    batch = kkt.KKTBatch(model, inputs, model(inputs), targets, lam, alive)
    value = kkt.stationarity_term(batch, named, distance=distance, mode=mode, rows=rows, scale=scale)
    gx, gl = torch.autograd.grad(value, [x, lam])
    for _, p in named:
        p.requires_grad_(False)
    return value.detach(), gx, gl


def _check_against_exact(model, x, t, lam, cosine=0.999999, **kw):
    ref_v, ref_x, ref_l = _gradients(model, x, t, lam, mode="exact", **kw)
    assert torch.count_nonzero(ref_x) > 0 and torch.count_nonzero(ref_l) > 0
    for mode in FAST:
        v, gx, gl = _gradients(model, x, t, lam, mode=mode, **kw)
        assert v.item() == pytest.approx(ref_v.item(), rel=1e-12), mode
        assert _cosine(gx, ref_x) > cosine, (mode, _cosine(gx, ref_x))
        assert _cosine(gl, ref_l) > cosine, (mode, _cosine(gl, ref_l))
        assert torch.allclose(gx, ref_x, rtol=1e-4, atol=1e-6 * ref_x.abs().max()), mode
        assert torch.allclose(gl, ref_l, rtol=1e-4, atol=1e-6 * ref_l.abs().max()), mode


@pytest.mark.parametrize("distance", ["l1", "l2"])
@pytest.mark.parametrize("selection", ["all", "head", ["features.0.*", "classifier.bias"]])
def test_fast_modes_match_the_double_backward_on_a_relu_convnet(digits_bundle, distance, selection):
    x, t, lam = _candidates(digits_bundle)
    _check_against_exact(_convnet(), x, t, lam, distance=distance, selection=selection)


@pytest.mark.parametrize("distance", ["l1", "l2"])
def test_fast_modes_match_the_double_backward_on_a_tanh_mlp(digits_bundle, distance):
    x, t, lam = _candidates(digits_bundle)
    _check_against_exact(_mlp(), x, t, lam, distance=distance, scale=3.0)


@pytest.mark.parametrize("distance", ["l1", "l2"])
def test_fast_modes_on_target_rows(digits_bundle, distance):
    x, t, lam = _candidates(digits_bundle, n=3)
    rows = t.sum(dim=0) > 0
    assert int(rows.sum()) == 3
    _check_against_exact(_convnet(), x, t, lam, distance=distance, selection="head", rows=rows)
    # the value is the distance over those rows only, by hand
    model = _convnet()
    head = model.classifier
    head.weight.requires_grad_(True)
    head.bias.requires_grad_(True)
    logits = model(x)
    gw, gb = torch.autograd.grad((lam * kkt.soft_cross_entropy(logits, t)).sum(), [head.weight, head.bias])
    residual = torch.cat([(head.weight.detach() + gw)[rows].flatten(), (head.bias.detach() + gb)[rows]])
    expected = residual.abs().mean() if distance == "l1" else residual.pow(2).mean()
    for mode in kkt.STATIONARITY_MODES:
        batch = kkt.KKTBatch(model, x, model(x), t, lam, torch.ones(3, dtype=torch.bool))
        value = kkt.stationarity_term(
            batch, kkt.select_parameters(model, "head"), distance=distance, mode=mode, rows=rows
        )
        assert value.item() == pytest.approx(expected.item(), rel=1e-12), mode


def test_fast_modes_follow_x_through_an_augmentation(digits_bundle):
    """The surrogate sits on what the model saw: x reaches it through a flip and a resize."""
    x, t, lam = _candidates(digits_bundle, n=4)

    def augment(images):
        flipped = torch.flip(images, dims=[3])
        return F.interpolate(F.interpolate(flipped, size=(12, 12), mode="bilinear"), size=(8, 8), mode="bilinear")

    _check_against_exact(_convnet(), x, t, lam, augment=augment, distance="l2")


def test_dead_candidates_get_no_push_in_any_mode(digits_bundle):
    x, t, lam = _candidates(digits_bundle, n=4)
    alive = torch.tensor([True, False, True, True])
    ref = _gradients(_convnet(), x, t, lam, mode="exact", alive=alive)
    for mode in FAST:
        _, gx, gl = _gradients(_convnet(), x, t, lam, mode=mode, alive=alive)
        assert torch.all(gx[1] == 0) and gl[1] == 0
        assert _cosine(gx, ref[1]) > 0.999999 and _cosine(gl, ref[2]) > 0.999999


def test_finite_differences_need_frozen_gates_on_a_float32_relu_net(digits_bundle):
    """In float32 a ReLU net's units cross their kink between theta + h s and theta - h s; the
    gates recorded in the first pass and replayed in the second keep the estimate on the
    derivative. Without them (the same net with a ReLU that is not a module) it is far off."""

    class FunctionalReLU(nn.Module):
        def forward(self, a):
            return torch.relu(a)

    def fd(model, eps):
        named = kkt.select_parameters(model, "all")
        for _, p in named:
            p.requires_grad_(True)
        xg, lg = x.clone().requires_grad_(True), lam.clone().requires_grad_(True)
        batch = kkt.KKTBatch(model, xg, model(xg), t, lg, torch.ones(len(x), dtype=torch.bool))
        value = kkt.stationarity_term(batch, named, mode="finite_difference", fd_eps=eps)
        grads = torch.autograd.grad(value, [xg, lg])
        for _, p in named:
            p.requires_grad_(False)
        return grads

    x, t, lam = _candidates(digits_bundle, n=8, dtype=torch.float32)
    torch.manual_seed(0)
    model = _freeze(ConvNet(1, 8, 10, width=32, depth=2))
    _, ref_x, ref_l = _gradients(model, x, t, lam, mode="exact")
    for eps in (kkt_modes.FD_EPS, 1e-4):
        fd_x, fd_l = fd(model, eps)
        assert _cosine(fd_x, ref_x) > 0.999 and _cosine(fd_l, ref_l) > 0.999, eps
    for i, layer in enumerate(model.features):
        if isinstance(layer, nn.ReLU):
            model.features[i] = FunctionalReLU()
    raw_x, raw_l = fd(model, 1e-4)
    assert _cosine(raw_x, ref_x) < 0.9  # the lambda part (CE values) hardly feels the kinks
    assert _cosine(raw_l, ref_l) > 0.999


def test_frozen_gates_replay_the_recorded_pattern_and_restore_inplace():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 6),
        nn.ReLU(inplace=True),
        nn.Linear(6, 6),
        nn.ReLU6(),
        nn.Linear(6, 6),
        nn.LeakyReLU(0.1),
        nn.Linear(6, 2),
    ).double()
    a, b = torch.randn(5, 4, dtype=F64), torch.randn(5, 4, dtype=F64)
    with torch.no_grad(), kkt_modes.frozen_gates(model) as gates:
        gates.mode = "record"
        out_a = model(a)
        assert len(gates.patterns) == 3
        gates.mode = "replay"
        assert torch.equal(model(a), out_a)  # the same gates on the same input: the same output
        gates.cursor = 0
        replayed_b = model(b)  # b with a's gates: linear in b's pre-activations
    assert model[1].inplace  # restored
    # recompute by hand: each activation multiplies by a's gate (ReLU6 adds 6 where a saturated)
    with torch.no_grad():
        za1 = model[0](a)
        g1 = za1 > 0
        zb = model[2](model[0](b) * g1)
        za2 = model[2](model[1](za1.clone()))
        inside, top = (za2 > 0) & (za2 < 6), za2 >= 6
        zb = model[4](zb * inside + 6.0 * top)
        za3 = model[4](torch.clamp(za2, 0, 6))
        zb = torch.where(za3 > 0, zb, 0.1 * zb)
        expected = model[6](zb)
    assert torch.allclose(replayed_b, expected, rtol=1e-12, atol=1e-12)


def test_modes_leave_theta_and_its_flags_alone(digits_bundle):
    x, t, lam = _candidates(digits_bundle, n=3)
    model = _convnet()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    term = Stationarity(params=["features.4.*", "classifier.*"], mode="finite_difference")
    term.attach(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    assert [n for n, f in flags.items() if f] == [
        "features.4.weight",
        "features.4.bias",
        "classifier.weight",
        "classifier.bias",
    ]
    for mode in kkt.STATIONARITY_MODES:
        term.mode = mode
        xg, lg = x.clone().requires_grad_(True), lam.clone().requires_grad_(True)
        value = term(kkt.KKTBatch(model, xg, model(xg), t, lg, torch.ones(3, dtype=torch.bool)))
        torch.autograd.grad(value, [xg, lg])
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n]), n
        assert p.requires_grad == flags[n] and p.grad is None, n


def test_summary_is_the_same_value_in_every_mode_without_gradients(digits_bundle):
    x, t, lam = _candidates(digits_bundle, n=3)
    model = _convnet()
    values = {}
    for mode in kkt.STATIONARITY_MODES:
        term = Stationarity(mode=mode, rows="targets", distance="l2")
        term.attach(model)
        batch = kkt.KKTBatch(model, x, model(x), t, lam, torch.ones(3, dtype=torch.bool))
        values[mode] = term.summary(batch)
        loss = term(batch)
        assert not loss.requires_grad  # x and lambda do not require grad: the value only
        assert loss.item() == pytest.approx(values[mode]["relative_stationarity"], rel=1e-12)
    assert values["jvp"] == pytest.approx(values["exact"], rel=1e-12)
    assert values["finite_difference"] == pytest.approx(values["exact"], rel=1e-12)
    assert values["exact"]["stationarity_params"] == 3 * model.classifier.weight.shape[1] + 3


def test_unknown_mode_is_a_clear_error(digits_bundle):
    x, t, lam = _candidates(digits_bundle, n=2)
    model = _convnet()
    batch = kkt.KKTBatch(model, x, model(x), t, lam, torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"unknown stationarity mode 'hvp'.*exact, jvp, finite_difference"):
        kkt.stationarity_term(batch, kkt.select_parameters(model, "head"), mode="hvp")
    registry = get_plugin_manager().registry("losses")
    with pytest.raises(ConfigError) as info:
        cfg.build(
            cfg.PluginSpec(name="stationarity", options={"mode": "hvp"}),
            registry,
            source="p.toml",
            path="synthesis.losses[1]",
        )
    message = str(info.value)
    assert message.startswith("p.toml: synthesis.losses[1]") and "mode" in message and "'hvp'" in message
    assert len(message.splitlines()) == 1
    with pytest.raises(ConfigError, match="fd_eps"):
        cfg.build(
            cfg.PluginSpec(name="stationarity", options={"fd_eps": 0.0}),
            registry,
            source="p.toml",
            path="synthesis.losses[1]",
        )
    term = cfg.build(
        cfg.PluginSpec(name="stationarity", options={"mode": "finite_difference", "fd_eps": 1e-5}),
        registry,
        source="p.toml",
        path="synthesis.losses[1]",
    )
    assert term.mode == "finite_difference" and term.fd_eps == 1e-5


def _term_gradients(term, model, x, t, lam, forward_between=None):
    xg, lg = x.clone().requires_grad_(True), lam.clone().requires_grad_(True)
    batch = kkt.KKTBatch(model, xg, model(xg), t, lg, torch.ones(len(x), dtype=torch.bool))
    if forward_between is not None:
        model(forward_between)  # another forward (an augmented copy): the kept gates are not this batch's
    one_sided = term._gates is not None and term._gates.pattern_of(batch.inputs) is not None
    return torch.autograd.grad(term(batch), [xg, lg]), one_sided


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_the_loss_term_takes_one_sided_differences_from_the_batch_forward(digits_bundle, dtype):
    """Attached in finite_difference mode, the term keeps the gates of every forward: on the
    batch of the latest forward one pass at theta + h s suffices (the input gradient at theta comes
    with the backward for G); after another forward it falls back to central differences."""
    x, t, lam = _candidates(digits_bundle, n=8, dtype=dtype)
    torch.manual_seed(0)
    model = _freeze(ConvNet(1, 8, 10, width=32, depth=2).to(dtype))
    exact = Stationarity(params="all", mode="exact")
    exact.attach(model)
    (ref_x, ref_l), _ = _term_gradients(exact, model, x, t, lam)
    exact.detach()
    term = Stationarity(params="all", mode="finite_difference")
    term.attach(model)
    for between in (None, x.flip(dims=[3])):
        (gx, gl), one_sided = _term_gradients(term, model, x, t, lam, forward_between=between)
        assert one_sided == (between is None)
        assert _cosine(gx, ref_x) > (0.999999 if dtype == F64 else 0.999), (between is None, _cosine(gx, ref_x))
        assert _cosine(gl, ref_l) > (0.999999 if dtype == F64 else 0.999)
    term.detach()
    assert not model._forward_pre_hooks and not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_gate_tracking_sees_in_place_activations_before_they_overwrite():
    torch.manual_seed(0)
    model = _freeze(
        nn.Sequential(
            nn.Linear(4, 8), nn.ReLU(inplace=True), nn.Linear(8, 8), nn.ReLU6(inplace=True), nn.Linear(8, 3)
        ).double()
    )
    tracker = kkt_modes.GateTracker(model)
    a = torch.randn(6, 4, dtype=F64)
    out = model(a)
    relu_code, relu6_code = tracker.pattern_of(a)
    pre1 = model[0](a)
    assert torch.equal(relu_code, pre1 > 0)
    pre2 = model[2](torch.relu(pre1))
    assert torch.equal(relu6_code, (pre2 > 0).to(torch.uint8) + (pre2 >= 6).to(torch.uint8))
    assert tracker.pattern_of(a.clone()) is None  # another tensor: not this forward's pattern
    with tracker.passes():
        assert not model[1].inplace
        tracker.mode = "replay"
        assert torch.equal(model(a), out)
    assert model[1].inplace and model[3].inplace and tracker.mode == "track"
    assert tracker.pattern_of(a) is not None  # the kept pattern survives the passes
    tracker.remove()
    model(a)
    assert tracker.pattern_of(a) is None


@pytest.mark.parametrize("mode", FAST)
def test_micro_batches_give_the_same_gradients(digits_bundle, mode):
    """Extra passes over 2 candidates at a time (the last one alone): the same value and gradients
    as one pass over all 5, for the one-sided (kept gates sliced per candidate) and central schemes."""
    x, t, lam = _candidates(digits_bundle, n=5)
    model = _convnet()
    results = {}
    for micro_batch in (0, 2):
        term = Stationarity(params="all", mode=mode, micro_batch=micro_batch, distance="l2")
        term.attach(model)
        for between in (None, x.flip(dims=[3])):  # one-sided, then central (finite_difference)
            (gx, gl), _ = _term_gradients(term, model, x, t, lam, forward_between=between)
            results[micro_batch, between is None] = (gx, gl)
        term.detach()
    for one_sided in (True, False):
        (ax, al), (bx, bl) = results[0, one_sided], results[2, one_sided]
        assert torch.allclose(ax, bx, rtol=1e-7, atol=1e-12 * ax.abs().max())
        assert torch.allclose(al, bl, rtol=1e-7, atol=1e-12 * al.abs().max())


def test_auto_mode_is_exact_near_the_output_and_jvp_deeper(digits_bundle):
    """auto weighs the stretch of the forward a double backward would run through twice: the
    multiply-adds from the first module holding a covered parameter on (execution order); deeper
    it takes jvp (exact, no rounding noise that changes with the thread count)."""
    x, t, lam = _candidates(digits_bundle, n=2)
    model = _convnet()  # 8x8: conv 1->6 (64 * 9 MACs per channel), pool, conv 6->6 at 4x4, pool, linear 24->10
    first, second, head = 64 * 6 * 9, 16 * 6 * 54, 10 * 24
    assert kkt_modes.work_behind(model, x[:1], [model.classifier.weight]) == pytest.approx(
        head / (first + second + head)
    )
    assert kkt_modes.work_behind(model, x[:1], list(model.features[4].parameters())) == pytest.approx(
        (second + head) / (first + second + head)
    )
    assert kkt_modes.work_behind(model, x[:1], list(model.parameters())) == 1.0
    cases = {
        "head": "exact",
        ("classifier.weight",): "exact",
        ("features.5.*",): "exact",
        "all": "jvp",
        ("features.4.*", "classifier.*"): "jvp",
    }
    for selection, expected in cases.items():
        term = Stationarity(params=selection if isinstance(selection, str) else list(selection))
        assert term.mode == "auto"
        term.attach(model)
        batch = kkt.KKTBatch(model, x, model(x), t, lam, torch.ones(2, dtype=torch.bool))
        term(batch)
        assert term.resolved_mode(batch) == expected, selection
        assert term._gates is None  # no gate hooks left on the model for exact and jvp
        term.detach()
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_an_engine_step_with_augmentation_gets_the_exact_gradient_from_every_mode(make_run):
    """SynthesisRun.step sums the terms on the clean and the augmented batch and takes one
    gradient in x and lambda: the fast modes' surrogates must give the double backward's."""
    grads = {}
    for mode in kkt.STATIONARITY_MODES:
        model = image_classifier(seed=2)
        run = make_run(model=model, augmentations=[lambda t: F.interpolate(t.flip(-1), size=(8, 8), mode="bilinear")])
        term = Stationarity(params="all", distance="l1", weight=1.0, augmented=True, mode=mode)
        term.attach(model)
        run.losses[1] = ("stationarity", term)
        metrics = run.step(1)
        assert {"stationarity", "stationarity_aug"} <= set(metrics)
        grads[mode] = (run.x.grad.clone(), run.lambdas.grad.clone(), metrics["stationarity"])
        term.detach()
    ref_x, ref_l, ref_value = grads["exact"]
    for mode in FAST:
        gx, gl, value = grads[mode]
        assert value == pytest.approx(ref_value, rel=1e-6)
        assert _cosine(gx, ref_x) > 0.9999 and _cosine(gl, ref_l) > 0.9999, mode


class _NoForwardAD(torch.autograd.Function):
    """tanh without a forward-mode derivative (as some third-party operations have none)."""

    @staticmethod
    def forward(ctx, a):
        out = torch.tanh(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return grad * (1 - out * out)


class _Opaque(nn.Module):
    def forward(self, a):
        return _NoForwardAD.apply(a)


def test_auto_falls_back_to_float64_finite_differences_without_forward_ad(digits_bundle):
    """A model with an operation that forward-mode AD cannot differentiate: auto's jvp fails once,
    then the term runs finite differences in float64, whose gradient matches the double backward."""
    x, t, lam = _candidates(digits_bundle, n=4, dtype=torch.float32)
    torch.manual_seed(3)
    model = _freeze(nn.Sequential(nn.Flatten(), nn.Linear(64, 12), _Opaque(), nn.Linear(12, 10)))
    with pytest.raises(NotImplementedError):
        _gradients(model, x, t, lam, mode="jvp")
    _, ref_x, ref_l = _gradients(model, x, t, lam, mode="exact")
    term = Stationarity(params="all", distance="l1", weight=1.0)
    term.attach(model)
    xg = x.clone().requires_grad_(True)
    lg = lam.clone().requires_grad_(True)
    batch = kkt.KKTBatch(model, xg, model(xg), t, lg, torch.ones(4, dtype=torch.bool))
    gx, gl = torch.autograd.grad(term(batch), [xg, lg])
    assert term.resolved_mode(batch) == "finite_difference"
    term.detach()
    assert _cosine(gx, ref_x) > 0.999 and _cosine(gl, ref_l) > 0.999


def test_float64_finite_differences_do_not_move_with_the_thread_count(digits_bundle):
    """The float32 one-sided difference at the default step carries rounding noise that changes
    with the thread count; float64 central differences (and jvp) give the same gradient with 1 and
    with 2 threads to 1e-5, and stay as close to the double backward as the float32 ones."""
    x, t, lam = _candidates(digits_bundle, n=10, dtype=torch.float32)
    torch.manual_seed(4)
    model = _freeze(
        nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    )
    wide = copy.deepcopy(model).double()
    _, ref_x, _ = _gradients(wide, x.double(), t.double(), lam.double(), mode="exact")
    before = torch.get_num_threads()
    found = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for label, options in {
                "jvp": {"mode": "jvp"},
                "fd64": {"mode": "finite_difference", "fd_precision": "float64", "fd_eps": 1e-4},
            }.items():
                term = Stationarity(params="all", distance="l1", weight=1.0, **options)
                term.attach(model)
                xg = x.clone().requires_grad_(True)
                batch = kkt.KKTBatch(model, xg, model(xg), t, lam, torch.ones(10, dtype=torch.bool))
                found[label, threads] = torch.autograd.grad(term(batch), xg)[0]
                term.detach()
                for p in model.parameters():
                    p.requires_grad_(False)
    finally:
        torch.set_num_threads(before)
    for label in ("jvp", "fd64"):
        one, two = found[label, 1], found[label, 2]
        assert float((one - two).norm() / two.norm()) < 1e-5, label
        assert _cosine(two, ref_x.float()) > 0.99, label


def test_the_papers_lambda_fit_lowers_stationarity_and_its_modes_agree(digits_bundle):
    """select's fit = "stationarity": plain steps on lambda lower the relative L1 stationarity over
    every parameter of a trained digits MLP, lambda stays >= 0, and the jvp and float64
    finite-difference directional derivatives give the same multipliers."""
    from dsv.kkt.selection import fit_multipliers_stationarity

    images, labels = digits_bundle.tensors("train")
    x = ((images[:300] - 0.5) / 0.3).float()
    y = labels[:300]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), 1e-2, weight_decay=5e-3)
    for _ in range(200):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    _freeze(model)
    fitted = {}
    for mode in ("jvp", "finite_difference"):
        lam, history = fit_multipliers_stationarity(model, x, y, iterations=40, lr=0.1, mode=mode)
        assert history[0] == pytest.approx(1.0) and history[-1] < 0.97 * history[0], mode
        assert (lam >= 0).all() and (lam > 0).any()
        fitted[mode] = lam
    assert float((fitted["jvp"] - fitted["finite_difference"]).norm() / fitted["jvp"].norm()) < 0.05
