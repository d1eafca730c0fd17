"""Candidate initializers: Gaussian noise, real samples of the target class (n-shot), images of
another data set (zero-shot) and image files (edits); registered by name in
:mod:`dsv.builtin.initializers`, and the start the baselines share with a synthesis."""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np
import torch
from torch import Tensor

from dsv.errors import DsvError
from dsv.plugins import InitContext, get_plugin_manager

# the noise initializer's std, as a fraction of the input domain's width (digits: 0.38 of it is
# the data's own std; a uniform spread over the domain would be 0.29)
DOMAIN_STD = 0.3


def coloured(noise: Tensor, falloff: float) -> Tensor:
    """White noise (N, C, H, W) shaped to an amplitude spectrum ``1 / f ** falloff`` (f in cycles
    per pixel, the lowest nonzero frequency standing in for 0), then standardized per image and
    channel."""
    h, w = noise.shape[-2:]
    fy, fx = torch.fft.fftfreq(h).view(-1, 1), torch.fft.rfftfreq(w).view(1, -1)
    f = (fy**2 + fx**2).sqrt().clamp_min(1.0 / max(h, w))
    shaped = torch.fft.irfft2(torch.fft.rfft2(noise) / f**falloff, s=(h, w))
    shaped = shaped - shaped.mean(dim=(-2, -1), keepdim=True)
    return shaped / shaped.std(dim=(-2, -1), keepdim=True).clamp_min(1e-12)


@attrs.define(kw_only=True)
class NoiseInit:
    """Gaussian noise in model input space (Algorithm 1: "initialized from noise"). ``std`` given:
    N(0, std^2). Not given: from the input domain when the model's spec knows it, centred in it
    with a std of ``DOMAIN_STD`` times its width per channel (benchmarks/input_domain.py: noise
    at the data's scale, then kept in the domain, beat std-1 noise on a digits MLP); N(0, 1)
    otherwise. ``mean``: the noise's mean in model input units instead (e.g. the domain's low end,
    a dark background). ``falloff``: coloured noise, amplitude spectrum ``1 / f ** falloff`` (0:
    white; 1: the falloff of natural images), each image rescaled to zero mean and unit std first.
    ``shared``: one noise image for every candidate (an interpolation strip then differs by its
    targets only)."""

    #: the noise's standard deviation; not set: from the input domain (see above), else 1
    std: float | None = None
    #: the noise's mean in model input units; not set: the domain's centre (else 0)
    mean: float | None = None
    #: coloured noise, amplitude spectrum ``1 / f ** falloff`` (0: white; 1: natural images')
    falloff: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))
    #: one noise image for every candidate
    shared: bool = False

    def __call__(self, shape, labels: Tensor, context: InitContext) -> Tensor:
        draw = (1, *shape[1:]) if self.shared else shape
        noise = torch.randn(draw, generator=context.generator)
        if self.falloff > 0:
            noise = coloured(noise, self.falloff)
        domain = getattr(context.spec, "domain", None)
        centre: float | Tensor
        if self.std is not None or domain is None:
            noise, centre = noise * (1.0 if self.std is None else self.std), 0.0
        else:
            low, high = (torch.tensor(v, dtype=noise.dtype).view(1, -1, 1, 1) for v in domain)
            noise, centre = noise * DOMAIN_STD * (high - low), (low + high) / 2
        noise = (centre if self.mean is None else self.mean) + noise
        return noise.expand(shape).clone() if self.shared else noise


