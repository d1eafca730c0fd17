"""The select stage: DSVs among real training samples (coreset selection by lambda).

With the samples ``x_i`` fixed, only the multipliers are fitted: stationarity over the classifier
head, ``theta_head + sum_i lambda_i grad_head CE(Phi(x_i), y_i) = 0`` with ``lambda >= 0``. The
gradient of CE for a linear head is ``(p_i - t_i) h_i^T`` (``h_i`` the head's input), so the sum
is ``(P - T)^T diag(lambda) H``: one forward over the samples gives every quantity, and the fit
costs a few matrix products per step however many samples take part. Samples are ranked by
lambda within each class; the top-k of each class is the coreset.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsv import kkt
from dsv.distill_config import SelectConfig
from dsv.errors import DsvError

if TYPE_CHECKING:
    from dsv.pipeline import Pipeline
    from dsv.store import RunStore


def head_features(model: nn.Module, images: Tensor, batch_size: int = 1000) -> tuple[Tensor, Tensor]:
    """(logits (N, K), input of the classifier head (N, D)) of ``images`` (model input space)."""
    _, head = kkt.classifier_head(model)
    captured: list[Tensor] = []
    handle = head.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach()))
    logits = []
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                logits.append(model(images[start:start + batch_size]).detach())
    finally:
        handle.remove()
    return torch.cat(logits), torch.cat(captured).flatten(1)


def fit_multipliers(head: nn.Linear, logits: Tensor, features: Tensor, labels: Tensor, *, iterations: int = 300,
                    lr: float = 0.05, lambda_init: float = 0.0, distance: str = "l2",
                    progress: bool = False) -> tuple[Tensor, list[float]]:
    """Multipliers (N,) >= 0 minimizing the relative stationarity distance over ``head`` for fixed
    samples, and that distance after each step (1.0 = the multipliers explain nothing)."""
    residual_pt = F.softmax(logits, dim=1) - F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    weight, bias = head.weight.detach(), head.bias.detach() if head.bias is not None else None
    params = [weight] + ([bias] if bias is not None else [])
    reference = float(kkt.zero_multiplier_distance(params, distance))
    lambdas = torch.full((len(labels),), float(lambda_init), requires_grad=True)
    optimizer = torch.optim.Adam([lambdas], lr=lr)
    history = []
    steps = range(iterations)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="select")
    for _ in steps:
        weighted = residual_pt * lambdas[:, None]
        grads = [weighted.T @ features] + ([weighted.sum(0)] if bias is not None else [])
        loss = kkt.stationarity_distance(params, grads, distance) / reference
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            lambdas.clamp_(min=0.0)  # dual feasibility by projection: a sample may drop to 0
        history.append(float(loss.detach()))
    return lambdas.detach(), history


def fit_feasible(head: nn.Linear, logits: Tensor, features: Tensor, labels: Tensor, *, feasible_only: bool = True,
                 **options) -> tuple[Tensor, list[float]]:
    """:func:`fit_multipliers` over the primal-feasible samples only (those the model classifies
    right) when ``feasible_only``; the others keep lambda = 0 and rank last."""
    keep = (logits.argmax(1) == labels) if feasible_only else torch.ones_like(labels, dtype=torch.bool)
    lambdas = torch.zeros(len(labels))
    fitted, history = fit_multipliers(head, logits[keep], features[keep], labels[keep], **options)
    lambdas[keep] = fitted
    return lambdas, history


def top_per_class(scores: Tensor, labels: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` highest scores of each class (classes in order, best first)."""
    out = []
    for cls in labels.unique().tolist():
        members = (labels == cls).nonzero().flatten()
        order = torch.argsort(scores[members], descending=True, stable=True)
        out.append(members[order[:k]])
    return torch.cat(out)


def pool_indices(labels: Tensor, per_class: int, generator: torch.Generator) -> Tensor:
    """A random pool of ``per_class`` samples of each class (every sample when 0), sorted."""
    if per_class == 0:
        return torch.arange(len(labels))
    chosen = []
    for cls in labels.unique().tolist():
        members = (labels == cls).nonzero().flatten()
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.cat(chosen).sort().values


def mean_entropy(logits: Tensor) -> float:
    return float(kkt.prediction_entropy(logits).mean()) if len(logits) else float("nan")


def read_coreset(store: "RunStore", name: str, top_k: int = 0) -> tuple[Tensor, Tensor]:
    """Images in [0, 1] and labels of the coreset of size ``top_k`` per class (0: the largest)."""
    path = store.export_path(name)
    if not path.is_file():
        raise DsvError(f"{path}: no coreset; run the select stage first")
    with np.load(path, allow_pickle=False) as z:
        sizes = sorted(int(k) for k in z["top_k"])
        k = top_k or sizes[-1]
        if k not in sizes:
            raise DsvError(f"{path}: no coreset of {k} per class (it holds {sizes}); set retrain.top_k")
        return torch.from_numpy(z[f"top{k}_images"]), torch.from_numpy(z[f"top{k}_labels"]).long()


def select(pipeline: "Pipeline", store: "RunStore") -> list[Path]:
    """The select stage: fit lambda over a pool of real samples, export the top-k per class."""
    from dsv.retrain import normalize

    s = pipeline.config.select or SelectConfig()
    data = pipeline.data()
    images, labels = data.tensors(s.split)
    gen = torch.Generator().manual_seed(pipeline.config.run.seed)
    pool = pool_indices(labels, s.pool_per_class, gen)
    model = pipeline.loaded_model.module.cpu().eval()
    logits, features = head_features(model, normalize(images[pool], data.mean, data.std))
    _, head = kkt.classifier_head(model)
    lambdas, history = fit_feasible(head, logits, features, labels[pool], feasible_only=s.feasible_only,
                                    iterations=s.iterations, lr=s.lr_lambda, lambda_init=s.lambda_init,
                                    distance=s.distance, progress=pipeline.progress)
    arrays = {"top_k": np.asarray(s.top_k), "pool_indices": pool.numpy(), "pool_lambda": lambdas.numpy(),
              "pool_labels": labels[pool].numpy()}
    entropy_selected = {}
    for k in s.top_k:
        chosen = top_per_class(lambdas, labels[pool], k)
        arrays[f"top{k}_indices"] = pool[chosen].numpy()
        arrays[f"top{k}_images"] = images[pool[chosen]].numpy()
        arrays[f"top{k}_labels"] = labels[pool[chosen]].numpy()
        entropy_selected[str(k)] = mean_entropy(logits[chosen])
    random_rows = torch.randperm(len(pool), generator=gen)[: s.random_samples]
    path = store.export_path(s.npz)
    np.savez(path, **arrays)
    store.put_result("select", {
        "pool": int(len(pool)), "positive_lambda": int((lambdas > 0).sum()),
        "relative_stationarity": history[-1], "entropy_selected": entropy_selected,
        "entropy_random": mean_entropy(logits[random_rows]), "npz": s.npz,
    })
    return [path]
