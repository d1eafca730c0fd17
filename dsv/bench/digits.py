"""scikit-learn digits (8x8) scaled to [-0.5, 0.5], small base models trained on them, and the
students that score an image set (``benchmarks/input_domain.py``).

* :func:`digits_split`: a fixed stratified 70/30 split;
* :data:`BASE_MODELS`: an MLP without normalization, a small ConvNet, and the same ConvNet with
  InstanceNorm; :func:`train_base` trains one until every training image is classified right;
* students of the base model's architecture, Adam on a set of images: :func:`train_hard` (cross
  entropy on the class labels) and :func:`train_teacher` (noised copies of the images, fresh each
  step, soft targets = the frozen base model's softmax on each noised batch).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsv.evaluation.retraining import fresh_model

LOW, HIGH = -0.5, 0.5  # the input domain: digits' 0..16 scaled
NUM_CLASSES = 10
SHAPE = (1, 8, 8)


def digits_split() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(train images, train labels, test images, test labels); images (N, 1, 8, 8) in [LOW, HIGH]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0 + LOW)[:, None]
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.3, stratify=d.target, random_state=0)
    return torch.from_numpy(xtr), torch.from_numpy(ytr).long(), torch.from_numpy(xte), torch.from_numpy(yte).long()


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, NUM_CLASSES)
    )


def convnet(instance_norm: bool) -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        norm = [nn.InstanceNorm2d(cout, affine=True)] if instance_norm else []
        return [nn.Conv2d(cin, cout, 3, padding=1), *norm, nn.ReLU()]

    return nn.Sequential(*block(1, 8), *block(8, 16), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 16, NUM_CLASSES))


BASE_MODELS: dict[str, Callable[[], nn.Module]] = {
    "mlp": mlp,
    "conv": lambda: convnet(False),
    "conv+in": lambda: convnet(True),
}


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def train_base(name: str, xtr: Tensor, ytr: Tensor, seed: int = 0, max_epochs: int = 400) -> nn.Module:
    """Adam, batch 64, until every training image is classified right (or ``max_epochs``)."""
    torch.manual_seed(seed)
    model = BASE_MODELS[name]()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(max_epochs):
        model.train()
        for idx in torch.randperm(len(xtr), generator=gen).split(64):
            opt.zero_grad()
            F.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
        if accuracy(model, xtr, ytr) == 1.0:
            break
    model.eval()
    return model


@attrs.define
class Protocol:
    """How students learn an image set."""

    steps: int = 300
    lr: float = 3e-3
    copies: int = 10  # noised copies of each image per teacher batch
    noises: tuple[float, ...] = (0.1, 0.5)  # teacher batch noise, in data stds: one column each


def train_hard(template: nn.Module, images: Tensor, labels: Tensor, seed: int, p: Protocol) -> nn.Module:
    """A fresh model of ``template``'s architecture, Adam on ``images`` with their labels."""
    model = fresh_model(template, seed).train()
    opt = torch.optim.Adam(model.parameters(), lr=p.lr)
    for _ in range(p.steps):
        opt.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        opt.step()
    return model.eval()


def train_teacher(
    template: nn.Module, teacher: nn.Module, images: Tensor, seed: int, p: Protocol, noise: float
) -> nn.Module:
    """A fresh model of ``template``'s architecture learning ``teacher``'s softmax on noised
    copies of ``images`` (Gaussian noise of std ``noise``, fresh each step)."""
    model = fresh_model(template, seed).train()
    opt = torch.optim.Adam(model.parameters(), lr=p.lr)
    gen = torch.Generator().manual_seed(seed)
    base = images.repeat(p.copies, 1, 1, 1)
    for _ in range(p.steps):
        batch = base + noise * torch.randn(base.shape, generator=gen)
        with torch.no_grad():
            soft = teacher(batch).softmax(dim=1)
        opt.zero_grad()
        (-(soft * model(batch).log_softmax(dim=1)).sum(dim=1).mean()).backward()
        opt.step()
    return model.eval()
