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


#: characters of a class name shown in a grid title (ImageNet's longest run to 30)
NAME_CHARS = 20
#: one line of a title at :data:`TITLE_POINTS`, in inches (matplotlib's 1.2 line spacing, rounded up)
TITLE_POINTS = 7
LINE_INCHES = TITLE_POINTS * 1.35 / 72


def _short(name: str) -> str:
    return name if len(name) <= NAME_CHARS else name[: NAME_CHARS - 1] + "…"


def verifier_lines(source: ExportSource, index: int) -> list[str]:
    """What each independent classifier of the evaluate stage said of candidate ``index``: its
    top-1 class and probability, ticked when that is the target (single-class targets only)."""
    results = getattr(source, "results", None) or {}
    verifiers = results.get("verifiers") or {}
    target = source.candidates()["targets"][index] if verifiers else None
    lines = []
    for name, v in verifiers.items():
        top3 = v.get("top3") or []
        if index >= len(top3) or not top3[index]:
            continue
        label, p = top3[index][0]
        mark = ""
        if target is not None and (target > 1e-6).sum() == 1:
            classes = source.meta.get("classes", [])
            wanted = int(target.argmax())
            wanted_name = classes[wanted] if wanted < len(classes) else str(wanted)
            mark = "✓ " if label == wanted_name else "✗ "
        lines.append(f"{mark}{name}: {_short(str(label))} {float(p):.2f}")
    return lines


def grid_figure(store: ExportSource, columns: int | None = None) -> Any:
    """The matplotlib figure of :func:`save_grid` (the caller closes it). Each row is as tall as
    its cells plus the lines of their titles, so no title reaches the row above."""
    plt = pyplot()

    meta = store.meta
    c = store.candidates()
    images = to_images(c["x"], meta["mean"], meta["std"])
    classes = meta.get("classes", [])
    n = len(images)
    large = images.shape[1] >= 100  # e.g. ImageNet: fewer, larger cells keep the detail at 100 dpi
    cols = columns or max(1, min(n, 5 if large else 10))
    rows = max(1, math.ceil(n / cols))
    cell = 2.6 if large else 1.6  # inches
    titles = []
    for i in range(n):
        status = f"λ={c['lambda'][i]:.2g}" if c["alive"][i] else "dead"
        titles.append("\n".join([f"{_short(_title(classes, c['targets'][i]))}  {status}", *verifier_lines(store, i)]))
    lines = max((t.count("\n") + 1 for t in titles), default=1)
    title_inches = lines * LINE_INCHES + 0.08
    fig, axes = plt.subplots(
        rows, cols, figsize=(cell * cols, (cell + title_inches) * rows + 0.35), squeeze=False, layout="constrained"
    )
    for ax in axes.flat:
        ax.axis("off")
    for i, ax in enumerate(axes.flat[:n]):
        _show(ax, images[i])
        ax.set_title(titles[i], fontsize=TITLE_POINTS)
    fig.suptitle(f"{meta.get('name', 'run')}: {int(c['alive'].sum())}/{n} alive", fontsize=9)
    return fig


def save_grid(
    store: ExportSource, path: str | Path, columns: int | None = None, *, dpi: int = 100, colors: int = 0
) -> Path:
    """A grid of the candidates, each titled with its target class, its lambda and, after the
    evaluate stage, what each independent classifier named it (✓ when that is the target).
    ``dpi`` sets its size (a cell of an ImageNet grid is 2.6 inches); ``colors`` > 0 stores it as
    a palette PNG of that many colours (256: about a quarter of the bytes, for a page or a README)."""
    plt = pyplot()
    fig = grid_figure(store, columns)
    path = Path(path)
    if colors:
        import io

        from PIL import Image

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=dpi)
        with Image.open(buffer) as image:
            image.convert("RGB").quantize(colors).save(path, format="PNG", optimize=True)
    else:
        fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def save_rows(images: list[list[np.ndarray]], titles: list[list[str]], path: str | Path, title: str = "") -> Path:
    """Rows of displayable images (H, W, C in [0, 1], see :func:`to_images`), each titled: an
    interpolation strip is one row, before/after edit pairs are one row each."""
    plt = pyplot()

    rows, cols = len(images), max(len(r) for r in images)
    lines = [max((name.count("\n") + 1 for name in names), default=1) for names in titles]
    heights = [1.8 + 0.13 * n for n in lines]  # each row as tall as its image and its title lines
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(1.9 * cols, sum(heights) + (0.3 if title else 0.0)),
        squeeze=False,
        layout="constrained",
        gridspec_kw={"height_ratios": heights},
    )
    for ax in axes.flat:
        ax.axis("off")
    for r, (row, names) in enumerate(zip(images, titles)):
        for c, (img, name) in enumerate(zip(row, names)):
            _show(axes[r, c], img)
            axes[r, c].set_title(name, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
