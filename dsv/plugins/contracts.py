"""The types that hooks and stages exchange: what a data set, a model source and an initializer
return or receive. They live here, below every implementation, so built-ins and third-party
plugins alike import them from :mod:`dsv.plugins` and nothing above."""

from __future__ import annotations

import math
from collections.abc import Sequence, Sized
from typing import Any, Protocol, cast

import attrs
import kornia
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Images in [0, 1] (N, C, H, W) -> model input space, ``(x - mean) / std`` per channel
    (kornia's normalize; the one implementation dsv uses)."""
    return kornia.enhance.normalize(
        images, torch.tensor(mean, dtype=images.dtype), torch.tensor(std, dtype=images.dtype)
    )


@attrs.define
class DatasetBundle:
    name: str
    train: Dataset
    test: Dataset
    classes: list[str]
    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fingerprint: str
    pixel_range: tuple[float, float] = (0.0, 1.0)  # what the images' values span (before normalization)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def tensors(self, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split as (images, labels) tensors (in-memory data sets only)."""
        ds = self.train if split == "train" else self.test
        if isinstance(ds, TensorDataset):
            return ds.tensors[0], ds.tensors[1]
        xs, ys = zip(*(ds[i] for i in range(len(cast(Sized, ds)))))  # torch's Dataset type declares no __len__
        return torch.stack(xs), torch.as_tensor(ys)


@attrs.define
class InputSpec:
    """What a model eats and predicts: channels, size, the normalization of its inputs, its class
    names, and its input domain: per channel, the lowest and highest value (in model input units)
    an input of its data can take, or None where that is not known."""

    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str]
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def domain(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """(low, high) per channel, or None when the domain is not known."""
        if self.low is None or self.high is None:
            return None
        return self.low, self.high


def pixel_domain(
    mean: Sequence[float], std: Sequence[float], pixel_range: tuple[float, float] = (0.0, 1.0)
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The input domain of images whose pixels span ``pixel_range``, normalized by mean/std:
    ``((p_low - m) / s, (p_high - m) / s)`` per channel."""
    low, high = pixel_range
    return (
        tuple((low - m) / s for m, s in zip(mean, std)),
        tuple((high - m) / s for m, s in zip(mean, std)),
    )


def per_channel(value: Any, channels: int, what: str) -> tuple[float, ...]:
    """One number, or one per channel, as a tuple of ``channels`` floats; ValueError naming
    ``what`` otherwise."""
    problem = f"{what} must be a number or one number per channel, got {value!r}"
    if isinstance(value, (bool, str, bytes)):
        raise ValueError(problem)
    if isinstance(value, (int, float)):
        return (float(value),) * channels
    try:
        values = tuple(float(x) for x in value)
    except (TypeError, ValueError):
        raise ValueError(problem) from None
    if len(values) == 1:
        values *= channels
    if len(values) != channels:
        raise ValueError(f"{what} has {len(values)} values, the model takes {channels} channels")
    return values


def per_channel_range(value: Any, channels: int, what: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(low, high)`` given as two numbers or two per-channel sequences, as per-channel tuples;
    ValueError naming ``what`` unless every low is below its high and the channel count fits."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"{what}: expected (low, high), got {value!r}")
    lows, highs = per_channel(value[0], channels, f"{what}: low"), per_channel(value[1], channels, f"{what}: high")
    if not all(math.isfinite(lo) and math.isfinite(hi) and lo < hi for lo, hi in zip(lows, highs)):
        raise ValueError(f"{what}: low must be below high in every channel, got low={list(lows)}, high={list(highs)}")
    return lows, highs


@attrs.define
class ModelRequest:
    data: DatasetBundle | None = None
    weights_path: str = ""


@attrs.define
class LoadedModel:
    module: nn.Module
    spec: InputSpec
    trainable: bool = False  # True: fresh weights that the train stage must fit


@attrs.define
class InitContext:
    generator: torch.Generator
    spec: InputSpec
    data: DatasetBundle | None = None

    def normalize(self, images: Tensor) -> Tensor:
        return normalize(images, self.spec.mean, self.spec.std)


class SynthesisRunView(Protocol):
    """What lifecycle hooks may read of a run (:class:`dsv.synthesis.engine.SynthesisRun`); its
    tensors are read-only for plugins."""

    model: nn.Module
    x: Tensor  # (N, C, H, W) candidates in model input space
    lambdas: Tensor  # (N,)
    targets: Tensor  # (N, K) soft targets
    alive: Tensor  # (N,) bool
    iterations: int
    store: Any  # the run store's region, or None
    plugin_options: dict[str, Any]  # name -> the [plugins.<name>] options object
