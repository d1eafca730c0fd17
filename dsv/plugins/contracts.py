"""The types that hooks and stages exchange: what a data set, a model source and an initializer
return or receive. They live here, below every implementation, so built-ins and third-party
plugins alike import them from :mod:`dsv.plugins` and nothing above."""

from __future__ import annotations

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
    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


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
