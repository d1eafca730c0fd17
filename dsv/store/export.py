"""Exports of a run store: a labelled PNG grid, rows of titled images, an NPZ of the candidates,
and the one matplotlib set-up every plot of dsv uses (:func:`pyplot`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class ExportSource(Protocol):
    """What the exports read: a run store, or a result kept in memory (``dsv.api.SynthesisResult``)."""

    @property
    def meta(self) -> dict[str, Any]: ...

    def candidates(self) -> dict[str, np.ndarray]: ...


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (files only, no display), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_images(x: np.ndarray, mean, std) -> np.ndarray:
    """Model-space candidates (N, C, H, W) -> displayable images (N, H, W, C) in [0, 1]."""
    mean = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return np.clip(x * std + mean, 0.0, 1.0).transpose(0, 2, 3, 1)


def save_npz(store: ExportSource, path: str | Path) -> Path:
    c = store.candidates()
    path = Path(path)
    np.savez(
        path,
        x=c["x"],
        **{"lambda": c["lambda"]},
        labels=c["labels"],
        alive=c["alive"],
        targets=c["targets"],
        allow_pickle=False,  # plain arrays only: exports hold no pickles
    )
    return path


def _title(classes: list[str], target_row: np.ndarray) -> str:
    nz = np.flatnonzero(target_row > 1e-6)
    if len(nz) == 1:
        return classes[nz[0]] if nz[0] < len(classes) else str(nz[0])
    parts = sorted(nz, key=lambda i: -target_row[i])[:2]
    return " / ".join(f"{target_row[i]:.1f} {classes[i] if i < len(classes) else i}" for i in parts)


def _show(ax, img: np.ndarray) -> None:
    ax.imshow(
        img[..., 0] if img.shape[-1] == 1 else img,
        cmap="gray" if img.shape[-1] == 1 else None,
        vmin=0,
        vmax=1,
        interpolation="nearest",
    )


def save_grid(store: ExportSource, path: str | Path, columns: int | None = None) -> Path:
    """A grid of the candidates, each titled with its target class and its lambda."""
    plt = pyplot()

    meta = store.meta
    c = store.candidates()
    images = to_images(c["x"], meta["mean"], meta["std"])
    classes = meta.get("classes", [])
    n = len(images)
    large = images.shape[1] >= 100  # e.g. ImageNet: fewer, larger cells keep the detail at 100 dpi
    cols = columns or min(n, 5 if large else 10)
    rows = math.ceil(n / cols)
    cell = 2.6 if large else 1.6  # inches
    fig, axes = plt.subplots(rows, cols, figsize=(cell * cols, (cell + 0.4) * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, ax in enumerate(axes.flat[:n]):
        _show(ax, images[i])
        status = f"λ={c['lambda'][i]:.2g}" if c["alive"][i] else "dead"
        ax.set_title(f"{_title(classes, c['targets'][i])}\n{status}", fontsize=7)
    fig.suptitle(f"{meta.get('name', 'run')}: {int(c['alive'].sum())}/{n} alive", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_rows(images: list[list[np.ndarray]], titles: list[list[str]], path: str | Path, title: str = "") -> Path:
    """Rows of displayable images (H, W, C in [0, 1], see :func:`to_images`), each titled: an
    interpolation strip is one row, before/after edit pairs are one row each."""
    plt = pyplot()

    rows, cols = len(images), max(len(r) for r in images)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols, 2.1 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, (row, names) in enumerate(zip(images, titles)):
        for c, (img, name) in enumerate(zip(row, names)):
            _show(axes[r, c], img)
            axes[r, c].set_title(name, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
