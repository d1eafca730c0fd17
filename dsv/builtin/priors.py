"""Built-in image priors: total variation and norm."""

from __future__ import annotations

import attrs
from torch import Tensor

from dsv import kkt
from dsv.hookspecs import hookimpl


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


@hookimpl
def dsv_register_priors(registry):
    registry.add("tv", TotalVariation)
    registry.add("norm", Norm)
