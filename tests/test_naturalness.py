"""The naturalness measures (dsv/evaluation/naturalness.py) on real photographs (scikit-image's
samples) against noise and images of known spectrum and colour."""

from __future__ import annotations

import attrs
import numpy as np
import pytest
import torch
from torch import nn

from dsv.evaluation import naturalness
from dsv.plugins import LoadedModel

pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def photos64():
    return naturalness.photos(64)


@pytest.fixture(scope="module")
def photos128():
    return naturalness.photos(128)


def power_law_noise(size: int, exponent: float, seed: int = 0) -> np.ndarray:
    """Grey noise whose amplitude spectrum falls off as 1 / f^exponent, scaled to [0, 1]."""
    rng = np.random.default_rng(seed)
    fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
    f = np.hypot(fy, fx)
    f[0, 0] = 1.0
    spectrum = np.fft.fft2(rng.standard_normal((size, size))) / f**exponent
    image = np.real(np.fft.ifft2(spectrum))
    return (image - image.min()) / (image.max() - image.min())


# ---- the amplitude spectrum ------------------------------------------------------------------------


def test_photographs_fall_off_like_natural_images_and_white_noise_is_flat(photos128):
    slopes = [naturalness.amplitude_slope(g) for g in naturalness._grey(photos128)]
    assert all(-2.2 < s < -0.9 for s in slopes), slopes
    noise = np.random.default_rng(0).random((3, 128, 128, 3))
    assert abs(naturalness.spectrum_slope(noise)["mean"]) < 0.2


@pytest.mark.parametrize("exponent", [0.5, 1.0, 2.0])
def test_the_slope_of_a_known_power_law_is_recovered(exponent):
    slope = naturalness.amplitude_slope(power_law_noise(128, exponent))
    assert slope == pytest.approx(-exponent, abs=0.15)


def test_an_image_too_small_for_a_spectrum_is_refused():
    with pytest.raises(ValueError, match="too small"):
        naturalness.amplitude_slope(np.zeros((5, 5)))


# ---- colour saturation -----------------------------------------------------------------------------


def test_saturation_of_grey_pure_and_half_coloured_images():
    grey = np.full((1, 8, 8, 3), 0.4)
    red = np.zeros((1, 8, 8, 3))
    red[..., 0] = 0.8
    half = np.concatenate([grey[:, :4], red[:, 4:]], axis=1)
    assert naturalness.saturation(grey) == {"mean": 0.0, "saturated_fraction": 0.0}
    assert naturalness.saturation(red) == {"mean": 1.0, "saturated_fraction": 1.0}
    assert naturalness.saturation(half) == {"mean": pytest.approx(0.5), "saturated_fraction": 0.5}
    assert naturalness.saturation(np.zeros((1, 2, 2, 3)))["mean"] == 0.0  # black: no hue, no saturation


def test_blending_photographs_towards_grey_lowers_their_saturation(photos64):
    grey = naturalness._grey(photos64)[..., None].repeat(3, axis=-1)
    means = [naturalness.saturation((1 - a) * photos64 + a * grey)["mean"] for a in (0.0, 0.5, 0.9)]
    assert 0.2 < means[0] < 0.8 and means[0] > means[1] > means[2]


# ---- BatchNorm statistics inside a verifier --------------------------------------------------------


class ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3)
        self.bn = nn.BatchNorm2d(6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.bn(self.conv(x)).mean(dim=(2, 3)))


def test_the_distance_is_zero_for_the_images_the_running_statistics_came_from(photos64):
    model = ConvBN()
    x = torch.from_numpy(photos64.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        features = model.conv(x)
        model.bn.running_mean.copy_(features.mean(dim=(0, 2, 3)))
        model.bn.running_var.copy_(features.var(dim=(0, 2, 3), unbiased=False))
    model.eval()
    assert naturalness.bn_layer_distances(model, x)["bn"] == pytest.approx(0.0, abs=1e-6)
    noise = torch.rand_like(x)
    assert naturalness.bn_layer_distances(model, noise)["bn"] > 0.05
    with pytest.raises(ValueError, match="no BatchNorm layer"):
        naturalness.bn_layer_distances(nn.Sequential(nn.Conv2d(3, 2, 1)), x)


def test_inside_efficientnet_lite1_photographs_are_nearer_its_statistics_than_noise(photos64):
    from dsv.plugins import ModelRequest, get_plugin_manager

    lite1 = get_plugin_manager().registry("models").get("efficientnet-lite1")(ModelRequest())
    small = LoadedModel(lite1.module, attrs.evolve(lite1.spec, size=64))  # 64 px: a fast test
    noise = np.random.default_rng(0).random(photos64.shape).astype(np.float32)
    on_photos = naturalness.verifier_bn_distance(photos64, small)
    on_noise = naturalness.verifier_bn_distance(noise, small)
    assert 0 < on_photos < on_noise
    measures = naturalness.natural_measures(photos64, small)
    assert measures["verifier_bn_distance"] == pytest.approx(on_photos)
    assert set(measures) == {
        "spectrum_slope",
        "spectrum_slope_std",
        "saturation",
        "saturated_fraction",
        "verifier_bn_distance",
    }
