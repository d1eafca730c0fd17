"""dsv: Deep Support Vectors of a trained classifier (DeepKKT, Lee et al., NeurIPS 2024).

The Python API (``dsv.synthesize``, ``dsv.open_store``, ``dsv.export_grid``, ``dsv.measure_premise``,
``dsv.evaluate_reconstruction``, ``dsv.Pipeline``) is imported on first use, so ``import dsv`` and
the CLI's error types stay cheap to import.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dsv")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+source"

from dsv.errors import ConfigError, DsvError, NonFiniteLossError, StoreError  # noqa: E402

_LAZY = {
    "synthesize": "dsv.api",
    "open_store": "dsv.api",
    "export_grid": "dsv.api",
    "SynthesisResult": "dsv.api",
    "measure_premise": "dsv.api",
    "PremiseResult": "dsv.api",
    "evaluate_reconstruction": "dsv.api",
    "ReconstructionScore": "dsv.api",
    "Pipeline": "dsv.pipeline",
    "PipelineResult": "dsv.pipeline",
}

__all__ = ["ConfigError", "DsvError", "NonFiniteLossError", "StoreError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dsv' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
