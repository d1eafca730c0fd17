"""How natural generated images look, measured beside the verifiers' names of them.

Three measures, each computed the same way for a set of natural photographs (:func:`photos`,
scikit-image's samples) so that a figure reads against theirs:

- :func:`spectrum_slope`: the slope of the radially averaged amplitude spectrum in log-log axes.
  Photographs fall off as ``1/f^a`` with ``a`` near 1 to 2 (slope -1 to -2); white noise is flat
  (slope near 0); over-smoothed images fall off faster than photographs.
- :func:`saturation`: the mean HSV saturation and the fraction of strongly saturated pixels
  (HSV saturation at least ``SATURATED``): generated images tend to vivid, clipped colours.
- :func:`verifier_bn_distance`: inside an independent classifier (the verifier, not the model the
  images were made with), the distance of the images' per-channel feature mean and variance at
  each BatchNorm layer to that layer's running statistics (the statistics of its training photos).
  Per channel the distance is the KL divergence of the two Gaussians, ``KL(N(mu, var) || N(rm,
  rv))``, scale-free, so that layers of any width and magnitude count alike; the result is its
  mean over channels and layers (0: the statistics of the verifier's training images).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from dsv.evaluation.verifier import verifier_inputs
from dsv.plugins import LoadedModel

#: HSV saturation from which a pixel counts as saturated
SATURATED = 0.9
#: scikit-image's sample photographs (natural scenes and objects, in colour, shipped with it)
PHOTOS = ("chelsea", "astronaut", "coffee", "rocket")
_EPS = 1e-5


def _grey(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) or (N, H, W) in [0, 1] -> (N, H, W) luminance (ITU-R 601)."""
    images = np.asarray(images, dtype=np.float64)
    if images.ndim == 4:
        return images[..., :3] @ np.array([0.299, 0.587, 0.114])
    if images.ndim != 3:
        raise ValueError(f"expected images (N, H, W[, 3]), got shape {images.shape}")
    return images


