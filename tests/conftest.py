"""Shared fixtures: real small data (scikit-learn's 8x8 digits) and tiny models.

Everything here is CPU-only and takes milliseconds; the suite must stay fast on 2 cores.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath

import pytest
import torch
from torch import nn

from dsv.builtin.datasets import digits as load_digits_bundle
from dsv.builtin.losses import Primal, Stationarity
from dsv.builtin.models import ConvNet
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
def convnet_weights(tmp_path) -> Path:
    """Saved weights of an untrained digits ConvNet (width 4, depth 2): ``tmp_path / "convnet.pt"``."""
    weights = tmp_path / "convnet.pt"
    torch.save(ConvNet(1, 8, 10, width=4, depth=2).state_dict(), weights)
    return weights


@pytest.fixture
def make_run():
    """Build a SynthesisRun directly (no pipeline): primal + L2 stationarity on the head.

    ``make_run(model=None, n=4, **run_kwargs)``; candidates target classes 0..n-1.
    """

    def factory(model: nn.Module | None = None, n: int = 4, classes: int = 10, seed: int = 0, **kwargs):
        model = model if model is not None else image_classifier(seed=seed, classes=classes)
        stationarity = Stationarity(distance="l2", weight=1.0, augmented=True, params="head")
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


# ---- pipeline files ------------------------------------------------------------------------------

CONVNET_OPTIONS = types.MappingProxyType({"width": 8, "depth": 2})

# the [synthesis] table of the crash and multi-process tests: 6 classes, checkpoints every 5
# iterations (tests add "iterations" and their own keys)
SMALL_SYNTHESIS = types.MappingProxyType(
    {
        "classes": [0, 1, 2, 3, 4, 5],
        "lambda_warmup": 3,
        "checkpoint_every": 5,
        "losses": [
            {"name": "primal", "weight": 1.0},
            {"name": "stationarity", "weight": 1.0, "distance": "l1", "params": "head"},
        ],
        "priors": [{"name": "tv", "weight": 1e-2}],
        "augmentations": [{"name": "flip", "p": 0.5}, {"name": "noise", "strength": 0.05}],
    }
)

# a synthesize-only digits pipeline with no [run] name or seed; tests add [model] weights_path
# (convnet_weights) and their [synthesis]
SYNTHESIZE_ONLY = types.MappingProxyType(
    {"name": None, "seed": None, "stages": ("synthesize",), "model_options": {"width": 4, "depth": 2}}
)


def toml_key(key: str) -> str:
    """A bare key where TOML allows one, else a quoted one."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else toml_string(key)


def toml_string(text: str) -> str:
    """A basic TOML string: quotes and backslashes escaped, control characters as \\uXXXX."""

    def escape(ch: str) -> str:
        if ch in '"\\':
            return "\\" + ch
        return f"\\u{ord(ch):04x}" if ord(ch) < 0x20 or ord(ch) == 0x7F else ch

    return '"' + "".join(escape(ch) for ch in text) + '"'


def toml_value(value) -> str:
    """One TOML value: bools, numbers, strings (paths as POSIX strings), lists and inline tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # Python's repr of a float (1e-05, inf, nan) is TOML as well
    if isinstance(value, PurePath):
        return toml_string(value.as_posix())
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, Mapping):
        items = ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items())
        return f"{{ {items} }}" if items else "{}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML value for {value!r}")


def toml_document(tables: Mapping[str, Mapping]) -> str:
    """``{table: {key: value}}`` as TOML text: one ``[table]`` after the other."""
    return "\n".join(
        f"[{toml_key(name)}]\n" + "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in table.items())
        for name, table in tables.items()
    )


@pytest.fixture(scope="session")
def write_pipeline():
    """Write a pipeline file; returns ``write_pipeline(path, *, ...) -> path``.

    By default a digits pipeline on the CPU: ``[run]`` (``name``, ``seed``, ``store`` and
    ``stages``), ``[data]`` digits, ``[model]`` (``model_source``; ``model_options`` go to its
    ``options``), ``[train]`` when ``models`` is given (one Adam epoch, the weights cached in the
    folder ``models``) and ``[synthesis]`` when ``synthesis`` is given. A key given as None is
    left out. ``tables`` adds tables, ``{name: {key: value}}``: the keys of a table written
    above are added to it; or ``tables`` is TOML text appended as it is. Values are Python
    values (paths are written as POSIX strings); the file loads back with tomllib to the same dict.
    """

    def write(
        path: Path,
        *,
        name: str | None = None,
        stages: Sequence[str] = ("train", "synthesize"),
        store: Path | None = None,
        models: Path | None = None,
        model_source: str = "convnet",
        model_options: Mapping | None = CONVNET_OPTIONS,
        seed: int | None = 0,
        synthesis: Mapping | None = None,
        tables: Mapping[str, Mapping] | str | None = None,
    ) -> Path:
        run = {"name": name, "seed": seed, "device": "cpu", "store": store, "stages": list(stages)}
        doc: dict[str, dict] = {
            "run": run,
            "data": {"name": "digits"},
            "model": {"source": model_source, "options": model_options},
        }
        if models is not None:
            retrainer = {"name": "adam", "epochs": 1, "batch_size": 64, "lr": 1e-2}
            doc["train"] = {"retrainer": retrainer, "cache_dir": models}
        if synthesis is not None:
            doc["synthesis"] = dict(synthesis)
        raw = ""
        if isinstance(tables, str):
            raw = tables
        else:
            for table, keys in (tables or {}).items():
                doc.setdefault(table, {}).update(keys)
        doc = {table: {k: v for k, v in keys.items() if v is not None} for table, keys in doc.items()}
        path.write_text(toml_document(doc) + raw)
        return path

    return write


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
