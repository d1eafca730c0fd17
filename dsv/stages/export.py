"""The ``export`` stage: the labelled PNG grid and the NPZ of the candidates, written inside the
run store (``<store>/exports/``)."""

from __future__ import annotations

from pathlib import Path

import attrs

from dsv import config as cfg
from dsv.pipeline import Stage, StageContext
from dsv.store import RunStore
from dsv.store.export import save_grid, save_npz


@attrs.define(kw_only=True)
class ExportConfig:
    #: the labelled grid of the candidates, written inside the run store; empty for none
    png: str = "grid.png"
    #: the candidates, targets, lambdas and alive flags as NPZ, written inside the run store;
    #: empty for none
    npz: str = ""


def run(context: StageContext, store: RunStore | None) -> list[Path]:
    assert store is not None
    e = context.table("export") or ExportConfig()
    out = []
    if e.png and store.has_candidates:
        out.append(save_grid(store, store.export_path(e.png)))
    if e.npz and store.has_candidates:
        out.append(save_npz(store, store.export_path(e.npz)))
    return out


def check(export: ExportConfig, config: cfg.PipelineConfig) -> list[str]:
    return cfg.file_name_problems("export", {"png": export.png, "npz": export.npz})


STAGE = Stage(name="export", run=run, order=900, table=ExportConfig, check=check)
