"""The Python API on digits with a tiny classifier: dsv.synthesize, dsv.open_store, dsv.export_grid,
TensorBoard logging (when tensorboard is installed) and its missing-dependency message."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
import torch
from conftest import SYNTHESIZE_ONLY, plugin_module
from torch import nn

import dsv
from dsv.builtin.losses import Primal, Stationarity
from dsv.errors import ConfigError, DsvError, StoreError
from dsv.pipeline import load_pipeline, load_pipeline_text
from dsv.plugins import DsvPluginManager
from dsv.store.verify import verify

HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST = dict(input_shape=(1, 8, 8), iterations=12, lambda_warmup=3, device="cpu", progress=False)


@pytest.fixture(scope="module")
def classifier(digits_bundle):
    """A user's own small MLP, trained on digits in a plain torch loop (full batch, ~0.2 s)."""
    x, y = digits_bundle.tensors("train")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(80):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    xt, yt = digits_bundle.tensors("test")
    with torch.no_grad():
        assert (model(xt).argmax(1) == yt).float().mean() > 0.85
    return model


def test_result_fields_and_shapes_and_the_model_left_as_it_was(classifier):
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    classifier.train()
    result = dsv.synthesize(classifier, targets=range(10), **FAST)
    assert result.x.shape == (10, 1, 8, 8) and result.x.dtype == np.float32
    assert result.lambdas.shape == (10,) and result.alive.dtype == bool and result.alive.shape == (10,)
    assert np.array_equal(result.labels, np.arange(10))
    assert np.array_equal(result.targets, np.eye(10, dtype=np.float32))
    assert result.store is None
    h = result.history
    assert np.array_equal(h["iteration"], np.arange(1, 13))
    for term in ("primal", "stationarity", "total", "entropy", "accuracy", "alive"):
        assert h[term].shape == (12,) and np.isfinite(h[term]).all(), term
    assert h["lambda"].shape == (12, 10)
    assert result.summary["iterations"] == 12 and result.summary["candidates"] == 10
    assert result.summary["entropy_end"] == pytest.approx(float(h["entropy"][-1]))
    assert result.images().shape == (10, 8, 8, 1)
    # mode, requires_grad and weights as before the call
    assert classifier.training and all(p.requires_grad for p in classifier.parameters())
    assert all(torch.equal(before[k], v) for k, v in classifier.state_dict().items())
    classifier.eval()


def test_soft_targets_as_rows_tables_and_tensors(classifier):
    rows = np.zeros((2, 10))
    rows[0, [1, 7]] = [1.0, 3.0]  # normalized to 0.25 / 0.75
    rows[1, 4] = 2.0
    result = dsv.synthesize(classifier, rows, candidates_per_class=2, **FAST)
    assert result.targets.shape == (4, 10)
    assert result.targets[0, 1] == pytest.approx(0.25) and result.targets[1, 7] == pytest.approx(0.75)
    assert np.array_equal(result.labels, [7, 7, 4, 4])
    mixed = dsv.synthesize(classifier, [{3: 0.5, 8: 0.5}, 2, torch.tensor(5)], **FAST)
    assert np.allclose(mixed.targets[0, [3, 8]], 0.5) and np.array_equal(mixed.labels[1:], [2, 5])
    as_tensor = dsv.synthesize(classifier, torch.tensor(rows, dtype=torch.float32), candidates_per_class=2, **FAST)
    assert np.allclose(as_tensor.targets, result.targets)


def test_store_round_trip_equals_the_in_memory_result(classifier, tmp_path):
    path = tmp_path / "api.zarr"
    kwargs = dict(FAST, priors=[{"name": "tv", "weight": 0.01}], augmentations=["flip"], seed=4)
    stored = dsv.synthesize(classifier, range(10), store=path, checkpoint_every=5, **kwargs)
    assert stored.store == path and verify(path).ok
    opened = dsv.open_store(path)
    memory = dsv.synthesize(classifier, range(10), **kwargs)  # same seed, no store
    for other in (opened, memory):
        for field in ("x", "lambdas", "alive", "labels", "targets"):
            assert np.array_equal(getattr(stored, field), getattr(other, field)), field
        assert sorted(other.history) == sorted(stored.history)
        for name, values in stored.history.items():
            assert values.dtype == other.history[name].dtype and np.array_equal(values, other.history[name]), name
    assert opened.summary["relative_stationarity"] == pytest.approx(memory.summary["relative_stationarity"])
    # the same call again finds the finished run; another config is refused, naming the keys
    again = dsv.synthesize(classifier, range(10), store=path, **kwargs)
    assert np.array_equal(again.x, stored.x) and np.array_equal(again.history["total"], stored.history["total"])
    with pytest.raises(StoreError, match=r"synthesis.lr_x: 0.05 -> 0.1(.|\n)*fresh=True"):
        dsv.synthesize(classifier, range(10), store=path, lr_x=0.1, **kwargs)
    with pytest.raises(StoreError, match="written by dsv.synthesize"):
        dsv.Pipeline.from_store(path)
    for source in (stored, path):
        out = dsv.export_grid(source, tmp_path / "grid.png")
        assert out.read_bytes()[:8] == PNG_MAGIC


