"""What independent classifiers say of the latent generator's images: interpolation strips and
edits (the ``interpolate`` and ``edit`` stages, ``benchmarks/imagenet_latent.py``).

A strip from class a to class b is good when each verifier names its ends a and b, its
p(b) rises with the step (rank correlation with the step near 1), and both classes are in its
top-5 in the middle (1/3 <= d <= 2/3). An edit is good when the verifiers name the target and the
image is still the photograph (SSIM); an edit that only the generator names is adversarial.
"""

from __future__ import annotations

from typing import Any

import kornia
import numpy as np
import torch

#: the middle of a strip: the steps with d in this range
MIDDLE = (1 / 3, 2 / 3)


def pixels(x: np.ndarray, mean, std) -> np.ndarray:
    """Model-space images (N, C, H, W) as pixels in [0, 1]."""
    m, s = (np.asarray(v, dtype=np.float32).reshape(1, -1, 1, 1) for v in (mean, std))
    return np.clip(np.asarray(x) * s + m, 0, 1)


def ssim_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The SSIM map of two batches (N, C, H, W) in [0, 1]: the standard definition (Gaussian
    window 11, sigma 1.5, Wang et al. 2004) with kornia; differentiable."""
    return kornia.metrics.ssim(x, y, window_size=11, max_val=1.0)


def edit_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two (C, H, W) images in [0, 1] (:func:`ssim_map`), the mean of the map over
    channels and pixels."""
    x, y = (torch.as_tensor(np.asarray(v), dtype=torch.float32)[None] for v in (a, b))
    if x.shape != y.shape:
        raise ValueError(f"edit_ssim: images of the same shape expected, got {tuple(x.shape)} and {tuple(y.shape)}")
    return float(ssim_map(x, y).mean())


def rank_correlation(values: list[float]) -> float:
    """Spearman's rank correlation of ``values`` with their position; 0 for constant values."""
    ranks = np.argsort(np.argsort(values, kind="stable"), kind="stable").astype(float)
    if len(values) < 2 or np.ptp(np.asarray(values, dtype=float)) == 0:
        return 0.0
    return float(np.corrcoef(ranks, np.arange(len(values), dtype=float))[0, 1])


def score_strip(probs: torch.Tensor, a: int, b: int, classes: list[str]) -> dict[str, Any]:
    """One verifier's figures of a strip from class ``a`` to ``b`` (``probs``: its (steps, classes)
    softmax, step 0 first)."""
    steps = len(probs)
    top5 = probs.topk(min(5, probs.shape[1]), dim=1).indices
    middle = [j for j in range(steps) if MIDDLE[0] - 1e-6 <= j / (steps - 1) <= MIDDLE[1] + 1e-6]
    p_to = [float(v) for v in probs[:, b]]
    return {
        "start_top1": classes[int(probs[0].argmax())],
        "end_top1": classes[int(probs[-1].argmax())],
        "start_named": int(probs[0].argmax()) == a,
        "end_named": int(probs[-1].argmax()) == b,
        "p_to": [round(v, 4) for v in p_to],
        "rank_correlation": rank_correlation(p_to),
        "middle_top5_both": float(np.mean([a in top5[j] and b in top5[j] for j in middle])) if middle else None,
    }


def score_edit(probs: torch.Tensor, target: int, classes: list[str]) -> dict[str, Any]:
    """One classifier's figures of an edit towards ``target`` (``probs``: its (classes,) softmax)."""
    return {
        "named": int(probs.argmax()) == target,
        "top1": classes[int(probs.argmax())],
        "p_target": round(float(probs[target]), 4),
    }


def adversarial(generator_named: bool, verifiers_named: list[bool]) -> bool:
    """An edit the generator names as the target and no verifier does."""
    return generator_named and not any(verifiers_named)
