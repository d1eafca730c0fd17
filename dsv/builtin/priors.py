"""Built-in image priors: total variation, norm, and the valid pixel range."""

from __future__ import annotations

import attrs
from torch import Tensor

from dsv import kkt
from dsv.plugins import hookimpl


@attrs.define(kw_only=True)
class TotalVariation:
    """Mean absolute difference of neighbouring pixels: removes high-frequency noise."""

    weight: float = 1e-4

    def __call__(self, x: Tensor) -> Tensor:
        return kkt.total_variation(x)


@attrs.define(kw_only=True)
class Norm:
    """Mean squared pixel value: keeps candidates in the range of real inputs."""

    weight: float = 1e-5

    def __call__(self, x: Tensor) -> Tensor:
        return kkt.norm_loss(x)


@attrs.define(kw_only=True)
class PixelRange:
    """Mean squared excess of the candidates beyond ``[low, high]`` (model input units; for
    images in [0, 1] normalized by mean m and std s: low = -m / s, high = (1 - m) / s): keeps them
    displayable images, which a model retrained on them will also see at test time."""

    weight: float = 1.0
    low: float = 0.0
    high: float = 1.0

    def __attrs_post_init__(self):
        if self.low >= self.high:
            raise ValueError(f"low must be below high, got low={self.low}, high={self.high}")

    def __call__(self, x: Tensor) -> Tensor:
        return kkt.range_excess(x, self.low, self.high)


@hookimpl
def dsv_register_priors(registry):
    registry.add("tv", TotalVariation)
    registry.add("norm", Norm)
    registry.add("range", PixelRange)
