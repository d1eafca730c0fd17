"""The tables of the generation stages: ``[evaluate]`` (the verifier), ``[interpolate]``, ``[edit]``.

Each is optional; a stage whose table is absent does nothing. None of them changes what the
synthesize stage computes, so a run may resume with other values (see
:data:`dsv.rawconfig.RESUMABLE_KEYS`). The interpolation and the edits run their own small
syntheses in groups inside the run store; they reuse the ``[synthesis]`` table with their own
targets, initial images and iteration count.
"""

from __future__ import annotations

from typing import Any

import attrs


@attrs.define(kw_only=True)
class EvaluateConfig:
    """The independent classifier that checks the generated images (a model source, as [model])."""

    model: str = "efficientnet-lite2"
    weights_path: str = ""
    options: dict[str, Any] = attrs.field(factory=dict)
    batch_size: int = 16


@attrs.define(kw_only=True)
class InterpolateConfig:
    """A strip from class ``from_class`` to ``to_class``: targets ``(1 - d) y_a + d y_b`` for
    ``steps`` values of ``d`` from 0 to 1."""

    from_class: int
    to_class: int
    steps: int = 5
    iterations: int = 0  # 0: synthesis.iterations
    png: str = "interpolation.png"


@attrs.define(kw_only=True)
class EditSpec:
    image: str  # a PNG or JPEG file; read, never written
    target: int


@attrs.define(kw_only=True)
class EditConfig:
    """Class edits of given images: start from the image, synthesize towards another class."""

    edits: list[EditSpec]
    iterations: int = 0  # 0: synthesis.iterations
    size: int = 0  # working resolution; 0: the model's input size (the resolution schedule is not used)
    lr_x: float = 0.0  # 0: synthesis.lr_x
    png: str = "edits.png"


def check_generate(evaluate: EvaluateConfig | None, interpolate: InterpolateConfig | None,
                   edit: EditConfig | None) -> list[str]:
    """Range checks of the three tables (class indices are checked against the model at run time)."""
    problems = []
    if evaluate is not None and evaluate.batch_size < 1:
        problems.append(f"evaluate.batch_size: must be at least 1, got {evaluate.batch_size}")
    if interpolate is not None:
        if interpolate.steps < 2:
            problems.append(f"interpolate.steps: must be at least 2 (both ends), got {interpolate.steps}")
        if interpolate.iterations < 0:
            problems.append(f"interpolate.iterations: must be at least 0, got {interpolate.iterations}")
        for key in ("from_class", "to_class"):
            if getattr(interpolate, key) < 0:
                problems.append(f"interpolate.{key}: a class index, got {getattr(interpolate, key)}")
    if edit is not None:
        if not edit.edits:
            problems.append("edit.edits: give at least one { image = ..., target = ... }")
        for i, e in enumerate(edit.edits):
            if e.target < 0:
                problems.append(f"edit.edits[{i}].target: a class index, got {e.target}")
            if not e.image:
                problems.append(f"edit.edits[{i}].image: a PNG or JPEG file")
        if edit.iterations < 0:
            problems.append(f"edit.iterations: must be at least 0, got {edit.iterations}")
        if edit.size != 0 and edit.size < 8:
            problems.append(f"edit.size: 0 (the model's size) or at least 8, got {edit.size}")
        if edit.lr_x < 0:
            problems.append(f"edit.lr_x: must be at least 0 (0: synthesis.lr_x), got {edit.lr_x}")
    return problems


def export_names(interpolate: InterpolateConfig | None, edit: EditConfig | None) -> dict[str, str]:
    """Export file names these tables write into the run store, by key path (checked as plain names)."""
    out = {}
    if interpolate is not None:
        out["interpolate.png"] = interpolate.png
    if edit is not None:
        out["edit.png"] = edit.png
    return out
