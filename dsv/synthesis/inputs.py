"""What a user's own ``nn.Module`` takes and predicts, for ``dsv.synthesize``: its input shape,
class count, normalization and input domain (an :class:`~dsv.plugins.InputSpec`), and the state of
the caller's model to put back afterwards."""

from __future__ import annotations

import operator
import warnings
from collections.abc import Mapping

import attrs
import torch
from torch import nn

from dsv.errors import ConfigError, DsvError
from dsv.plugins import InputSpec, LoadedModel, per_channel, per_channel_range, pixel_domain
from dsv.synthesis.build import API_SOURCE


@attrs.define
class ModelState:
    """What :func:`synthesize` changes on the caller's model, to put back afterwards."""

    training: bool
    requires_grad: list[bool]
    device: torch.device | None
    channels_last: list[bool]  # per parameter: was it in channels_last memory format

    @classmethod
    def capture(cls, module: nn.Module) -> ModelState:
        first = next(iter([*module.parameters(), *module.buffers()]), None)
        return cls(
            module.training,
            [p.requires_grad for p in module.parameters()],
            first.device if first is not None else None,
            [_is_channels_last(p) for p in module.parameters()],
        )

    def restore(self, module: nn.Module) -> None:
        if self.device is not None:
            module.to(self.device)
        with torch.no_grad():
            for p, was in zip(module.parameters(), self.channels_last):
                if _is_channels_last(p) != was:
                    fmt = torch.channels_last if was else torch.contiguous_format
                    p.data = p.data.contiguous(memory_format=fmt)
        module.train(self.training)
        for p, flag in zip(module.parameters(), self.requires_grad):
            p.requires_grad_(flag)


def _is_channels_last(p: torch.Tensor) -> bool:
    return p.dim() == 4 and not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)


def unwrap(model) -> tuple[nn.Module, InputSpec | None]:
    if isinstance(model, LoadedModel):
        return model.module, model.spec
    if isinstance(model, nn.Module):
        return model, None
    raise DsvError(f"{API_SOURCE}: model: expected a torch.nn.Module, got {type(model).__name__}")


def qualname(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def infer_input_shape(module: nn.Module, given, loaded_spec: InputSpec | None):
    """(C, S, S) and the mean/std a timm-style ``pretrained_cfg`` names (or None)."""
    pretrained = getattr(module, "pretrained_cfg", None) or getattr(module, "default_cfg", None)
    pretrained = pretrained if isinstance(pretrained, Mapping) else {}
    shape = given
    if shape is None and loaded_spec is not None:
        shape = (loaded_spec.channels, loaded_spec.size, loaded_spec.size)
    if shape is None:
        shape = getattr(module, "input_shape", None) or pretrained.get("input_size")
    if shape is None:
        raise ConfigError(
            f"{API_SOURCE}: input_shape: cannot be inferred from {type(module).__name__} (it has no "
            "input_shape attribute and no pretrained_cfg['input_size']); pass input_shape=(C, H, W)"
        )
    try:
        shape = tuple(operator.index(d) for d in shape)
    except TypeError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"{API_SOURCE}: input_shape: expected (C, H, W) of positive integers, got {given!r}")
    if shape[1] != shape[2]:
        raise ConfigError(f"{API_SOURCE}: input_shape: candidates are square, got {shape[1]}x{shape[2]}")
    return shape, pretrained.get("mean"), pretrained.get("std")


def count_classes(module: nn.Module, shape: tuple[int, int, int], device: torch.device) -> int:
    """K, from one forward pass of a zero input (which also checks that the shape fits)."""
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, *shape, device=device))
    except Exception as exc:  # any failure of the user's forward on this shape
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"{API_SOURCE}: input_shape: the model does not take inputs of shape {(1, *shape)} ({first})"
        ) from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"{API_SOURCE}: model: expected (N, K) logits from a classifier, got {got}")
    return int(out.shape[1])


def _channel_values(value, default, channels: int, key: str) -> tuple[float, ...]:
    try:
        values = per_channel(default if value is None else value, channels, key)
    except ValueError as exc:
        raise ConfigError(f"{API_SOURCE}: {exc}") from None
    if key == "std" and min(values) <= 0:
        raise ConfigError(f"{API_SOURCE}: std: must be positive, got {list(values)}")
    return values


def build_input_spec(shape, num_classes, mean, std, class_names, loaded_spec, cfg_mean, cfg_std) -> InputSpec:
    c = shape[0]
    base_mean = loaded_spec.mean if loaded_spec is not None else (cfg_mean if cfg_mean is not None else 0.0)
    base_std = loaded_spec.std if loaded_spec is not None else (cfg_std if cfg_std is not None else 1.0)
    if class_names is None:
        fits = loaded_spec is not None and loaded_spec.num_classes == num_classes
        class_names = loaded_spec.classes if fits else [str(i) for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ConfigError(f"{API_SOURCE}: class_names: {len(class_names)} names, the model has {num_classes} classes")
    return InputSpec(
        c,
        shape[1],
        _channel_values(mean, base_mean, c, "mean"),
        _channel_values(std, base_std, c, "std"),
        [str(n) for n in class_names],
    )


def with_domain(spec: InputSpec, input_range, loaded_spec: InputSpec | None, explicit: bool) -> InputSpec:
    """``spec`` with its input domain: ``input_range``, else the LoadedModel's, else the one the
    normalization of pixels in [0, 1] implies when a mean/std was given; else none, with a warning."""
    if input_range is not None:
        try:
            low, high = per_channel_range(input_range, spec.channels, "input_range")
        except ValueError as exc:
            raise ConfigError(f"{API_SOURCE}: {exc}") from None
        return attrs.evolve(spec, low=low, high=high)
    if loaded_spec is not None and loaded_spec.domain is not None and loaded_spec.channels == spec.channels:
        return attrs.evolve(spec, low=loaded_spec.low, high=loaded_spec.high)
    if explicit:
        low, high = pixel_domain(spec.mean, spec.std)
        return attrs.evolve(spec, low=low, high=high)
    warnings.warn(
        f"{API_SOURCE}: input_range is not given and cannot be derived (no mean/std, no LoadedModel): the "
        "candidates are free to leave the values your model was trained on; pass input_range=(low, high)",
        UserWarning,
        stacklevel=3,
    )
    return spec
