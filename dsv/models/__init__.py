"""Classifiers as dsv loads and trains them: the architectures it builds itself
(:mod:`dsv.models.architectures`), weights files read as inert tensors (:mod:`dsv.models.weights`)
and the model sources that turn a ``[model]`` table into a :class:`~dsv.plugins.LoadedModel`
(:mod:`dsv.models.sources`, registered by name in :mod:`dsv.builtin.models`)."""

from dsv.models.architectures import MLP, NORMS, ConvNet, ModelError
from dsv.models.sources import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    convnet,
    efficientnet_lite,
    imagenet_classes,
    imagenet_spec,
    mlp,
    module_model,
    spec_from_data,
    timm_model,
    torchvision_model,
)
from dsv.models.weights import apply_weights, load_state_dict

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MLP",
    "NORMS",
    "ConvNet",
    "ModelError",
    "apply_weights",
    "convnet",
    "efficientnet_lite",
    "imagenet_classes",
    "imagenet_spec",
    "load_state_dict",
    "mlp",
    "module_model",
    "spec_from_data",
    "timm_model",
    "torchvision_model",
]
