"""Several processes (and GPUs) on one run, through torch.distributed via ``ignite.distributed``.

No scheduler: ``dsv-pipeline run FILE --nproc N`` spawns N processes with
:func:`ignite.distributed.spawn`, and ``torchrun --nproc-per-node N -m dsv.cli run FILE``
starts them itself (this module then finds its rank in the environment torchrun sets). Every
rank runs the same pipeline; :mod:`dsv.synthesis.groups` decides which candidate groups each one
optimizes, and the run store gives each group its own region (one writer per region).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import ignite.distributed as idist
import torch

from dsv.errors import ConfigError

BACKENDS = ("gloo", "nccl")
TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
# how long a rank waits for the others at a barrier: rank 0 may train the model first, and ranks
# owning more groups finish later (torch's default of 30 minutes is shorter than one ImageNet group)
RANK_WAIT = timedelta(days=7)


def default_backend() -> str:
    """nccl where there are GPUs, gloo on CPU."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def started_by_torchrun() -> bool:
    """True in a process torchrun (or another ``env://`` launcher) started as one of several ranks."""
    return all(v in os.environ for v in TORCHRUN_VARIABLES) and int(os.environ["WORLD_SIZE"]) > 1


def _free_port() -> int:
    """A TCP port nothing listens on now, for the rendezvous of the ranks this process spawns
    (a fixed port would collide with another run on the same machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(fn: Callable[..., Any], *args: Any, nproc: int = 1, backend: str | None = None) -> None:
    """Call ``fn(local_rank, *args)`` on every rank.

    Under torchrun: in this process, after joining the process group torchrun describes. With
    ``nproc`` > 1: in ``nproc`` processes spawned by :func:`ignite.distributed.spawn`; a rank that
    fails makes the others stop, and this raises :class:`torch.multiprocessing.ProcessExitedException`
    (exit code of the failed rank) or ``ProcessRaisedException``. Otherwise: ``fn(0, *args)`` here."""
    if nproc < 1:
        raise ConfigError(f"--nproc: must be at least 1, got {nproc}")
    backend = backend or default_backend()
    if backend not in BACKENDS:
        raise ConfigError(f"--backend: unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
    if backend == "nccl" and not torch.cuda.is_available():
        raise ConfigError("--backend nccl: needs CUDA GPUs; use --backend gloo on CPU")
    if started_by_torchrun():
        if nproc > 1:
            raise ConfigError("--nproc: not with torchrun, which starts the processes itself")
        idist.initialize(backend, timeout=RANK_WAIT)
        try:
            fn(idist.get_local_rank(), *args)
        finally:
            idist.finalize()
    elif nproc > 1:
        idist.spawn(backend, fn, args, nproc_per_node=nproc, master_port=_free_port(), timeout=RANK_WAIT)
    else:
        fn(0, *args)


def rank() -> int:
    return idist.get_rank()


def world_size() -> int:
    return idist.get_world_size()


def is_main_rank() -> bool:
    """Rank 0: the one that writes the store's shared metadata and runs the stages after synthesis."""
    return idist.get_rank() == 0


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if idist.get_world_size() > 1:
        idist.barrier()


def rank_device(device: torch.device) -> torch.device:
    """The device of this rank: ``cuda:<local rank>`` when the run is on CUDA with several
    ranks on a machine (each rank its own GPU), else ``device`` unchanged."""
    if device.type != "cuda" or idist.get_world_size() == 1:
        return device
    local = idist.get_local_rank()
    if local >= torch.cuda.device_count():
        raise ConfigError(
            f"rank {idist.get_rank()}: local rank {local} has no GPU "
            f"({torch.cuda.device_count()} visible); start at most that many processes per machine"
        )
    torch.cuda.set_device(local)
    return torch.device("cuda", local)