def radial_amplitude(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(frequencies 1 .. min(H, W) // 2 in cycles per image, mean amplitude at each) of one grey
    image: mean removed, Hann-windowed (so that the image's borders add no spectrum of their own),
    the 2-D FFT's amplitude averaged over rings of integer radius."""
    h, w = image.shape
    windowed = (image - image.mean()) * np.outer(np.hanning(h), np.hanning(w))
    amplitude = np.abs(np.fft.fftshift(np.fft.fft2(windowed)))
    fy, fx = np.meshgrid(np.arange(h) - h // 2, np.arange(w) - w // 2, indexing="ij")
    radius = np.rint(np.hypot(fy * (min(h, w) / h), fx * (min(h, w) / w))).astype(int)
    top = min(h, w) // 2
    sums = np.bincount(radius.ravel(), weights=amplitude.ravel(), minlength=top + 1)
    counts = np.bincount(radius.ravel(), minlength=top + 1)
    freqs = np.arange(1, top + 1)
    return freqs.astype(np.float64), sums[1 : top + 1] / np.maximum(counts[1 : top + 1], 1)


def amplitude_slope(image: np.ndarray) -> float:
    """The least-squares slope of log amplitude against log frequency of one grey image, fitted on
    log-spaced frequencies from 2 cycles per image to the Nyquist limit (equal weight per octave,
    not per ring: the many high-frequency rings would otherwise decide the fit alone)."""
    freqs, amplitude = radial_amplitude(image)
    if len(freqs) < 4:
        raise ValueError(f"an image of {image.shape} is too small for a spectrum (at least 8 x 8)")
    chosen = np.unique(np.rint(np.geomspace(2, freqs[-1], num=24)).astype(int)) - 1
    logf, loga = np.log(freqs[chosen]), np.log(np.maximum(amplitude[chosen], 1e-12))
    return float(np.polyfit(logf, loga, 1)[0])


def spectrum_slope(images: np.ndarray) -> dict[str, float]:
    """Mean and standard deviation over ``images`` ((N, H, W, 3) or (N, H, W), [0, 1]) of each
    image's :func:`amplitude_slope`."""
    slopes = [amplitude_slope(g) for g in _grey(images)]
    return {"mean": float(np.mean(slopes)), "std": float(np.std(slopes))}


def hsv_saturation(images: np.ndarray) -> np.ndarray:
    """HSV saturation ``(max - min) / max`` of each pixel of (N, H, W, 3) images in [0, 1]
    (0 where the pixel is black)."""
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected colour images (N, H, W, 3), got shape {images.shape}")
    high, low = images.max(axis=-1), images.min(axis=-1)
    return np.where(high > 0, (high - low) / np.maximum(high, 1e-12), 0.0)


def saturation(images: np.ndarray) -> dict[str, float]:
    """The mean HSV saturation of (N, H, W, 3) images in [0, 1], and the fraction of their pixels
    at saturation :data:`SATURATED` or more."""
    s = hsv_saturation(images)
    return {"mean": float(s.mean()), "saturated_fraction": float((s >= SATURATED).mean())}


def _gaussian_kl(mean: Tensor, var: Tensor, ref_mean: Tensor, ref_var: Tensor) -> Tensor:
    """Per channel KL(N(mean, var) || N(ref_mean, ref_var))."""
    var, ref_var = var.clamp(min=_EPS), ref_var.clamp(min=_EPS)
    return 0.5 * (torch.log(ref_var / var) + (var + (mean - ref_mean) ** 2) / ref_var - 1)


@torch.no_grad()
def bn_layer_distances(model: nn.Module, inputs: Tensor, *, batch_size: int = 16) -> dict[str, float]:
    """For every BatchNorm layer of ``model`` (eval mode) that the forward of ``inputs`` (model
    input space) reaches: the mean over channels of the Gaussian KL divergence from the inputs'
    per-channel feature statistics (over all images and positions) to the layer's running ones."""
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, _BatchNorm) and m.running_mean is not None]
    if not layers:
        raise ValueError("the model has no BatchNorm layer with running statistics")
    sums: dict[str, list[Tensor]] = {}  # name -> [count, sum, sum of squares] per channel

    def record(name: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            f = args[0].double().transpose(0, 1).flatten(1)  # (C, N * H * W)
            got = sums.setdefault(name, [torch.zeros(()), torch.zeros(()), torch.zeros(())])
            got[0] = got[0] + f.shape[1]
            got[1] = got[1] + f.sum(1)
            got[2] = got[2] + f.pow(2).sum(1)

        return hook

    handles = [m.register_forward_pre_hook(record(n)) for n, m in layers]
    try:
        model.eval()
        for start in range(0, len(inputs), batch_size):
            model(inputs[start : start + batch_size])
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name, layer in layers:
        if name not in sums:
            continue
        count, total, squares = sums[name]
        mean = total / count
        var = squares / count - mean**2
        assert layer.running_mean is not None and layer.running_var is not None
        kl = _gaussian_kl(mean, var, layer.running_mean.double(), layer.running_var.double())
        out[name] = float(kl.mean())
    return out


def verifier_bn_distance(images: np.ndarray, verifier: LoadedModel, *, batch_size: int = 16) -> float:
    """The mean over the verifier's BatchNorm layers of :func:`bn_layer_distances` for (N, H, W, 3)
    images in [0, 1], taken to the verifier's input size and normalization as it names them."""
    pixels = torch.from_numpy(np.ascontiguousarray(np.asarray(images, dtype=np.float32).transpose(0, 3, 1, 2)))
    inputs = verifier_inputs(pixels, verifier.spec)
    distances = bn_layer_distances(verifier.module, inputs, batch_size=batch_size)
    return float(np.mean(list(distances.values())))


def natural_measures(images: np.ndarray, verifier: LoadedModel | None = None) -> dict[str, Any]:
    """The three measures of (N, H, W, 3) images in [0, 1]: ``spectrum_slope`` (mean over the
    images), ``spectrum_slope_std``, ``saturation`` (mean HSV saturation), ``saturated_fraction``,
    and with a verifier ``verifier_bn_distance``."""
    slope, sat = spectrum_slope(images), saturation(images)
    out: dict[str, Any] = {
        "spectrum_slope": slope["mean"],
        "spectrum_slope_std": slope["std"],
        "saturation": sat["mean"],
        "saturated_fraction": sat["saturated_fraction"],
    }
    if verifier is not None:
        out["verifier_bn_distance"] = verifier_bn_distance(images, verifier)
    return out


def photos(size: int, names: tuple[str, ...] = PHOTOS) -> np.ndarray:
    """scikit-image's sample photographs (``skimage.data``), each centre-cropped to a square and
    resized (antialiased) to ``size`` x ``size``: (N, size, size, 3) float32 in [0, 1]."""
    try:
        from skimage import data
    except ImportError as exc:  # a test/benchmark dependency, not one of dsv's own
        raise ImportError("the reference photographs need scikit-image: pip install scikit-image") from exc
    out = []
    for name in names:
        image = torch.from_numpy(getattr(data, name)()[..., :3].astype(np.float32) / 255.0).permute(2, 0, 1)
        h, w = image.shape[1:]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        square = image[None, :, top : top + side, left : left + side]
        resized = torch.nn.functional.interpolate(
            square, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
        out.append(resized[0].clamp(0, 1).permute(1, 2, 0).numpy())
    return np.stack(out)
