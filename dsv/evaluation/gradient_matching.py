"""Dataset condensation by gradient matching: DC (Zhao, Mopuri & Bilen, ICLR 2021) and DSA (DC with
differentiable siamese augmentation, Zhao & Bilen, ICML 2021), the baselines of the paper's Table 2.

Each iteration draws a freshly initialized copy of the model; for ``outer_loop`` rounds the
synthetic images of every class move (SGD, ``lr_img``, momentum 0.5) so that the network's gradient
on them matches its gradient on the real images of that class (the layer-wise cosine distance of
the DC paper, biases and normalization parameters left out), and in between the network trains
``inner_loop`` epochs on the synthetic set (SGD, ``lr_net``). DSA applies one augmentation, drawn
per class and round, with the same parameters to the real and the synthetic batch (siamese), and
augments the network's training batches too. Published settings (ConvNet, CIFAR-10): 1000
iterations, ``lr_img`` 0.1, ``lr_net`` 0.01, real batch 256, loops (1, 1) at 1 image per class and
(10, 50) at 10; DSA's strategy ``color_crop_cutout_flip_scale_rotate``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsv.evaluation.retraining import fresh_model
from dsv.plugins.output import progress_iter

# (outer_loop, inner_loop) by images per class, as the DC authors published them
PUBLISHED_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
DSA_STRATEGY = ("color", "crop", "cutout", "flip", "scale", "rotate")


def loops_for(ipc: int) -> tuple[int, int]:
    """The published (outer_loop, inner_loop) for ``ipc``, or the nearest published setting below."""
    known = [k for k in sorted(PUBLISHED_LOOPS) if k <= ipc] or [1]
    return PUBLISHED_LOOPS[known[-1]]


@attrs.define(kw_only=True)
class SiameseAugment:
    """DSA's augmentations with one parameter draw shared by every image of both batches.

    ``params()`` draws one transform (one of ``strategy``, with its parameters); ``apply(x, p)``
    applies it, differentiably. Strengths as DSA's ``ParamDiffAug``: flip 0.5, scale 1.2, rotate
    15 degrees, crop (translation) 0.125, cutout 0.5, brightness 1.0, saturation 2.0, contrast 0.5."""

    strategy: Sequence[str] = DSA_STRATEGY
    generator: torch.Generator = attrs.field(factory=lambda: torch.Generator().manual_seed(0))

    def _u(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def params(self) -> dict:
        kind = self.strategy[int(torch.randint(len(self.strategy), (), generator=self.generator))]
        if kind == "color":
            return {
                "kind": kind,
                "brightness": self._u() - 0.5,
                "saturation": 2 * self._u(),
                "contrast": self._u() + 0.5,
            }
        if kind == "crop":
            return {"kind": kind, "dx": (2 * self._u() - 1) * 0.125, "dy": (2 * self._u() - 1) * 0.125}
        if kind == "cutout":
            return {"kind": kind, "cx": self._u(), "cy": self._u(), "size": 0.5}
        if kind == "flip":
            return {"kind": kind, "flip": self._u() < 0.5}
        if kind == "scale":
            return {
                "kind": kind,
                "sx": 1 / 1.2 + self._u() * (1.2 - 1 / 1.2),
                "sy": 1 / 1.2 + self._u() * (1.2 - 1 / 1.2),
            }
        return {"kind": kind, "angle": (2 * self._u() - 1) * 15.0 / 180.0 * math.pi}

    def apply(self, x: Tensor, p: dict) -> Tensor:
        kind = p["kind"]
        if kind == "color":
            x = x + p["brightness"]
            mean = x.mean(dim=1, keepdim=True)
            x = (x - mean) * p["saturation"] + mean
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            return (x - mean) * p["contrast"] + mean
        if kind == "flip":
            return x.flip(-1) if p["flip"] else x
        if kind == "cutout":
            h, w = x.shape[-2:]
            half_h, half_w = int(h * p["size"] / 2), int(w * p["size"] / 2)
            cy, cx = int(p["cy"] * h), int(p["cx"] * w)
            mask = torch.ones(1, 1, h, w, dtype=x.dtype, device=x.device)
            mask[..., max(cy - half_h, 0) : cy + half_h, max(cx - half_w, 0) : cx + half_w] = 0
            return x * mask
        if kind == "crop":
            theta = [[1.0, 0.0, 2 * p["dx"]], [0.0, 1.0, 2 * p["dy"]]]
        elif kind == "scale":
            theta = [[p["sx"], 0.0, 0.0], [0.0, p["sy"], 0.0]]
        else:
            c, s = math.cos(p["angle"]), math.sin(p["angle"])
            theta = [[c, -s, 0.0], [s, c, 0.0]]
        matrix = torch.tensor(theta, dtype=x.dtype, device=x.device).expand(x.shape[0], 2, 3)
        grid = F.affine_grid(matrix, list(x.shape), align_corners=True)
        return F.grid_sample(x, grid, align_corners=True)

    def __call__(self, x: Tensor) -> Tensor:
        return self.apply(x, self.params())


def layer_distance(real: Tensor, syn: Tensor) -> Tensor:
    """DC's distance of two gradients of one parameter tensor: the sum over output units of
    ``1 - cos`` of their incoming weights' gradients; 0 for vectors (biases, norm parameters)."""
    if real.dim() == 1:
        return syn.new_zeros(())
    real, syn = real.flatten(1), syn.flatten(1)
    cos = (real * syn).sum(-1) / (real.norm(dim=-1) * syn.norm(dim=-1) + 1e-6)
    return (1 - cos).sum()


