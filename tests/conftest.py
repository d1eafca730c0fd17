"""Shared fixtures: real small data (scikit-learn's 8x8 digits) and tiny models.

Everything here is CPU-only and takes milliseconds; the suite must stay fast on 2 cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from dsv.builtin.datasets import digits as load_digits_bundle
from dsv.builtin.losses import Primal, Stationarity
from dsv.plugins import DsvPluginManager, hookimpl
from dsv.synthesis.engine import SynthesisRun

REPO_ROOT = Path(__file__).parent.parent

# one thread: on a 2-core machine shared with other work, 2 OpenMP threads are ~100x slower
# on these tiny tensors (spin-waiting), and the suite must stay fast
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits_bundle():
    """The digits DatasetBundle (1 x 8 x 8 images in [0, 1], 10 classes), loaded once."""
    return load_digits_bundle()


@pytest.fixture
def linear_3x2() -> nn.Linear:
    """nn.Linear(3, 2) with hand-picked weights (float64): W = [[1, 0, -1], [0.5, 1, 0]], b = [0, 0.5]."""
    layer = nn.Linear(3, 2).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.0, -1.0], [0.5, 1.0, 0.0]], dtype=torch.float64))
        layer.bias.copy_(torch.tensor([0.0, 0.5], dtype=torch.float64))
    return layer


@pytest.fixture
def tiny_mlp() -> nn.Sequential:
    """Linear(3, 4) -> Tanh -> Linear(4, 2) in float64, seeded (a nonlinearity for 2nd derivatives)."""
    torch.manual_seed(1234)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def image_classifier(seed: int = 0, channels: int = 1, size: int = 8, classes: int = 10) -> nn.Module:
    """Flatten -> Linear -> Tanh -> Linear for (N, C, size, size) inputs; eval mode, theta frozen."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, 16), nn.Tanh(), nn.Linear(16, classes)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture
def make_run():
    """Build a SynthesisRun directly (no pipeline): primal + L2 stationarity on the head.

    ``make_run(model=None, n=4, **run_kwargs)``; candidates target classes 0..n-1.
    """

    def factory(model: nn.Module | None = None, n: int = 4, classes: int = 10, seed: int = 0, **kwargs):
        model = model if model is not None else image_classifier(seed=seed, classes=classes)
        stationarity = Stationarity(distance="l2", weight=1.0, augmented=True)
        stationarity.attach(model)
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 1, 8, 8, generator=gen).requires_grad_(True)
        lambdas = torch.full((n,), 1.0, requires_grad=True)
        targets = torch.nn.functional.one_hot(torch.arange(n) % classes, classes).float()
        defaults = dict(
            losses=[("primal", Primal()), ("stationarity", stationarity)],
            iterations=10,
            progress=False,
            checkpoint_every=1000,
        )
        defaults.update(kwargs)
        return SynthesisRun(
            model=model, x=x, lambdas=lambdas, targets=targets, alive=torch.ones(n, dtype=torch.bool), **defaults
        )

    return factory


def plugin_module(name: str, **hooks) -> types.ModuleType:
    """A module object holding hook implementations, like a third-party plugin's module."""
    module = types.ModuleType(name)
    for attr, fn in hooks.items():
        setattr(module, attr, hookimpl(fn))
    return module


def register_after_construction(pm: DsvPluginManager, plugin, name: str) -> None:
    """Register a plugin on a built manager (kept for the tests that import it; new tests call
    :meth:`DsvPluginManager.register` directly)."""
    pm.register(plugin, name)


def digits_run_tables(
    name: str,
    cache_dir,
    *,
    store=None,
    stages=("train", "synthesize"),
    model_source: str = "convnet",
    model_options: str = "{ width = 8, depth = 2 }",
    seed: int = 0,
) -> str:
    """The [run], [data], [model] and [train] tables of a tiny digits pipeline: a small model
    trained one epoch (weights cached in ``cache_dir``). Tests append their own [synthesis]."""
    store_line = f'store = "{store.as_posix()}"\n' if store is not None else ""
    options_line = f"options = {model_options}\n" if model_source == "convnet" else ""
    stage_list = ", ".join(f'"{s}"' for s in stages)
    return (
        f'[run]\nname = "{name}"\nseed = {seed}\ndevice = "cpu"\n{store_line}stages = [{stage_list}]\n\n'
        f'[data]\nname = "digits"\n\n'
        f'[model]\nsource = "{model_source}"\n{options_line}\n'
        f'[train]\nretrainer = {{ name = "adam", epochs = 1, batch_size = 64, lr = 1e-2 }}\n'
        f'cache_dir = "{cache_dir.as_posix()}"\n\n'
    )


def small_synthesis_tables(iterations: int, extra: str = "") -> str:
    """The [synthesis] and [export] tables of the crash and multi-process tests: 6 classes,
    checkpoints every 5 iterations, an NPZ export; ``extra`` adds [synthesis] keys."""
    return (
        textwrap.dedent(f"""\
        [synthesis]
        iterations = {iterations}
        classes = [0, 1, 2, 3, 4, 5]
        lambda_warmup = 3
        checkpoint_every = 5
        """)
        + extra
        + textwrap.dedent("""\
        losses = [
          { name = "primal", weight = 1.0 },
          { name = "stationarity", weight = 1.0, distance = "l1", params = "head" },
        ]
        priors = [{ name = "tv", weight = 1e-2 }]
        augmentations = [{ name = "flip", p = 0.5 }, { name = "noise", strength = 0.05 }]

        [export]
        png = ""
        npz = "candidates.npz"
        """)
    )


def dsv_cli(*args, fault: str | None = None) -> subprocess.CompletedProcess:
    """``dsv-pipeline ARGS`` in a subprocess (one thread, no inherited fault switch or launcher
    rank); ``fault`` sets the DSV_FAULT switch of :mod:`dsv.store.checkpoint`."""
    from dsv.store import checkpoint

    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop(checkpoint.FAULT_ENV, None)
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):  # never inherit a launcher's rank
        env.pop(name, None)
    if fault:
        env[checkpoint.FAULT_ENV] = fault
    quiet = ["--no-progress"] if args[0] in ("run", "resume") else []
    return subprocess.run(
        [sys.executable, "-m", "dsv.cli", *args, *quiet], env=env, capture_output=True, text=True, timeout=300
    )


def reference_run(root: Path, text: str, arrays_of) -> dict:
    """Write pipeline ``text`` into ``root``, run it uninterrupted into ``root/reference.zarr``
    (which also fills the weights cache) and keep ``arrays_of(store)``: what resumed or
    multi-process runs must equal."""
    pipeline = root / "digits.toml"
    pipeline.write_text(text)
    store = root / "reference.zarr"
    done = dsv_cli("run", str(pipeline), "--store", str(store))
    assert done.returncode == 0, done.stderr
    return {"root": root, "pipeline": pipeline, "store": store, "arrays": arrays_of(store)}
