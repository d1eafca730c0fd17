"""Built-in image priors: total variation, norm, and the valid pixel range."""

from __future__ import annotations

import attrs
from torch import Tensor

from dsv import kkt
from dsv.plugins import hookimpl


@attrs.define(kw_only=True)
class TotalVariation:
    """Total variation: removes high-frequency noise. ``distance = "l1"``: mean absolute difference
    of neighbouring pixels; ``"l2"``: DeepInversion's ``loss_var_l2``, the sum over four neighbour
    directions of the L2 norm of the differences over the batch (not averaged)."""

    #: the prior's weight in the total
    weight: float = 1e-4
    #: ``l1`` (mean absolute difference) or ``l2`` (DeepInversion's)
    distance: str = attrs.field(default="l1", validator=attrs.validators.in_(("l1", "l2")))
    #: evaluated on the augmented copy instead of the candidates (DeepInversion)
    augmented: bool = False

    def __call__(self, x: Tensor) -> Tensor:
        return kkt.total_variation(x) if self.distance == "l1" else kkt.total_variation_l2(x)


@attrs.define(kw_only=True)
class Norm:
    """Keeps candidates in the range of real inputs. ``distance = "mean_square"``: the mean squared
    pixel value; ``"l2"``: the L2 norm of the whole batch (DeepInversion's ``l2`` prior)."""

    #: the prior's weight in the total
    weight: float = 1e-5
    #: ``mean_square`` (mean squared pixel value) or ``l2`` (the L2 norm of the batch)
    distance: str = attrs.field(default="mean_square", validator=attrs.validators.in_(("mean_square", "l2")))
    #: evaluated on the augmented copy instead of the candidates (DeepInversion)
    augmented: bool = False

    def __call__(self, x: Tensor) -> Tensor:
        return kkt.norm_loss(x) if self.distance == "mean_square" else kkt.l2_norm(x)


@attrs.define(kw_only=True)
class PixelRange:
    """Mean squared excess of the candidates beyond ``[low, high]`` (model input units; for
    images in [0, 1] normalized by mean m and std s: low = -m / s, high = (1 - m) / s): keeps them
    displayable images, which a model retrained on them will also see at test time."""

    #: the prior's weight in the total
    weight: float = 1.0
    #: the lowest valid value, in model input units
    low: float = 0.0
    #: the highest valid value, in model input units (above ``low``)
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
