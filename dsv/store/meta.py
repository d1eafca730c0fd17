"""What a new run store records about its run and model (one implementation for the pipeline, its
sub-runs and the Python API)."""

from __future__ import annotations

import datetime
import hashlib
from typing import Any

import torch

import dsv
from dsv.plugins.contracts import InputSpec


def model_fingerprint(module: torch.nn.Module) -> str:
    """Hash of a model's weights: a resume refuses a store whose run started from others."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def run_meta(
    *,
    name: str,
    config: dict[str, Any],
    config_hash: str,
    source: str,
    spec: InputSpec,
    model: str,
    module: torch.nn.Module,
    **extra: Any,
) -> dict[str, Any]:
    """The metadata of a new store: the run's name, dsv's version, the config and its hash, where
    the config came from, the model's input spec, name and weights fingerprint, and ``extra``
    (e.g. the pipeline file's text, the base model's test accuracy)."""
    return {
        "name": name,
        "dsv_version": dsv.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        "config_hash": config_hash,
        "config_source": source,
        "classes": list(spec.classes),
        "mean": list(spec.mean),
        "std": list(spec.std),
        "model": model,
        "model_fingerprint": model_fingerprint(module),
        # the input domain in model input units (per channel), or None where it is not known
        "input_low": list(spec.low) if spec.low is not None else None,
        "input_high": list(spec.high) if spec.high is not None else None,
        **extra,
    }
