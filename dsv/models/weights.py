"""Weights files: loaded as inert tensors (no pickled code runs), then fitted to a module."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dsv.errors import WeightsError


def load_state_dict(path: str | Path) -> dict:
    """Load a weights file as inert tensors (no pickled code runs): a ``.safetensors`` file, or a
    torch state dict read with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{path}: not a loadable safetensors file ({exc})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:200]
        raise WeightsError(f"{path}: not a loadable weights file ({type(exc).__name__}: {reason})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def apply_weights(module: nn.Module, path: str) -> None:
    try:
        module.load_state_dict(load_state_dict(path))
    except RuntimeError as exc:
        raise WeightsError(f"{path}: weights do not fit the model: {str(exc).splitlines()[0]}") from None
