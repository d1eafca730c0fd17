"""The ``report`` stage: one self-contained HTML page of the run (provenance, config, candidates
with the verifier's top-3, history curves, every stage result), written inside the run store
(``<store>/exports/``); see :mod:`dsv.store.report`. It runs last, so it shows every result."""

from __future__ import annotations

from pathlib import Path

import attrs

from dsv import config as cfg
from dsv.pipeline import Stage, StageContext
from dsv.store import RunStore
from dsv.store.report import write_report


@attrs.define(kw_only=True)
class ReportConfig:
    #: the report's file name, written inside the run store
    html: str = "report.html"


def run(context: StageContext, store: RunStore | None) -> list[Path]:
    assert store is not None
    r = context.table("report") or ReportConfig()
    return [write_report(store, store.export_path(r.html))]


def check(report: ReportConfig, config: cfg.PipelineConfig) -> list[str]:
    problems = cfg.file_name_problems("report", {"html": report.html})
    if not problems and not report.html:
        problems.append("report.html: give a file name")
    return problems


STAGE = Stage(name="report", run=run, order=1000, table=ReportConfig, check=check)
