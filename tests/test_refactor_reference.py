"""Behaviour kept through refactors: a digits pipeline (train -> synthesize -> select -> retrain ->
evaluate -> analyse -> export) gives, bit for bit, the arrays and results recorded in
``tests/data/refactor_reference.*`` before the layout refactor of issue 15.

The recording used one torch thread on x86_64 with the torch pinned in tox.ini; other builds or
thread counts change float summation order, so the comparison is skipped where they differ. The
CPU's kernels change it too: a machine whose CPU (vendor and torch's kernel level) has its own
recording, ``refactor_reference-<vendor>-<level>.*``, made from code that had passed the original
on its machine, is compared with that one. The ``GenuineIntel-AVX512`` recording was made by the
code of the original recording itself (commit d3f28bd, its own copy of the pipeline file) on an
Intel Xeon whose AVX-512 kernels sum differently from the original's machine; today's code equals
it bit for bit there."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import dsv
from dsv import cli

DATA = Path(__file__).parent / "data"
RECORDED_WITH = "2.14.1"


def cpu_fingerprint() -> str:
    """The CPU's vendor and the kernel level torch picks for it, e.g. ``AuthenticAMD-AVX2``."""
    vendor = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("vendor_id"):
                vendor = line.split(":", 1)[1].strip()
                break
    return f"{vendor}-{torch.backends.cpu.get_cpu_capability()}"


def reference(suffix: str) -> Path:
    """This CPU's own recording where there is one, else the original."""
    own = DATA / f"refactor_reference-{cpu_fingerprint()}{suffix}"
    return own if own.exists() else DATA / f"refactor_reference{suffix}"


@pytest.fixture(scope="module")
def rerun(tmp_path_factory):
    if torch.__version__.split("+")[0] != RECORDED_WITH or torch.get_num_threads() != 1:
        pytest.skip(
            f"recorded with torch {RECORDED_WITH} on one thread; this is torch {torch.__version__} "
            f"on {torch.get_num_threads()} threads"
        )
    root = tmp_path_factory.mktemp("reference")
    store = root / "ref.zarr"
    code = cli.main(
        [
            "run",
            str(DATA / "refactor_reference.toml"),
            "--store",
            str(store),
            "--no-progress",
            "--set",
            f'train.cache_dir="{(root / "models").as_posix()}"',
        ]
    )
    assert code == 0
    return store


def arrays_of(store: Path) -> dict[str, np.ndarray]:
    result = dsv.open_store(store)
    arrays = {f"candidates/{k}": v for k, v in result.candidates().items()}
    arrays.update({f"history/{k}": v for k, v in result.history.items()})
    for path in sorted((store / "exports").glob("*.npz")):
        if path.name == "candidates.npz":
            continue
        with np.load(path, allow_pickle=False) as z:
            prefix = "coreset" if path.stem == "coreset" else path.stem
            arrays.update({f"{prefix}/{k}": z[k] for k in z.files})
    return arrays


def test_arrays_equal_the_recorded_ones_bit_for_bit(rerun):
    with np.load(reference(".npz"), allow_pickle=False) as z:
        recorded = {k: z[k] for k in z.files}
    now = arrays_of(rerun)
    assert sorted(now) == sorted(recorded)
    different = [k for k in recorded if not np.array_equal(now[k], recorded[k])]
    assert different == []


def test_stage_results_equal_the_recorded_ones(rerun):
    recorded = json.loads(reference(".json").read_text())
    results = dsv.open_store(rerun).summary
    for key, value in recorded.items():
        assert results[key] == value, key
