"""How well candidates reconstruct a model's training images, by the protocol of Haim et al.
("Reconstructing Training Data from Trained Neural Networks", NeurIPS 2022; their public code,
github.com/nivha/dataset_reconstruction, ``evaluations.py``, ``analysis.py`` and
``common_utils/image.py``):

1. every training image is matched to its nearest candidate by normalised cross-correlation
   (:func:`match`; their ``find_nearest_neighbour(..., search='ncc', vote='min', use_bb=False)``
   of the MNIST notebook);
2. the pair is scaled as their ``scale`` does: the training image as it is (pixel values in
   [0, 1]), the candidate min-max scaled to [0, 1] per image;
3. SSIM of the pair (:func:`ssim`: kornia's, window 3, as their ``get_ssim_pairs_kornia``);
4. the training images above SSIM 0.4 and 0.6 are counted, and the 10 best are averaged (their
   score is the mean DSSIM ``(1 - SSIM) / 2`` of the 10 best; ``top10_ssim`` is its SSIM).

Facts and settings are theirs; the code is written here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import kornia
import numpy as np
import torch
from torch import Tensor

#: SSIM thresholds of the counts (Haim et al. call a pair above 0.4 a reconstruction)
THRESHOLDS = (0.4, 0.6)
#: the Gaussian window of their SSIM (``kornia.metrics.ssim(x, y, window_size=3)``)
SSIM_WINDOW = 3

_EPS = 1e-12


def _as_images(x: Any, name: str) -> Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).detach().cpu()
    if t.ndim == 3:  # (N, H, W): one channel
        t = t[:, None]
    if t.ndim != 4 or len(t) == 0:
        raise ValueError(f"{name}: images (N, C, H, W) with N > 0 expected, got shape {tuple(t.shape)}")
    return t.double()


def standardize(x: Tensor) -> Tensor:
    """Each image's each channel minus its mean, divided by its standard deviation (unbiased, as
    ``torch.std``): Haim et al.'s ``normalize_batch``. A constant channel (std 0) becomes 0 where
    theirs becomes NaN."""
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    mean = flat.mean(dim=2, keepdim=True)
    std = flat.std(dim=2, keepdim=True)
    return ((flat - mean) / std.clamp(min=_EPS)).reshape(x.shape)


def ncc_distance(x: Any, y: Any) -> Tensor:
    """Haim et al.'s ``ncc_dist(x, y, div_dim=True)``: the ``(len(x), len(y))`` squared Euclidean
    distances between :func:`standardize`\\ d images, divided by the number of values per image
    ``C * H * W``. For ``P = H * W`` pixels it equals ``2 (P - 1) / P * (1 - ncc)``, with ``ncc``
    the correlation :func:`match` reports; the nearest candidate is the same under both."""
    a = standardize(_as_images(x, "x")).flatten(1)
    b = standardize(_as_images(y, "y")).flatten(1)
    d = a.pow(2).sum(1)[:, None] + b.pow(2).sum(1)[None, :] - 2 * a @ b.T
    return d / a.shape[1]


def match(train_images: Any, candidates: Any, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """Every training image's nearest candidate by normalised cross-correlation.

    What is normalised: each image's each channel separately, to mean 0 and (unbiased) standard
    deviation 1 (:func:`standardize`); the correlation of two images is then the mean over
    channels of ``sum_p a_p b_p / (P - 1)`` (Pearson's correlation of the channel's ``P`` pixels),
    in [-1, 1]. It does not change when an image's channel becomes ``a x + b`` with ``a > 0``, so
    the candidates may be in any affine pixel scale (model input space included). Haim et al.
    minimise :func:`ncc_distance` instead, a decreasing affine function of this correlation: the
    same candidate.

    :param train_images: ``(N, C, H, W)`` (or ``(N, H, W)``).
    :param candidates: ``(M, C, H, W)``, the same ``C, H, W``.
    :param chunk: training images compared at once (memory, not results).
    :returns: ``(indices, ncc)``: for each training image the index of its candidate (``(N,)``,
        int64; ties go to the lowest index) and their correlation (``(N,)``, float64).
    """
    a = standardize(_as_images(train_images, "train_images"))
    b = standardize(_as_images(candidates, "candidates"))
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"train images {tuple(a.shape[1:])} and candidates {tuple(b.shape[1:])} differ in shape")
    channels, pixels = a.shape[1], a.shape[2] * a.shape[3]
    scale = channels * max(pixels - 1, 1)
    bf = b.flatten(1)
    indices, best = [], []
    for start in range(0, len(a), chunk):
        corr = a[start : start + chunk].flatten(1) @ bf.T / scale
        value, index = corr.max(dim=1)
        indices.append(index)
        best.append(value)
    return torch.cat(indices), torch.cat(best)


def scale_to_unit(x: Any) -> Tensor:
    """Each image min-max scaled to [0, 1] over all its values (Haim et al.'s
    ``transform_vmin_vmax_batch``); a constant image becomes 0."""
    t = _as_images(x, "images")
    flat = t.flatten(1)
    low, high = flat.min(1).values, flat.max(1).values
    return ((flat - low[:, None]) / (high - low).clamp(min=_EPS)[:, None]).reshape(t.shape)


def ssim(a: Any, b: Any) -> Tensor:
    """SSIM of each pair ``(a[i], b[i])`` (images in [0, 1]), the mean of the SSIM map: the
    protocol of Haim et al. (``get_ssim_pairs_kornia``), i.e. ``kornia.metrics.ssim`` with a
    Gaussian window of size 3 (sigma 1.5), ``max_val`` 1 (``C1 = 0.01^2``, ``C2 = 0.03^2``) and
    reflect padding to the image size, averaged over channels and pixels.

    Chosen because it is theirs exactly (so the 0.4 / 0.6 counts mean what theirs mean) and kornia
    is already a dependency. scikit-image's ``structural_similarity`` gives other numbers: its
    window is 7x7 uniform (or, with ``gaussian_weights``, 11 wide), its map covers only the
    region where the window fits, and it needs no kornia-like padding; on 8x8 digits the
    difference is large (0.90 here against 0.98 there for one noisy pair).

    :returns: ``(N,)`` float64.
    """
    x, y = _as_images(a, "a"), _as_images(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"ssim: pairs of the same shape expected, got {tuple(x.shape)} and {tuple(y.shape)}")
    return kornia.metrics.ssim(x, y, window_size=SSIM_WINDOW, max_val=1.0).flatten(1).mean(dim=1)


@attrs.frozen(eq=False)
class ReconstructionScore:
    """What :func:`evaluate_reconstruction` measured, per training image and in sum."""

    #: (n,) each training image's nearest candidate (an index into the candidates)
    candidate: np.ndarray
    #: (n,) the normalised cross-correlation of the pair (:func:`match`)
    ncc: np.ndarray
    #: (n,) the SSIM of the pair (:func:`ssim`)
    ssim: np.ndarray
    #: (n,) the training images' labels
    labels: np.ndarray
    #: training images whose SSIM is above 0.4
    count_04: int
    #: training images whose SSIM is above 0.6
    count_06: int
    #: the mean SSIM of the 10 best pairs (of all of them below 10)
    top10_ssim: float
    #: training images scored
    n: int
    #: candidates they were matched among
    candidates: int
    #: (n,) each training image's normalised margin, when given (NaN where not measured)
    margins: np.ndarray | None = None
    #: (n,) each training image's multiplier, when given (NaN where not measured)
    lambdas: np.ndarray | None = None
    #: (n,) whether the matched candidate's label is the training image's, when candidate labels were given
    same_label: np.ndarray | None = None

    @property
    def order(self) -> np.ndarray:
        """Training image indices, best SSIM first."""
        return np.argsort(-self.ssim, kind="stable")

    def summary(self) -> dict[str, Any]:
        """The scalars and per-sample lists as JSON values (the ``reconstruction`` stage result)."""
        out: dict[str, Any] = {
            "count_04": self.count_04,
            "count_06": self.count_06,
            "top10_ssim": self.top10_ssim,
            "n": self.n,
            "candidates": self.candidates,
            "mean_ssim": float(self.ssim.mean()),
            "candidate": self.candidate.tolist(),
            "ncc": self.ncc.tolist(),
            "ssim": self.ssim.tolist(),
            "labels": self.labels.tolist(),
        }
        if self.same_label is not None:
            out["same_label"] = int(self.same_label.sum())
        for key in ("margins", "lambdas"):
            values = getattr(self, key)
            if values is not None:  # JSON has no NaN: unmeasured samples are null
                out[key] = [None if not np.isfinite(v) else float(v) for v in values]
        return out

    def __repr__(self) -> str:
        return (
            f"ReconstructionScore(n={self.n}, candidates={self.candidates}, count_04={self.count_04}, "
            f"count_06={self.count_06}, top10_ssim={self.top10_ssim:.4g})"
        )


def _per_sample(values: Any, n: int, name: str) -> np.ndarray | None:
    if values is None:
        return None
    out = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(out) != n:
        raise ValueError(f"{name}: one value per training image expected ({n}), got {len(out)}")
    return out


def evaluate_reconstruction(
    train_images: Any,
    labels: Any,
    candidates: Any,
    margins: Any = None,
    lambdas: Any = None,
    *,
    candidate_labels: Any = None,
) -> ReconstructionScore:
    """Score ``candidates`` as reconstructions of ``train_images`` by Haim et al.'s protocol:
    each training image's nearest candidate by normalised cross-correlation (:func:`match`), the
    candidate min-max scaled to [0, 1] (:func:`scale_to_unit`), the SSIM of the pair (:func:`ssim`),
    the counts above 0.4 and 0.6 and the mean SSIM of the 10 best.

    :param train_images: ``(N, C, H, W)`` pixel values in [0, 1] (the data set's images, before
        the model's normalisation).
    :param labels: ``(N,)`` their labels.
    :param candidates: ``(M, C, H, W)`` in any affine pixel scale (model input space, or undone to
        pixels: a candidate is scaled per image).
    :param margins: ``(N,)`` each training image's normalised margin (e.g. the smallest of
        :attr:`dsv.kkt.premise.PremiseResult.margins` per row), for the plot.
    :param lambdas: ``(N,)`` each training image's multiplier (e.g. the row sums of
        :attr:`dsv.kkt.premise.PremiseResult.lambdas`), for the plot.
    :param candidate_labels: ``(M,)`` the candidates' labels: counts the pairs of the same label.
    """
    train = _as_images(train_images, "train_images")
    cands = _as_images(candidates, "candidates")
    n = len(train)
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    if len(y) != n:
        raise ValueError(f"labels: one per training image expected ({n}), got {len(y)}")
    index, ncc = match(train, cands)
    scores = ssim(train, scale_to_unit(cands[index])).numpy()
    same = None
    if candidate_labels is not None:
        cl = np.asarray(candidate_labels).reshape(-1).astype(np.int64)
        if len(cl) != len(cands):
            raise ValueError(f"candidate_labels: one per candidate expected ({len(cands)}), got {len(cl)}")
        same = cl[index.numpy()] == y
    best = np.sort(scores)[::-1][:10]
    return ReconstructionScore(
        candidate=index.numpy(),
        ncc=ncc.numpy(),
        ssim=scores,
        labels=y,
        count_04=int((scores > THRESHOLDS[0]).sum()),
        count_06=int((scores > THRESHOLDS[1]).sum()),
        top10_ssim=float(best.mean()),
        n=n,
        candidates=len(cands),
        margins=_per_sample(margins, n, "margins"),
        lambdas=_per_sample(lambdas, n, "lambdas"),
        same_label=same,
    )


def plot_reconstruction(
    score: ReconstructionScore, train_images: Any, candidates: Any, path: str | Path, best: int = 10
) -> Path:
    """The ``best`` pairs (training image over its candidate, titled with the SSIM) and, when the
    score has them, SSIM against each training image's normalised margin and multiplier, as a PNG."""
    from dsv.store.export import pyplot

    plt = pyplot()
    train = _as_images(train_images, "train_images")
    shown = scale_to_unit(_as_images(candidates, "candidates")[torch.as_tensor(score.candidate)])
    order = score.order[: max(1, min(best, score.n))]
    scatters = [(k, v) for k, v in (("normalised margin", score.margins), ("λ", score.lambdas)) if v is not None]
    cols = len(order)
    rows = 3 if scatters else 2
    fig = plt.figure(figsize=(max(1.2 * cols, 3.5 * len(scatters), 3.0), 3.0 + (3.0 if scatters else 0.0)))
    grid = fig.add_gridspec(rows, max(cols, 2 * len(scatters), 1), height_ratios=[1, 1, 2.2][:rows])

    def show(ax, image: Tensor) -> None:
        img = image.clamp(0, 1).permute(1, 2, 0).numpy()
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])

    for col, i in enumerate(order):
        top = fig.add_subplot(grid[0, col])
        show(top, train[i])
        top.set_title(f"{score.ssim[i]:.2f}", fontsize=8)
        show(fig.add_subplot(grid[1, col]), shown[i])
        if col == 0:
            top.set_ylabel("train", fontsize=8)
            fig.axes[-1].set_ylabel("candidate", fontsize=8)
    width = max(cols, 2 * len(scatters), 1) // max(len(scatters), 1)
    for k, (name, values) in enumerate(scatters):
        ax = fig.add_subplot(grid[2, k * width : (k + 1) * width])
        ok = np.isfinite(values)
        ax.scatter(values[ok], score.ssim[ok], s=8, alpha=0.7)
        for t in THRESHOLDS:
            ax.axhline(t, color="grey", lw=0.6, ls="--")
        ax.set_xlabel(name)
        ax.set_ylabel("SSIM")
    fig.suptitle(
        f"{score.count_04} of {score.n} above SSIM 0.4, {score.count_06} above 0.6; "
        f"top-10 mean {score.top10_ssim:.3f} ({score.candidates} candidates)",
        fontsize=9,
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
