"""Built-in candidate initializers: Gaussian noise, real samples of the target class (n-shot),
images of another data set (zero-shot) and image files (edits). They live in
:mod:`dsv.synthesis.initializers` (the baselines start from them too); this module registers them,
as a third party registers its own."""

from __future__ import annotations

from dsv.plugins import InitContext, hookimpl
from dsv.synthesis.initializers import (
    DOMAIN_STD,
    ImageInit,
    NoiseInit,
    OtherDataInit,
    RealInit,
    coloured,
    fit_images,
    read_image,
)

# the names this module offered before the initializers moved to dsv.synthesis.initializers
__all__ = [
    "DOMAIN_STD",
    "ImageInit",
    "InitContext",
    "NoiseInit",
    "OtherDataInit",
    "RealInit",
    "coloured",
    "dsv_register_initializers",
    "fit_images",
    "read_image",
]


@hookimpl
def dsv_register_initializers(registry):
    registry.add("noise", NoiseInit)
    registry.add("real", RealInit)
    registry.add("other", OtherDataInit)
    registry.add("image", ImageInit)