def gradient_matching(
    template: nn.Module,
    real: Tensor,
    real_labels: Tensor,
    init: Tensor,
    labels: Tensor,
    *,
    iterations: int = 1000,
    outer_loop: int | None = None,
    inner_loop: int | None = None,
    lr_img: float = 0.1,
    lr_net: float = 0.01,
    batch_real: int = 256,
    siamese: bool = False,
    seed: int = 0,
    progress: bool = False,
    history: list[float] | None = None,
) -> Tensor:
    """DC (``siamese = False``) or DSA (``siamese = True``): move ``init`` (model input space, one
    row per entry of ``labels``) by gradient matching against ``real`` (at most ``batch_real`` of a
    class per match). Loops default to the published ones for the images per class. ``history``,
    when given, receives the mean matching loss of each iteration (the convergence curve)."""
    per_class = int((labels == labels[0]).sum())
    default_outer, default_inner = loops_for(per_class)
    outer_loop = outer_loop or default_outer
    inner_loop = inner_loop or default_inner
    syn = init.detach().clone().requires_grad_(True)
    optimizer_img = torch.optim.SGD([syn], lr=lr_img, momentum=0.5)
    gen = torch.Generator().manual_seed(seed)
    augment = SiameseAugment(generator=torch.Generator().manual_seed(seed + 1)) if siamese else None
    classes = labels.unique().tolist()
    steps: Iterable[int] = range(iterations)
    if progress:
        steps = progress_iter(steps, total=iterations, desc="dsa" if siamese else "dc")
    for step in steps:
        net = fresh_model(template, seed * 100_003 + step).train()
        params = [p for p in net.parameters() if p.requires_grad]
        optimizer_net = torch.optim.SGD(params, lr=lr_net)
        total = 0.0
        for round_ in range(outer_loop):
            loss = syn.new_zeros(())
            for cls in classes:
                pool = real[real_labels == cls]
                pick = torch.randperm(len(pool), generator=gen)[:batch_real]
                img_real, img_syn = pool[pick], syn[labels == cls]
                if augment is not None:
                    p = augment.params()
                    img_real, img_syn = augment.apply(img_real, p), augment.apply(img_syn, p)
                target_real = torch.full((len(img_real),), cls, dtype=torch.long)
                target_syn = torch.full((len(img_syn),), cls, dtype=torch.long)
                g_real = torch.autograd.grad(F.cross_entropy(net(img_real), target_real), params)
                g_syn = torch.autograd.grad(F.cross_entropy(net(img_syn), target_syn), params, create_graph=True)
                for gr, gs in zip(g_real, g_syn):
                    loss = loss + layer_distance(gr.detach(), gs)
            optimizer_img.zero_grad()
            loss.backward()
            optimizer_img.step()
            total += float(loss.detach())
            if round_ == outer_loop - 1:
                break
            frozen, frozen_labels = syn.detach().clone(), labels.clone()
            for _ in range(inner_loop):  # one epoch: the synthetic set is one batch of <= 256
                order = torch.randperm(len(frozen), generator=gen)
                for start in range(0, len(frozen), 256):
                    rows = order[start : start + 256]
                    batch = frozen[rows] if augment is None else augment(frozen[rows])
                    optimizer_net.zero_grad()
                    F.cross_entropy(net(batch), frozen_labels[rows]).backward()
                    optimizer_net.step()
        if history is not None:
            history.append(total / (len(classes) * outer_loop))
    return syn.detach()
