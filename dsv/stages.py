"""The stages that run after synthesis, by name.

A stage is a function ``(pipeline, store) -> None`` that reads the run store the synthesize stage
wrote (or an existing one), does its work, records what it measured with ``store.put_result`` (so
``dsv-pipeline show --json`` lists it) and returns the files it wrote. :class:`dsv.pipeline.Pipeline`
runs the stages a file lists in the order of :data:`dsv.config.STAGES`. Stage bodies live in their
own modules; this one only dispatches.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from dsv.pipeline import Pipeline
    from dsv.store import RunStore

StageFunction = Callable[["Pipeline", "RunStore"], "list[Path]"]


def select(pipeline: "Pipeline", store: "RunStore") -> list[Path]:
    from dsv.select import select as run_select

    return run_select(pipeline, store)


def retrain(pipeline: "Pipeline", store: "RunStore") -> list[Path]:
    from dsv.retrain import retrain as run_retrain

    return run_retrain(pipeline, store)


def evaluate(pipeline: "Pipeline", store: "RunStore") -> list[Path]:
    """Each part measures what it has inputs for and returns [] otherwise: the retrained models'
    test accuracy (after ``retrain``), and the independent verifier's names of the candidates
    (with an ``[evaluate]`` table)."""
    from dsv.evaluate_retrained import evaluate_retrained
    from dsv.verifier import evaluate_verifier

    return evaluate_retrained(pipeline, store) + evaluate_verifier(pipeline, store)


def analyse(pipeline: "Pipeline", store: "RunStore") -> list[Path]:
    from dsv.analyse import analyse as run_analyse

    return run_analyse(pipeline, store)


def export(pipeline: "Pipeline", store: "RunStore") -> list[Path]:
    from dsv.export import save_grid, save_npz

    out = []
    e = pipeline.config.export
    if e.png and store.has_candidates:
        out.append(save_grid(store, store.export_path(e.png)))
    if e.npz and store.has_candidates:
        out.append(save_npz(store, store.export_path(e.npz)))
    return out


def interpolate(pipeline: "Pipeline", store: "RunStore") -> list[Path]:
    from dsv.interpolate import interpolate as run_interpolation

    return run_interpolation(pipeline, store)


def edit(pipeline: "Pipeline", store: "RunStore") -> list[Path]:
    from dsv.edit import edit as run_edits

    return run_edits(pipeline, store)


# name -> function; train and synthesize are run by the pipeline itself (they make the store)
AFTER_SYNTHESIS: dict[str, StageFunction] = {
    "select": select,
    "retrain": retrain,
    "evaluate": evaluate,
    "analyse": analyse,
    "interpolate": interpolate,
    "edit": edit,
    "export": export,
}