@attrs.define(kw_only=True)
class RealInit:
    """Start from random training images of each candidate's target class (n-shot)."""

    #: the split of [data] the images are drawn from
    split: str = attrs.field(default="train", validator=attrs.validators.in_(("train", "test")))
    #: real images seen per class (few-shot): the candidates of a class start from these, in turn;
    #: 0: a different image for every candidate
    shots: int = attrs.field(default=0, validator=attrs.validators.ge(0))

    def __call__(self, shape, labels: Tensor, context: InitContext) -> Tensor:
        if context.data is None:
            raise DsvError("init 'real' needs a [data] table to draw images from")
        images, targets = context.data.tensors(self.split)
        out = torch.empty(shape)
        for cls in labels.unique().tolist():
            pool = (targets == cls).nonzero().flatten()
            slots = (labels == cls).nonzero().flatten()
            drawn = min(self.shots, len(slots)) if self.shots else len(slots)
            if len(pool) < drawn:
                raise DsvError(f"init 'real': class {cls} has {len(pool)} images, {drawn} needed")
            seen = pool[torch.randperm(len(pool), generator=context.generator)[:drawn]]
            pick = seen[torch.arange(len(slots)) % drawn]
            chosen = images[pick]
            if chosen.shape[-2:] != tuple(shape[-2:]):
                chosen = torch.nn.functional.interpolate(chosen, size=shape[-2:], mode="bilinear", antialias=True)
            out[slots] = context.normalize(chosen)
        return out


def read_image(path: str | Path, channels: int, size: int) -> Tensor:
    """A PNG or JPEG file as a (channels, size, size) tensor in [0, 1], resized (antialiased) to
    ``size`` x ``size`` after a center crop to a square. Errors name the file."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as file:
            img = file.convert("L" if channels == 1 else "RGB")
            pixels = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
    except FileNotFoundError:
        raise DsvError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DsvError(f"{path}: not a readable image ({exc})") from None
    pixels = pixels[None] if pixels.dim() == 2 else pixels.permute(2, 0, 1)
    side = min(pixels.shape[-2:])
    top, left = (pixels.shape[-2] - side) // 2, (pixels.shape[-1] - side) // 2
    square = pixels[:, top : top + side, left : left + side]
    return torch.nn.functional.interpolate(
        square[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )[0].clamp(0, 1)


@attrs.define(kw_only=True)
class ImageInit:
    """Start candidate ``i`` from image file ``paths[i]`` (PNG or JPEG): the start of an edit."""

    #: one PNG or JPEG file per candidate
    paths: list[str]

    def __call__(self, shape, labels: Tensor, context: InitContext) -> Tensor:
        if len(self.paths) != shape[0]:
            raise DsvError(f"init 'image': {len(self.paths)} image files for {shape[0]} candidates")
        images = torch.stack([read_image(p, shape[1], shape[-1]) for p in self.paths])
        return context.normalize(images)


def fit_images(images: Tensor, shape) -> Tensor:
    """Images (N, C', H', W') in [0, 1] resized and channel-matched to ``shape`` (N, C, H, W)."""
    channels = shape[1]
    if images.shape[1] != channels:
        images = images.mean(dim=1, keepdim=True)  # to grey, then repeated if colour is needed
        images = images.expand(-1, channels, -1, -1)
    if images.shape[-2:] != tuple(shape[-2:]):
        images = torch.nn.functional.interpolate(
            images, size=tuple(shape[-2:]), mode="bilinear", antialias=images.shape[-1] > shape[-1]
        )
    return images.clamp(0.0, 1.0)


@attrs.define(kw_only=True)
class OtherDataInit:
    """Start from random images of another data set (zero-shot distillation: no image of the
    model's own training set is seen). ``dataset`` is a registered data set name (e.g.
    ``digits``, upscaled to the model's size, or ``imagefolder`` with ``root``); classes are ignored."""

    #: a registered data set name
    dataset: str = "digits"
    #: the data set's folder (as ``data.root``); empty: its default place
    root: str = ""
    #: the split the images are drawn from
    split: str = attrs.field(default="train", validator=attrs.validators.in_(("train", "test")))
    #: options of the data set (as ``data.options``)
    options: dict = attrs.field(factory=dict)

    def __call__(self, shape, labels: Tensor, context: InitContext) -> Tensor:
        factory = get_plugin_manager().registry("datasets").get(self.dataset)
        images, _ = factory(root=self.root, download=False, **self.options).tensors(self.split)
        pick = torch.randint(len(images), (shape[0],), generator=context.generator)
        return context.normalize(fit_images(images[pick].float(), shape))
