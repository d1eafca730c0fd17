"""What a resume needs beyond the candidates: optimizer moments, RNG states, stop signals.

A checkpoint is a dict of numpy arrays (written as Zarr arrays of the store's state slot) plus a
dict of JSON scalars (written into the commit record). Nothing is pickled: every RNG state is
taken apart into arrays and numbers, and put back together on restore.
"""

from __future__ import annotations

import os
import random
import signal
import threading
from typing import Any

import attrs
import numpy as np
import torch

# ---- RNG states ----------------------------------------------------------------------------------


def snapshot_rng() -> tuple:
    """Every RNG the loop may draw from, as the generators give their states (cheap: the copy of
    :func:`capture_rng` without its conversion to a checkpoint's arrays, see :func:`rng_arrays`)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda, np.random.get_state(), random.getstate()


def rng_arrays(snapshot: tuple) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A :func:`snapshot_rng` as a checkpoint holds it: arrays and JSON scalars."""
    cpu, cuda, numpy_state, python_state = snapshot
    arrays = {"rng_torch": cpu.numpy().copy()}
    scalars: dict[str, Any] = {}
    if cuda is not None:
        arrays["rng_cuda"] = np.stack([s.numpy() for s in cuda])
    kind, keys, pos, has_gauss, cached = numpy_state
    arrays["rng_numpy"] = np.asarray(keys, dtype=np.uint32)
    scalars["numpy_rng"] = {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}
    version, internal, gauss_next = python_state
    arrays["rng_python"] = np.asarray(internal, dtype=np.uint32)
    scalars["python_rng"] = {"version": int(version), "gauss_next": gauss_next}
    return arrays, scalars


def capture_rng() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every RNG the loop may draw from: torch (CPU and each CUDA device), numpy, python."""
    return rng_arrays(snapshot_rng())


def restore_rng(arrays: dict[str, np.ndarray], scalars: dict[str, Any]) -> None:
    torch.set_rng_state(torch.from_numpy(np.ascontiguousarray(arrays["rng_torch"], dtype=np.uint8)))
    if "rng_cuda" in arrays and torch.cuda.is_available():
        states = [torch.from_numpy(np.ascontiguousarray(s, dtype=np.uint8)) for s in arrays["rng_cuda"]]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    n = scalars["numpy_rng"]
    np.random.set_state((n["kind"], arrays["rng_numpy"].astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = scalars["python_rng"]
    random.setstate((p["version"], tuple(int(v) for v in arrays["rng_python"]), p["gauss_next"]))


# ---- Adam moments ------------------------------------------------------------------------------


def capture_adam(optimizer: torch.optim.Optimizer, params: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """Adam's moments of each named parameter as arrays, its step counts as scalars."""
    arrays, steps = {}, {}
    for name, p in params.items():
        state = optimizer.state.get(p)
        if not state:
            continue
        arrays[f"adam_{name}_exp_avg"] = state["exp_avg"].detach().cpu().numpy().copy()
        arrays[f"adam_{name}_exp_avg_sq"] = state["exp_avg_sq"].detach().cpu().numpy().copy()
        steps[name] = float(state["step"])
    return arrays, {"adam_steps": steps}


def restore_adam(
    optimizer: torch.optim.Optimizer,
    params: dict[str, torch.Tensor],
    arrays: dict[str, np.ndarray],
    scalars: dict[str, Any],
) -> None:
    for name, step in scalars.get("adam_steps", {}).items():
        p = params[name]
        optimizer.state[p] = {
            "step": torch.tensor(step, dtype=torch.float32),
            "exp_avg": torch.from_numpy(arrays[f"adam_{name}_exp_avg"]).to(p.device, p.dtype),
            "exp_avg_sq": torch.from_numpy(arrays[f"adam_{name}_exp_avg_sq"]).to(p.device, p.dtype),
        }


# ---- stop on SIGINT / SIGTERM ------------------------------------------------------------------


@attrs.define
class StopSignals:
    """While active, SIGINT and SIGTERM ask the loop to stop after the current step (the engine
    then writes a checkpoint). A second signal of the same kind acts as it normally would."""

    received: int | None = None
    _previous: dict = attrs.field(factory=dict)

    def _handle(self, signum, frame):
        self.received = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""


# ---- fault injection (for the crash tests) -----------------------------------------------------

FAULT_ENV = "DSV_FAULT"


FAULTS = {
    "after-iteration": signal.SIGKILL,
    "in-checkpoint": signal.SIGKILL,
    "in-creation": signal.SIGKILL,
    "term-after-iteration": signal.SIGTERM,
}


def faults_enabled() -> bool:
    return bool(os.environ.get(FAULT_ENV))


def fault_point(where: str, iteration: int) -> None:
    """Crash at a reproducible moment, for the crash tests; does nothing unless ``DSV_FAULT`` is
    set. ``after-iteration:K`` sends SIGKILL once iteration K completed (after its checkpoint, if
    any), ``in-checkpoint:K`` sends SIGKILL halfway through writing the checkpoint of iteration K,
    ``term-after-iteration:K`` sends SIGTERM once iteration K completed, ``in-creation:0``
    sends SIGKILL while a new store is being built, before it is renamed into place."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    kind, _, at = spec.partition(":")
    if at.strip() != str(iteration):
        return
    if kind == where or (kind == "term-after-iteration" and where == "after-iteration"):
        os.kill(os.getpid(), FAULTS[kind])
