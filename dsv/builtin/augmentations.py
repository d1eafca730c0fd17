"""Built-in augmentations (kornia): the paper's flip, translate, crop, cutout and noise, and
DeepInversion's jitter (a random roll of the whole batch), and a Gaussian blur.

Each is differentiable with respect to its input and draws from torch's global generator, so a
seeded run is reproducible. Strengths follow the paper's notation (ImageNet: translate 0.125,
crop 0.2, cutout 0.15, flip 0.5, noise 0.01).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs
import kornia.augmentation as K
import torch
from torch import Tensor

from dsv.plugins import hookimpl


def _unit(name: str):
    def check(_inst, _attr, value):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be within [0, 1], got {value}")

    return check


@attrs.define(kw_only=True)
class Flip:
    """Horizontal flip with probability ``p``."""

    #: the probability of a flip
    p: float = attrs.field(default=0.5, validator=_unit("p"))

    _aug: Callable[[Tensor], Tensor] = attrs.field(init=False, repr=False, default=None)

    def __attrs_post_init__(self):
        self._aug = K.RandomHorizontalFlip(p=self.p)

    def __call__(self, x: Tensor) -> Tensor:
        return self._aug(x)


@attrs.define(kw_only=True)
class Jitter:
    """DeepInversion's jitter: roll the whole batch by a random offset of up to ``pixels`` in each
    direction (pixels wrap around; no padding, no resampling: the cheapest augmentation).
    ``pixels`` is meant at ``reference_size`` and scales with the candidates' size (30 at 224 is
    15 at 112, as DeepInversion's multi-resolution mode has it); ``reference_size = 0`` keeps it."""

    #: the largest offset in pixels, at ``reference_size``
    pixels: int = attrs.field(default=30, validator=attrs.validators.ge(0))
    #: the side length ``pixels`` is meant at (0: ``pixels`` at every size)
    reference_size: int = attrs.field(default=224, validator=attrs.validators.ge(0))

    def limit(self, size: int) -> int:
        """The largest offset at side length ``size``."""
        if not self.reference_size:
            return self.pixels
        return int(self.pixels * size / self.reference_size)

    def __call__(self, x: Tensor) -> Tensor:
        lim_h, lim_w = self.limit(int(x.shape[-2])), self.limit(int(x.shape[-1]))
        # torch's global generator: a seeded run is reproducible and a resumed one continues it
        dy = int(torch.randint(-lim_h, lim_h + 1, ()))
        dx = int(torch.randint(-lim_w, lim_w + 1, ()))
        return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))


@attrs.define(kw_only=True)
class Translate:
    """Shift by up to ``strength`` of the image size in each direction (zero padding)."""

    #: the largest shift, as a fraction of the image size
    strength: float = attrs.field(default=0.125, validator=_unit("strength"))
    #: the probability of applying it to a batch
    p: float = attrs.field(default=1.0, validator=_unit("p"))

    _aug: Callable[[Tensor], Tensor] = attrs.field(init=False, repr=False, default=None)

    def __attrs_post_init__(self):
        self._aug = K.RandomAffine(degrees=0.0, translate=(self.strength, self.strength), p=self.p)

    def __call__(self, x: Tensor) -> Tensor:
        return self._aug(x)


@attrs.define(kw_only=True)
class Crop:
    """Random resized crop keeping at least ``1 - strength`` of the area, resized back."""

    #: the largest fraction of the area cropped away
    strength: float = attrs.field(default=0.2, validator=_unit("strength"))
    #: the probability of applying it to a batch
    p: float = attrs.field(default=1.0, validator=_unit("p"))
    _by_size: dict = attrs.field(factory=dict, init=False, repr=False)

    def __call__(self, x: Tensor) -> Tensor:
        size = (int(x.shape[-2]), int(x.shape[-1]))
        if size not in self._by_size:  # one kornia module per resolution (multi-resolution runs)
            self._by_size[size] = K.RandomResizedCrop(
                size,
                scale=(1.0 - self.strength, 1.0),
                ratio=(0.9, 1.1),
                p=self.p,
                cropping_mode="resample",
            )
        return self._by_size[size](x)


@attrs.define(kw_only=True)
class Cutout:
    """Erase one square whose side is ``strength`` of the image side, with probability ``p``."""

    #: the erased square's side, as a fraction of the image side
    strength: float = attrs.field(default=0.15, validator=_unit("strength"))
    #: the probability of applying it to a batch
    p: float = attrs.field(default=0.5, validator=_unit("p"))

    _aug: Callable[[Tensor], Tensor] = attrs.field(init=False, repr=False, default=None)

    def __attrs_post_init__(self):
        area = max(self.strength**2, 1e-4)
        self._aug = K.RandomErasing(scale=(area, area), ratio=(1.0, 1.0), p=self.p)

    def __call__(self, x: Tensor) -> Tensor:
        return self._aug(x)


@attrs.define(kw_only=True)
class Noise:
    """Additive Gaussian noise of standard deviation ``strength`` (in model input units)."""

    #: the noise's standard deviation, in model input units (at least 0)
    strength: float = attrs.field(default=0.01)
    #: the probability of applying it to a batch
    p: float = attrs.field(default=1.0, validator=_unit("p"))

    _aug: Callable[[Tensor], Tensor] = attrs.field(init=False, repr=False, default=None)

    def __attrs_post_init__(self):
        if self.strength < 0:
            raise ValueError(f"strength must be >= 0, got {self.strength}")
        self._aug = K.RandomGaussianNoise(mean=0.0, std=self.strength, p=self.p)

    def __call__(self, x: Tensor) -> Tensor:
        return self._aug(x)


@attrs.define(kw_only=True)
class Blur:
    """Gaussian blur of a random width, up to ``sigma`` pixels, with probability ``p``: what the
    model sees of a candidate under it lacks the finest detail, so a term that must hold on the
    augmented copy cannot rest on pixel-level noise (an edit that independent classifiers agree
    with, benchmarks/imagenet_latent.py)."""

    #: the largest standard deviation of the blur, in pixels (at least 0.1)
    sigma: float = attrs.field(default=1.5)
    #: the probability of blurring a batch
    p: float = attrs.field(default=0.5, validator=_unit("p"))

    _aug: Callable[[Tensor], Tensor] = attrs.field(init=False, repr=False, default=None)

    def __attrs_post_init__(self):
        if self.sigma < 0.1:
            raise ValueError(f"sigma must be >= 0.1, got {self.sigma}")
        kernel = 2 * math.ceil(3 * self.sigma) + 1
        self._aug = K.RandomGaussianBlur((kernel, kernel), (0.1, self.sigma), p=self.p)

    def __call__(self, x: Tensor) -> Tensor:
        return self._aug(x)


@hookimpl
def dsv_register_augmentations(registry):
    registry.add("flip", Flip)
    registry.add("translate", Translate)
    registry.add("crop", Crop)
    registry.add("cutout", Cutout)
    registry.add("noise", Noise)
    registry.add("jitter", Jitter)
    registry.add("blur", Blur)
