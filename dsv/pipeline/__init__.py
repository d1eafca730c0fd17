"""The pipeline layer: what a stage is and gets (:mod:`dsv.pipeline.stage`), the orchestrator that
runs the stages a file lists (:mod:`dsv.pipeline.orchestrator`), and the small syntheses stages run
inside a run store (:mod:`dsv.pipeline.subrun`)."""

from dsv.pipeline.orchestrator import (
    Pipeline,
    PipelineResult,
    load_pipeline,
    load_pipeline_text,
    plugin_option_problems,
    registered_stages,
    stage_tables,
    table_plugin_problems,
)
from dsv.pipeline.stage import PHASES, Phase, Stage, StageContext

__all__ = [
    "PHASES",
    "Phase",
    "Pipeline",
    "PipelineResult",
    "Stage",
    "StageContext",
    "load_pipeline",
    "load_pipeline_text",
    "plugin_option_problems",
    "registered_stages",
    "stage_tables",
    "table_plugin_problems",
]