def test_input_shape_is_inferred_or_asked_for(classifier):
    class WithShape(nn.Module):
        input_shape = (1, 8, 8)

        def __init__(self):
            super().__init__()
            self.net = classifier

        def forward(self, x):
            return self.net(x)

    class TimmLike(WithShape):
        input_shape = None
        pretrained_cfg = {"input_size": (1, 8, 8), "mean": (0.5,), "std": (0.25,)}

    fast = {k: v for k, v in FAST.items() if k != "input_shape"}
    assert dsv.synthesize(WithShape(), [0, 1], **fast).x.shape == (2, 1, 8, 8)
    timm_like = dsv.synthesize(TimmLike(), [0, 1], **fast)
    assert timm_like.mean == [0.5] and timm_like.std == [0.25]
    with pytest.raises(ConfigError, match=r"input_shape: cannot be inferred from Sequential.*input_shape=\(C, H, W\)"):
        dsv.synthesize(classifier, [0, 1], **fast)
    with pytest.raises(ConfigError, match=r"does not take inputs of shape \(1, 3, 8, 8\)"):
        dsv.synthesize(classifier, [0, 1], input_shape=(3, 8, 8), **fast)


def test_bad_arguments_name_the_key(classifier):
    cases = [
        (dict(lr_x="fast"), 'dsv.synthesize: synthesis.lr_x: expected a number, got "fast"'),
        (dict(momentum=0.9), "dsv.synthesize: synthesis.momentum: unknown key"),
        (dict(priors=[{"name": "tv", "weight": "abc"}]), 'synthesis.priors[0].weight: expected a number, got "abc"'),
        (dict(priors=["tvv"]), "synthesis.priors[0].name: unknown prior 'tvv'; did you mean 'tv'"),
        (dict(iterations=0), "synthesis.iterations: must be at least 1, got 0"),
        (dict(logging={"tensorboard": "x", "every": 3}), "logging.every: unknown key"),
        (dict(losses=[object()]), "synthesis.losses[0]: expected a plugin name"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConfigError) as info:
            dsv.synthesize(classifier, [0, 1], **{**FAST, **kwargs})
        assert message in str(info.value), (kwargs, str(info.value))
    with pytest.raises(ConfigError, match=r"targets\[1\]: class 12 is out of range"):
        dsv.synthesize(classifier, [0, 12], **FAST)
    with pytest.raises(ConfigError, match=r"targets\[0\]: a soft-label row needs 10 weights"):
        dsv.synthesize(classifier, [[0.5, 0.5]], **FAST)
    with pytest.raises(ConfigError, match="targets: empty"):
        dsv.synthesize(classifier, [], **FAST)
    with pytest.raises(ConfigError, match="dsv.synthesize: seed: must be at least 0, got -1"):
        dsv.synthesize(classifier, [0, 1], **{**FAST, "seed": -1})


def test_ready_made_terms_next_to_named_ones(classifier):
    class Brightness:
        weight = 0.1

        def __call__(self, x):
            return x.mean() ** 2

    result = dsv.synthesize(
        classifier,
        range(3),
        losses=[Primal(), Stationarity(weight=2.0, params="head")],
        priors=[Brightness(), "tv"],
        **FAST,
    )
    assert {"primal", "stationarity", "brightness", "tv"} <= set(result.history)
    assert result.summary["stationarity_params"] == 16 * 10 + 10  # attached to the head


# ---- logging ------------------------------------------------------------------------------------


def _stop_at(stop: int) -> DsvPluginManager:
    """A plugin manager with a plugin that stops the run after iteration ``stop`` (as a crash would)."""
    pm = DsvPluginManager(load_entry_points=False)

    def dsv_iteration_completed(run, iteration: int, metrics):
        return iteration == stop

    pm.register(plugin_module("stopper", dsv_iteration_completed=dsv_iteration_completed), "stopper")
    return pm


def _events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboard is not installed")
def test_tensorboard_scalars_and_images_continue_after_a_resume(classifier, tmp_path):
    log_dir, path = tmp_path / "tb", tmp_path / "run.zarr"
    kwargs = dict(
        FAST, iterations=10, store=path, logging={"tensorboard": str(log_dir), "images_every": 4}, priors=["tv"]
    )
    first = dsv.synthesize(classifier, range(4), plugins=_stop_at(6), **kwargs)
    assert first.summary["iterations"] == 6
    resumed = dsv.synthesize(classifier, range(4), **kwargs)  # continues the store after iteration 6
    assert resumed.summary["iterations"] == 10
    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 2  # one per session
    acc = _events(log_dir)
    tags = set(acc.Tags()["scalars"])
    for name in ("primal", "stationarity", "tv", "total", "entropy", "accuracy", "alive", "lambda_mean"):
        assert f"synthesis/{name}" in tags
    steps = [e.step for e in acc.Scalars("synthesis/alive")]
    assert sorted(steps) == list(range(1, 11))  # each iteration once, at its own step
    assert [e.value for e in acc.Scalars("synthesis/total") if e.step == 10] == pytest.approx(
        [float(resumed.history["total"][-1])]
    )
    assert sorted(e.step for e in acc.Images("candidates")) == [0, 4, 6, 8, 10]  # start, every 4, stop, end


def test_missing_tensorboard_is_a_clear_error_before_any_store(classifier, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    path = tmp_path / "run.zarr"
    with pytest.raises(DsvError, match=r"needs the tensorboard package: pip install 'dsv\[tensorboard\]'"):
        dsv.synthesize(classifier, [0, 1], store=path, tensorboard=tmp_path / "tb", **FAST)
    assert not path.exists() and not (tmp_path / "tb").exists()


def test_logging_table_in_a_pipeline_file(tmp_path, convnet_weights, write_pipeline, monkeypatch):
    log_dir = tmp_path / "tb"
    path = write_pipeline(
        tmp_path / "pipeline.toml",
        **SYNTHESIZE_ONLY,
        store=tmp_path / "run.zarr",
        synthesis={"iterations": 2, "classes": [0, 1]},
        tables={"model": {"weights_path": convnet_weights}, "logging": {"tensorboard": log_dir, "images_every": 2}},
    )
    text = path.read_text()
    loaded = load_pipeline(path)
    assert loaded.config.logging.images_every == 2
    assert loaded.config_hash == load_pipeline_text(text.replace("images_every = 2", ""), source="x").config_hash
    with pytest.raises(ConfigError, match=r"logging.images_every: must be at least 0, got -1"):
        load_pipeline_text(text.replace("images_every = 2", "images_every = -1"), source="x")
    if HAS_TENSORBOARD:
        dsv.Pipeline.from_toml(path, progress=False).run()
        assert _events(log_dir).Tags()["scalars"]
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(DsvError, match=r"pip install 'dsv\[tensorboard\]'"):
        dsv.Pipeline.from_toml(path, progress=False, store=str(tmp_path / "other.zarr")).run()
    assert not (tmp_path / "other.zarr").exists()


@pytest.mark.parametrize("bad", [{"device": "meta"}, {"targets": [99]}, {"lr_x": -1.0}])
def test_a_failing_call_leaves_the_callers_model_as_it_was(classifier, bad):
    """A refused device, or a failure after the model moved (a bad target, a bad option): the
    caller's model keeps its device, weights, mode and requires_grad."""
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    classifier.train()
    next(classifier.parameters()).requires_grad_(False)  # a frozen layer stays frozen
    grads = [p.requires_grad for p in classifier.parameters()]
    args = {"targets": range(2), **FAST, **bad}
    with pytest.raises(DsvError):
        dsv.synthesize(classifier, **args)
    assert classifier.training
    assert [p.requires_grad for p in classifier.parameters()] == grads
    assert all(p.device.type == "cpu" for p in classifier.parameters())
    assert all(torch.equal(before[k], v) for k, v in classifier.state_dict().items())
    for p in classifier.parameters():
        p.requires_grad_(True)
    classifier.eval()


def test_channels_last_runs_the_convolutions_in_that_format_and_restores_the_model(digits_bundle, tmp_path):
    x, y = digits_bundle.tensors("train")
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1)  # (a 1-channel input's weights are both formats at once)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), conv, nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 10)
    )
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    seen: list[bool] = []
    conv.register_forward_pre_hook(lambda m, _: seen.append(m.weight.is_contiguous(memory_format=torch.channels_last)))
    kwargs = dict(FAST, iterations=6, augmentations=["flip"], seed=2, input_range=(float(x.min()), float(x.max())))
    plain = dsv.synthesize(model, range(10), **kwargs)
    assert seen and not any(seen)
    seen.clear()
    stored = dsv.synthesize(
        model, range(10), channels_last=True, store=tmp_path / "cl.zarr", checkpoint_every=2, **kwargs
    )
    assert len(seen) > 6 and all(seen[1:])  # every forward of the run (seen[0]: the API's probe of the output size)
    assert conv.weight.is_contiguous() and not conv.weight.is_contiguous(memory_format=torch.channels_last)
    # stationarity over every parameter (no normalization) works on channels_last weights: at the
    # first iteration (same candidates) every term equals the default format's up to the
    # convolution's summation order; later iterations drift apart (Adam's normalized steps turn
    # such differences into whole steps on pixels whose gradient is near zero)
    for term in ("total", "primal", "stationarity"):
        assert stored.history[term][0] == pytest.approx(plain.history[term][0], rel=1e-5), term
        assert np.isfinite(stored.history[term]).all(), term
    memory = dsv.synthesize(model, range(10), channels_last=True, **kwargs)
    assert np.array_equal(memory.x, stored.x) and np.array_equal(memory.lambdas, stored.lambdas)
    with pytest.raises(StoreError, match="synthesis.channels_last"):  # it counts in the config
        dsv.synthesize(model, range(10), store=tmp_path / "cl.zarr", **kwargs)
