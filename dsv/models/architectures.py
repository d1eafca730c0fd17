"""The architectures dsv trains itself: the DC-style ConvNet and a normalization-free MLP."""

from __future__ import annotations

import torch
from torch import nn

from dsv.errors import DsvError


class ModelError(DsvError):
    pass


NORMS = ("instance", "batch", "none")


def norm_layer(norm: str, width: int) -> nn.Module:
    if norm == "instance":  # instance norm with affine, as in DC
        return nn.GroupNorm(width, width, affine=True)
    return nn.BatchNorm2d(width) if norm == "batch" else nn.Identity()


class ConvNet(nn.Module):
    """The DC-style ConvNet: ``depth`` x [conv3x3 -> instance norm -> ReLU -> avgpool2] -> linear.
    ``norm = "none"`` puts an identity where the instance norm was (same parameter names otherwise):
    no weight is then scale-invariant, so stationarity over every parameter can be met.
    ``norm = "batch"`` puts a BatchNorm there: its running statistics are what the ``bn_stats``
    prior (plugins/dsv-bn-prior) matches, as for ImageNet classifiers."""

    def __init__(
        self, channels: int, size: int, num_classes: int, width: int = 128, depth: int = 3, norm: str = "instance"
    ):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm: expected one of {', '.join(map(repr, NORMS))}, got {norm!r}")
        layers: list[nn.Module] = []
        c, s = channels, size
        for _ in range(depth):
            layers += [
                nn.Conv2d(c, width, 3, padding=1),
                norm_layer(norm, width),
                nn.ReLU(inplace=False),
                nn.AvgPool2d(2),
            ]
            c, s = width, s // 2
        if s < 1:
            raise ModelError(f"convnet: depth {depth} is too deep for {size}x{size} inputs")
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d((s, s))  # identity at the trained size; other sizes fit too
        self.classifier = nn.Linear(width * s * s, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


class MLP(nn.Module):
    """A ReLU multilayer perceptron on the flattened image: ``depth`` hidden layers of ``width``
    units, then a linear classifier. No normalization layer: no weight is scale-invariant, so
    stationarity over every parameter can be met (the reading DeepKKT rests on).

    ``bias = False`` makes it positively homogeneous in its parameters (of degree ``depth + 1``),
    the networks for which gradient descent is proven to converge in direction to a KKT point of
    the max-margin problem (Lyu & Li 2020); ``init_scale`` multiplies PyTorch's default initial
    weights (small: the regime of that theory, Haim et al. 2022). ``center_head`` starts the
    classifier's rows with a zero sum: the gradient of the cross entropy (and of every margin
    ``Phi_y - Phi_j``) has rows summing to zero, so gradient descent never changes that sum, and a
    KKT point of the max-margin problem has none. ``input_mean`` (a buffer, e.g. the training
    images' per-pixel mean) is subtracted from every input first: a fixed shift, so the network
    stays homogeneous in its parameters (the per-pixel centring of Haim et al. 2022, which the data
    contract's one mean per channel cannot express)."""

    def __init__(
        self,
        channels: int,
        size: int,
        num_classes: int,
        width: int = 256,
        depth: int = 2,
        bias: bool = True,
        init_scale: float = 1.0,
        center_head: bool = False,
        input_mean: torch.Tensor | None = None,
    ):
        super().__init__()
        self.input_mean: torch.Tensor | None
        if input_mean is not None:
            self.register_buffer("input_mean", input_mean.detach().reshape(1, channels, size, size).clone())
        else:
            self.input_mean = None
        if width < 1 or depth < 0:
            raise ModelError(f"mlp: width must be >= 1 and depth >= 0, got width {width}, depth {depth}")
        if not init_scale > 0:
            raise ModelError(f"mlp: init_scale must be positive, got {init_scale}")
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = channels * size * size
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width, bias=bias), nn.ReLU()]
            fan_in = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(fan_in, num_classes, bias=bias)
        with torch.no_grad():
            if init_scale != 1.0:
                for p in self.parameters():
                    p.mul_(init_scale)
            if center_head:
                self.classifier.weight.sub_(self.classifier.weight.mean(0, keepdim=True))
                if self.classifier.bias is not None:
                    self.classifier.bias.sub_(self.classifier.bias.mean())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_mean is not None:
            x = x - self.input_mean
        return self.classifier(self.features(x))
