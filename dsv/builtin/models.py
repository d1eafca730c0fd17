"""Built-in model sources: convnet, mlp, efficientnet-lite0/lite1/lite2, torchvision:<name>, timm:<name>,
module:<path>. The sources themselves live in :mod:`dsv.models` (the train stage loads weights
without going through a plugin); this module registers them, as a third party registers its own."""

from __future__ import annotations

from dsv.models import (
    MLP,
    ConvNet,
    ModelError,
    convnet,
    efficientnet_lite,
    load_state_dict,
    mlp,
    module_model,
    timm_model,
    torchvision_model,
)
from dsv.plugins import InputSpec, LoadedModel, ModelRequest, hookimpl

# the names this module offered before the sources moved to dsv.models
__all__ = [
    "MLP",
    "ConvNet",
    "InputSpec",
    "LoadedModel",
    "ModelError",
    "ModelRequest",
    "convnet",
    "dsv_register_models",
    "load_state_dict",
    "mlp",
    "module_model",
    "timm_model",
    "torchvision_model",
]


@hookimpl
def dsv_register_models(registry):
    registry.add("convnet", convnet)
    registry.add("mlp", mlp)
    registry.add("efficientnet-lite0", efficientnet_lite("lite0", 224))
    registry.add("efficientnet-lite1", efficientnet_lite("lite1", 240))
    registry.add("efficientnet-lite2", efficientnet_lite("lite2", 260))
    registry.add("torchvision:", torchvision_model)
    registry.add("timm:", timm_model)
    registry.add("module:", module_model)
