"""The baselines a distillation or a coreset is compared with, under the same retrain protocol.

* ``random_real``: n real training images per class (the images the ``real`` initializer draws);
* ``dm``: distribution matching (Zhao & Bilen 2021): synthetic images whose mean embedding under
  randomly initialized networks matches that of the n real images of their class;
* ``herding``: per class, greedily the samples whose running mean stays closest to the class
  mean in the trained model's embedding (Welling 2009; the classic coreset baseline).

``primal_only`` (model inversion from noise without stationarity) is a synthesis with the
``primal`` loss only: see :func:`synthesize_images`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from dsv import kkt
from dsv.evaluation.retraining import fresh_model
from dsv.kkt.selection import pool_indices
from dsv.plugins import InitContext
from dsv.plugins.output import progress_iter
from dsv.synthesis.build import build_run
from dsv.synthesis.execution import execute, memory_history
from dsv.synthesis.initializers import RealInit


def class_labels(num_classes: int, per_class: int) -> Tensor:
    """Labels of ``per_class`` images of each class, class by class (the synthesis order)."""
    return torch.arange(num_classes).repeat_interleave(per_class)


def random_real(data, spec, per_class: int, seed: int) -> tuple[Tensor, Tensor]:
    """``per_class`` random training images of each class (model input space) and their labels:
    the images a synthesis with ``init = "real"`` and the same seed starts from."""
    labels = class_labels(spec.num_classes, per_class)
    shape = (len(labels), spec.channels, spec.size, spec.size)
    context = InitContext(torch.Generator().manual_seed(seed), spec, data)
    return RealInit()(shape, labels, context), labels


def embedding(model: nn.Module, x: Tensor) -> Tensor:
    """The input of the model's classifier head (differentiable in ``x``), flattened."""
    _, head = kkt.classifier_head(model)
    captured: list[Tensor] = []
    handle = head.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
    try:
        model(x)
    finally:
        handle.remove()
    return captured[0].flatten(1)


def distribution_matching(
    template: nn.Module,
    real: Tensor,
    real_labels: Tensor,
    init: Tensor,
    labels: Tensor,
    *,
    iterations: int = 500,
    lr: float = 1.0,
    momentum: float = 0.5,
    augmentations: Sequence[Callable[[Tensor], Tensor]] = (),
    seed: int = 0,
    progress: bool = False,
    history: list[float] | None = None,
) -> Tensor:
    """DM: move ``init`` (model input space, one row per entry of ``labels``) so that, for a new
    randomly initialized copy of ``template`` at each step, the mean embedding of each class's
    synthetic images matches that of its real images (SGD as in the paper: lr 1, momentum 0.5).
    Real and synthetic batches are augmented independently (the expectation matched is the same).
    ``history``, when given, receives each step's loss (the convergence curve)."""
    syn = init.detach().clone().requires_grad_(True)
    optimizer = torch.optim.SGD([syn], lr=lr, momentum=momentum)
    classes = labels.unique().tolist()
    steps: Iterable[int] = range(iterations)
    if progress:
        steps = progress_iter(steps, total=iterations, desc="dm")

    def augment(x: Tensor) -> Tensor:
        for a in augmentations:
            x = a(x)
        return x

    for step in steps:
        net = fresh_model(template, seed * 100_003 + step).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        loss = syn.new_zeros(())
        for cls in classes:
            with torch.no_grad():
                target = embedding(net, augment(real[real_labels == cls])).mean(0)
            mean = embedding(net, augment(syn[labels == cls])).mean(0)
            loss = loss + (target - mean).pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if history is not None:
            history.append(float(loss.detach()))
    return syn.detach()


def herding(features: Tensor, labels: Tensor, per_class: int) -> Tensor:
    """Indices (into ``features``) of ``per_class`` samples of each class chosen by herding."""
    chosen = []
    for cls in labels.unique().tolist():
        members = (labels == cls).nonzero().flatten()
        f = features[members].double()
        mean = f.mean(0)
        total = torch.zeros_like(mean)
        available = torch.ones(len(members), dtype=torch.bool)
        for t in range(1, min(per_class, len(members)) + 1):
            gap = (mean - (total + f) / t).norm(dim=1)
            gap[~available] = float("inf")
            best = int(gap.argmin())
            available[best] = False
            total += f[best]
            chosen.append(members[best])
    return torch.stack(chosen)


def random_per_class(labels: Tensor, per_class: int, generator: torch.Generator) -> Tensor:
    """Indices of ``per_class`` random samples of each class."""
    return pool_indices(labels, per_class, generator)


def synthesize_images(
    module: nn.Module,
    spec,
    synthesis,
    *,
    plugins,
    data,
    seed: int,
    device="cpu",
    source: str = "synthesis",
    progress: bool = False,
) -> tuple[Tensor, Tensor, Tensor, dict]:
    """Run one ``[synthesis]`` table on ``module`` without a store: (candidates in model input
    space, labels, alive mask, history in memory with each candidate's
    ``final_lambda``). ``primal_only`` is this with ``losses = [primal]``."""
    run = build_run(
        module,
        spec,
        synthesis,
        plugins=plugins,
        device=torch.device(device),
        seed=seed,
        data=data,
        source=source,
        progress=progress,
    )
    execute(run, {"mean": list(spec.mean), "std": list(spec.std)}, store_path=None)
    history = {**memory_history(run), "final_lambda": run.lambdas.detach().cpu().numpy()}
    return (run.x.detach().cpu(), run.targets.argmax(1).cpu(), run.alive.cpu(), history)
