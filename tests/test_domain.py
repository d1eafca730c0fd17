"""The input domain (issue 20): derived for each built-in model source and data set, given in a
pipeline (``[model] input_range``) or to ``dsv.synthesize(input_range=...)``, enforced by
``synthesis.domain`` (clamp, penalty, none), and a warning when it is unknown."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import dsv
from dsv.builtin import datasets
from dsv.errors import ConfigError
from dsv.pipeline import Pipeline
from dsv.plugins import ModelRequest, get_plugin_manager, per_channel_range, pixel_domain
from dsv.store import RunStore

SCALED = (-0.5, 0.5)  # digits scaled to [-0.5, 0.5], as a user's own model sees them


@pytest.fixture(scope="module")
def scaled_mlp(digits_bundle):
    """A ReLU MLP (no normalization) trained on digits scaled to [-0.5, 0.5], full batch."""
    images, labels = digits_bundle.tensors("train")
    x = images - 0.5
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), labels).backward()
        optimizer.step()
    return model.eval()


@pytest.mark.parametrize("name", ["digits", "fashion-mnist"])
def test_the_builtin_data_sets_span_the_pixel_range_they_declare(name):
    if name == "fashion-mnist" and not datasets.FASHION_MNIST_DEBIAN.is_dir():
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    bundle = get_plugin_manager().registry("datasets").get(name)()
    assert bundle.pixel_range == (0.0, 1.0)
    for split in ("train", "test"):
        images, _ = bundle.tensors(split)
        assert float(images.min()) == 0.0 and float(images.max()) == 1.0  # the range is reached, not exceeded


def test_the_domain_of_each_builtin_model_source(digits_bundle):
    models = get_plugin_manager().registry("models")
    low, high = pixel_domain(digits_bundle.mean, digits_bundle.std)
    convnet = models.get("convnet")(ModelRequest(data=digits_bundle), width=8, depth=2).spec
    assert convnet.domain == (low, high)
    assert low[0] == pytest.approx(-digits_bundle.mean[0] / digits_bundle.std[0])
    lite0 = models.get("efficientnet-lite0")(ModelRequest()).spec
    assert lite0.domain[0] == pytest.approx((-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225))
    assert lite0.domain[1] == pytest.approx((0.515 / 0.229, 0.544 / 0.224, 0.594 / 0.225))
    module = models.get("module:")(ModelRequest(data=digits_bundle), target="conftest:image_classifier").spec
    assert module.domain == (low, high)


def test_per_channel_ranges_are_checked():
    assert per_channel_range((-1, 2), 3, "r") == ((-1.0,) * 3, (2.0,) * 3)
    assert per_channel_range(([0, -1, -2], [1, 1, 1]), 3, "r") == ((0.0, -1.0, -2.0), (1.0, 1.0, 1.0))
    for bad, message in [
        ((1, 1), "low must be below high"),
        ((0, [1, 2]), "high has 2 values, the model takes 3 channels"),
        ((0,), "expected \\(low, high\\)"),
        ("ab", "expected \\(low, high\\)"),
        ((0, "x"), "high must be a number"),
        ((0, float("nan")), "low must be below high"),
    ]:
        with pytest.raises(ValueError, match=message):
            per_channel_range(bad, 3, "r")


def test_the_api_checks_mean_and_std_per_channel(scaled_mlp):
    for key, bad, message in [
        ("mean", [0.1, 0.2], "mean has 2 values, the model takes 1 channels"),
        ("std", "wide", "std must be a number or one number per channel"),
        ("std", 0.0, "std: must be positive"),
    ]:
        with pytest.raises(ConfigError, match=message):
            dsv.synthesize(
                scaled_mlp, targets=range(2), input_shape=(1, 8, 8), iterations=1, progress=False, **{key: bad}
            )


def test_the_api_validates_input_range(scaled_mlp):
    for bad, message in [((0.5, -0.5), "input_range: low must be below high"), (([0, 0], 1), "low has 2 values")]:
        with pytest.raises(ConfigError, match=message):
            dsv.synthesize(
                scaled_mlp, targets=range(2), input_shape=(1, 8, 8), input_range=bad, iterations=1, progress=False
            )


def test_the_api_warns_once_when_the_domain_is_unknown(scaled_mlp):
    with pytest.warns(UserWarning, match="input_range is not given"):
        result = dsv.synthesize(scaled_mlp, targets=range(2), input_shape=(1, 8, 8), iterations=2, progress=False)
    assert result.x.shape == (2, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning once the domain is known
        dsv.synthesize(
            scaled_mlp, targets=range(2), input_shape=(1, 8, 8), input_range=SCALED, iterations=2, progress=False
        )
        dsv.synthesize(
            scaled_mlp, targets=range(2), input_shape=(1, 8, 8), mean=0.5, std=1.0, iterations=2, progress=False
        )  # pixels in [0, 1] normalized: the domain is [-0.5, 0.5]


@pytest.mark.parametrize("mode", ["clamp", "penalty", "none"])
def test_each_enforcement_mode(scaled_mlp, mode):
    options = dict(
        input_shape=(1, 8, 8),
        input_range=SCALED,
        iterations=60,
        progress=False,
        domain=mode,
        init={"name": "noise", "std": 1.0},
        lambda_warmup=10,
    )
    result = dsv.synthesize(scaled_mlp, targets=range(10), **options)
    outside = float(np.clip(np.abs(result.x) - 0.5, 0, None).mean())
    if mode == "clamp":
        assert result.x.min() >= -0.5 and result.x.max() <= 0.5  # every value, every iteration's end
    elif mode == "penalty":
        assert "domain" in result.history  # the penalty is a recorded term
        free = dsv.synthesize(scaled_mlp, targets=range(10), **{**options, "domain": "none"})
        free_outside = float(np.clip(np.abs(free.x) - 0.5, 0, None).mean())
        assert outside < 0.5 * free_outside  # pulled towards the domain
    else:
        assert outside > 0.1  # noise of std 1 left alone: far outside [-0.5, 0.5]


def test_a_pipeline_keeps_its_candidates_in_the_derived_domain(tmp_path, write_pipeline):
    path = write_pipeline(
        tmp_path / "p.toml",
        name="d",
        store=tmp_path / "d.zarr",
        models=tmp_path / "models",
        synthesis={"iterations": 5, "lambda_warmup": 2, "init": {"name": "noise", "std": 3.0}},
    )
    result = Pipeline.from_toml(path, progress=False).run()
    store = RunStore.open(result.store)
    low, high = store.meta["input_low"][0], store.meta["input_high"][0]
    mean, std = store.meta["mean"][0], store.meta["std"][0]
    assert (low, high) == (pytest.approx(-mean / std), pytest.approx((1 - mean) / std))
    x = store.candidates()["x"]
    assert x.min() >= low and x.max() <= high
    assert (x == low).any() and (x == high).any()  # noise of std 3 was projected onto both bounds


def test_model_input_range_overrides_the_source_and_names_its_key(tmp_path, write_pipeline):
    kwargs = dict(
        name="o",
        store=tmp_path / "o.zarr",
        models=tmp_path / "models",
        synthesis={"iterations": 3, "lambda_warmup": 1, "init": {"name": "noise", "std": 3.0}},
    )
    path = write_pipeline(tmp_path / "o.toml", **kwargs, tables={"model": {"input_range": [-0.1, 0.2]}})
    result = Pipeline.from_toml(path, progress=False).run()
    x = RunStore.open(result.store).candidates()["x"]
    assert x.min() == pytest.approx(-0.1) and x.max() == pytest.approx(0.2)
    path = write_pipeline(tmp_path / "bad.toml", **kwargs, tables={"model": {"input_range": [0.2, -0.1]}})
    with pytest.raises(ConfigError, match=r"bad.toml: model.input_range: low must be below high"):
        Pipeline.from_toml(path, progress=False).run()


def test_the_synthesis_table_checks_the_domain_keys(tmp_path, write_pipeline):
    path = write_pipeline(tmp_path / "k.toml", synthesis={"domain": "squash", "domain_weight": 0.0})
    with pytest.raises(ConfigError) as info:
        Pipeline.from_toml(path)
    assert "synthesis.domain: expected one of 'clamp', 'penalty', 'none', got 'squash'" in str(info.value)
    assert "synthesis.domain_weight: must be positive, got 0.0" in str(info.value)


def test_the_convnet_without_normalization_gets_stationarity_over_every_parameter(digits_bundle, tmp_path):
    from dsv import kkt

    models = get_plugin_manager().registry("models")
    plain = models.get("convnet")(ModelRequest(data=digits_bundle), width=4, depth=1, norm="none").module
    normed = models.get("convnet")(ModelRequest(data=digits_bundle), width=4, depth=1).module
    assert not kkt.has_normalization(plain) and kkt.has_normalization(normed)
    assert len(kkt.select_parameters(plain, "auto")) == 4  # conv and classifier, weight and bias
    assert len(kkt.select_parameters(normed, "auto")) == 2
    batch = models.get("convnet")(ModelRequest(data=digits_bundle), width=4, depth=1, norm="batch").module
    assert kkt.has_normalization(batch) and len(kkt.select_parameters(batch, "auto")) == 2
    assert isinstance(batch.features[1], torch.nn.BatchNorm2d) and not batch.training
    with pytest.raises(ValueError, match="norm: expected one of 'instance', 'batch', 'none', got 'layer'"):
        models.get("convnet")(ModelRequest(data=digits_bundle), norm="layer")


def test_the_noise_initializer_centres_on_the_domain_or_on_the_mean_it_is_given():
    from dsv.builtin.initializers import DOMAIN_STD, NoiseInit
    from dsv.plugins import InitContext, InputSpec

    spec = InputSpec(1, 8, (0.0,), (1.0,), [str(c) for c in range(10)], low=(-1.0,), high=(3.0,))

    def draw(**options):
        context = InitContext(torch.Generator().manual_seed(0), spec)
        x = NoiseInit(**options)((500, 1, 8, 8), torch.zeros(500), context)
        return float(x.mean()), float(x.std())

    mean, std = draw()
    assert abs(mean - 1.0) < 0.02 and abs(std - DOMAIN_STD * 4.0) < 0.02  # the domain's centre, 0.3 of its width
    mean, std = draw(mean=-1.0)  # e.g. a dark background: the domain's low end, the same spread
    assert abs(mean + 1.0) < 0.02 and abs(std - DOMAIN_STD * 4.0) < 0.02
    mean, std = draw(mean=2.0, std=0.5)
    assert abs(mean - 2.0) < 0.01 and abs(std - 0.5) < 0.01


def test_coloured_noise_has_the_neighbour_correlation_of_its_falloff():
    from dsv.builtin.initializers import NoiseInit
    from dsv.plugins import InitContext

    def neighbours(falloff):
        context = InitContext(torch.Generator().manual_seed(0), None)
        x = NoiseInit(std=1.0, falloff=falloff)((200, 1, 8, 8), torch.zeros(200), context)
        pairs = torch.stack([x[..., :, :-1].flatten(), x[..., :, 1:].flatten()])
        return float(torch.corrcoef(pairs)[0, 1]), float(x.std())

    (white, _), (pink, pink_std), (red, _) = neighbours(0.0), neighbours(1.0), neighbours(2.0)
    assert abs(white) < 0.05 < 0.3 < pink < red  # smoother the steeper the falloff
    assert abs(pink_std - 1.0) < 0.02  # standardized, then scaled by std
    with pytest.raises(ValueError):
        NoiseInit(falloff=-1.0)
