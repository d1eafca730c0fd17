"""The verifier: an independent classifier names the generated images (the ``evaluate`` stage, the
ImageNet benchmark).

The candidates are taken back to pixel space with the store's mean and std, resized to the
verifier's input size and normalized for it, so the verifier may differ from the generator in
size and normalization (EfficientNet-Lite2 at 260 px checks Lite0's 224 px images). The result,
recorded under ``verifier``, is the top-1 and top-5 accuracy of the targets, overall and per class.

Mixture targets (``{ 207 = 0.4, 417 = 0.6 }``) have no single right answer and are left out; the
result counts them under ``mixtures_skipped``. Dead candidates (pruned by dual feasibility) are
images all the same and are scored.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dsv.plugins import InputSpec, LoadedModel, normalize


@torch.no_grad()
def verifier_probabilities(
    x: np.ndarray, mean, std, verifier: LoadedModel, *, batch_size: int = 16, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Softmax of ``verifier`` on model-space candidates ``x`` (N, C, H, W) normalized by ``mean``/``std``."""
    module = verifier.module.to(device).eval()
    pixel_mean, pixel_std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in (mean, std))
    out = []
    for start in range(0, len(x), batch_size):
        images = (torch.from_numpy(np.asarray(x[start : start + batch_size])) * pixel_std + pixel_mean).clamp(0, 1)
        out.append(module(verifier_inputs(images, verifier.spec).to(device)).softmax(dim=1).cpu())
    return torch.cat(out)


def verifier_inputs(images: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """Images in [0, 1] (N, C, H, W) as a verifier of ``spec`` takes them: resized (bilinear,
    antialiased) to its input size and normalized for it."""
    if images.shape[-1] != spec.size or images.shape[-2] != spec.size:
        images = F.interpolate(
            images, size=(spec.size, spec.size), mode="bilinear", align_corners=False, antialias=True
        )
    return normalize(images, spec.mean, spec.std)


def score(probabilities: torch.Tensor, targets: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Top-1 / top-5 of the single-class targets (rows of ``targets`` with one nonzero weight),
    overall and per class (keyed by class name), the mean probability of the target, and each
    candidate's top-3 classes with their probabilities (``top3``)."""
    targets = np.asarray(targets)
    single = (targets > 1e-6).sum(axis=1) == 1
    labels = torch.from_numpy(targets.argmax(axis=1)[single])
    probs = probabilities[torch.from_numpy(single)]
    k = min(5, probs.shape[1])
    top = probs.topk(k, dim=1).indices
    top1 = (top[:, 0] == labels).float()
    top5 = (top == labels[:, None]).any(dim=1).float()
    p_target = probs.gather(1, labels[:, None])[:, 0] if len(labels) else torch.zeros(0)
    per_class = {}
    for cls in sorted(set(labels.tolist())):
        rows = labels == cls
        per_class[_name(classes, cls)] = {
            "class": int(cls),
            "n": int(rows.sum()),
            "top1": float(top1[rows].mean()),
            "top5": float(top5[rows].mean()),
            "predicted": [_name(classes, int(i)) for i in top[rows, 0]],
        }
    mean = lambda t: float(t.mean()) if len(t) else None  # noqa: E731
    best = probabilities.topk(min(3, probabilities.shape[1]), dim=1)
    top3 = [  # every candidate's three most likely classes, mixtures included, in candidate order
        [[_name(classes, int(i)), round(float(p), 4)] for p, i in zip(values, indices)]
        for values, indices in zip(best.values, best.indices)
    ]
    return {
        "top1": mean(top1),
        "top5": mean(top5),
        "p_target": mean(p_target),
        "n": int(len(labels)),
        "mixtures_skipped": int((~single).sum()),
        "per_class": per_class,
        "top3": top3,
    }


def _name(classes: list[str], index: int) -> str:
    return classes[index] if index < len(classes) else str(index)
