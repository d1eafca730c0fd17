"""Built-in stages: train, synthesize, select, retrain, evaluate, reconstruction, analyse,
interpolate, edit, export, report (each in its module of :mod:`dsv.stages`), registered as any
plugin registers stages."""

from __future__ import annotations

from typing import Any

from dsv.plugins import Registry, hookimpl
from dsv.stages import (
    analyse,
    edit,
    evaluate,
    export,
    interpolate,
    reconstruction,
    report,
    retrain,
    select,
    synthesize,
    train,
)


@hookimpl
def dsv_register_stages(registry: Registry[Any]) -> None:
    for module in (
        train,
        synthesize,
        select,
        retrain,
        evaluate,
        reconstruction,
        analyse,
        interpolate,
        edit,
        export,
        report,
    ):
        registry.add(module.STAGE.name, module.STAGE)
