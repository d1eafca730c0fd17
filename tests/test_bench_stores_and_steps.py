"""dsv.bench.store_layout and dsv.bench.kkt_step: a run store of a few 3x224x224 candidates written,
measured and verified (in dsv's chunks and in zarr's shards), and one stationarity step timed
against a plain forward+backward."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT

import dsv.store.region
from dsv.bench import kkt_step, store_layout
from dsv.bench.store_layout import LayoutSettings, measure, on_disk, raw_bytes, sharded_layout


def test_raw_bytes_grow_with_the_candidates_and_the_history():
    one = raw_bytes(1, checkpoints=1, every=1)
    assert one == 2 * (4 * (3 * math.prod(store_layout.ROW) + 3 + 1000) + 9) + 4
    assert raw_bytes(10, 1, 1) == 10 * one and raw_bytes(1, 2, 5) == one + 4 * 9


def test_on_disk_counts_files_and_bytes(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 100)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"y" * 5000)
    files, apparent, allocated = on_disk(tmp_path)
    assert (files, apparent) == (2, 5100) and allocated >= 5100


@pytest.mark.parametrize("groups", [1, 2])
def test_a_store_is_written_measured_verified_and_removed(tmp_path, groups, capsys):
    settings = LayoutSettings(checkpoints=2, every=3, group_size=2)
    if groups > 1:  # too big for the room given: two regions one after another
        settings.max_gib = raw_bytes(3, 2, 3) / 2**30 / 2
    row = measure(tmp_path, 3, settings)
    assert row["groups"] == groups and row["group_sizes"] == ([3] if groups == 1 else [1, 2])
    assert row["all_on_disk_at_once"] is (groups == 1) and row["layout"] == "chunks"
    assert row["verified"] == ("verify ok" if groups == 1 else "each region verified ok before deletion")
    assert row["files"] > 10 and row["allocated_bytes"] >= row["apparent_bytes"] > 0
    assert row["checkpoint_s_median"] > 0 and row["checkpoint_s_max"] >= row["checkpoint_s_median"]
    assert list(tmp_path.iterdir()) == []  # deleted after
    store_layout.table([row], settings)
    shown = capsys.readouterr().out
    assert "s / checkpoint" in shown and ("groups in turn" in shown) is (groups > 1)


def test_the_sharded_layout_is_swapped_in_and_back(tmp_path):
    settings = LayoutSettings(checkpoints=1, every=2, layout="shards", shard_mib=1)
    original = dsv.store.region.create_array
    with sharded_layout(2**20, 2**18):
        assert dsv.store.region.create_array is not original
        row = measure(tmp_path, 2, settings)
    assert dsv.store.region.create_array is original
    assert row["verified"].startswith("not checked") and row["files"] > 0


def test_a_step_costs_more_than_a_forward_backward_and_the_modes_agree(tmp_path):
    spec = dict(
        model="convnet", resolution=28, batch=2, params="head", micro_batch=0, threads=1, repeats=1, budget_s=0.0
    )
    spec["reference"] = str(tmp_path / "exact.pt")
    exact = kkt_step.measure({**spec, "mode": "exact"})
    jvp = kkt_step.measure({**spec, "mode": "jvp"})
    assert exact["cosine_x"] == pytest.approx(1.0) and jvp["cosine_x"] > 0.99 and jvp["cosine_lambda"] > 0.99
    assert exact["ratio"] > 0 and exact["stationarity_params"] == jvp["stationarity_params"] > 0
    row = kkt_step.table_row({**spec, "mode": "jvp"}, jvp)
    assert row["grad_cosine_vs_exact"] == min(jvp["cosine_x"], jvp["cosine_lambda"])
    assert row["peak_mem_over_fwd_bwd"] == jvp["step_peak_mib"] / max(jvp["fwd_bwd_peak_mib"], 1e-3)
    assert len(kkt_step.format_row(row)) == len(kkt_step.HEADER) and "auto picks" in kkt_step.format_auto(row)


def test_the_specs_put_the_exact_mode_first_and_skip_micro_batches_as_large_as_the_batch(tmp_path):
    configs = [("convnet", 28, 2, "all", True), ("convnet", 28, 1, "head", True)]
    groups = kkt_step.specs(configs, ["jvp", "exact"], [0, 1, 2], threads=1, repeats=1, quick=True, tmp=str(tmp_path))
    assert [(s["mode"], s["micro_batch"]) for s in groups[0]] == [("exact", 0), ("jvp", 0), ("jvp", 1)]
    assert [(s["mode"], s["micro_batch"]) for s in groups[1]] == [("exact", 0), ("jvp", 0)]
    assert groups[0][0]["reference"] != groups[1][0]["reference"] and groups[0][0]["budget_s"] == 1.0


def test_a_measurement_runs_in_a_fresh_process(tmp_path):
    spec = dict(model="convnet", resolution=28, batch=1, params="head", mode="exact", micro_batch=0, threads=1)
    spec.update(repeats=1, budget_s=0.0, reference=str(tmp_path / "exact.pt"))
    code = (
        "import json, sys; from dsv.bench.kkt_step import measure; print(json.dumps(measure(json.loads(sys.argv[1]))))"
    )
    result = kkt_step.run_one(spec, [sys.executable, "-c", code])
    assert result["cosine_x"] == pytest.approx(1.0) and (tmp_path / "exact.pt").exists()
    with pytest.raises(RuntimeError, match="failed"):
        kkt_step.run_one(spec, [sys.executable, "-c", "raise SystemExit(3)"])
    assert json.loads(json.dumps(result)) == result and np.isfinite(result["ratio"])


def run_script(script: str, args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / script), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


@pytest.mark.slow
def test_the_store_layout_benchmark_writes_its_rows(tmp_path):
    args = ["--candidates", "2", "--checkpoints", "1", "--every", "2", "--json", "o.json"]
    done = run_script("store_layout.py", args, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = json.loads((tmp_path / "o.json").read_text())
    assert set(row) == STORE_ROW_KEYS and row["verified"] == "verify ok" and "one store" in done.stdout


@pytest.mark.slow
def test_the_kkt_step_benchmark_measures_each_mode_in_its_own_process(tmp_path):
    args = ["--only", "convnet:28:2:head", "--modes", "exact", "jvp", "--threads", "1", "--micro-batch", "0"]
    done = run_script("kkt_step.py", [*args, "--repeats", "1", "--json", "o.json"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "o.json").read_text())["rows"]
    assert [r["mode"] for r in rows] == ["exact", "jvp"] and set(rows[1]) == KKT_ROW_KEYS
    assert rows[1]["grad_cosine_vs_exact"] > 0.99 and "auto picks" in done.stdout


STORE_ROW_KEYS = {
    "candidates", "layout", "groups", "group_sizes", "all_on_disk_at_once", "peak_allocated_bytes", "checkpoints",
    "history_rows_per_checkpoint", "files", "apparent_bytes", "allocated_bytes", "raw_array_bytes_estimate",
    "bytes_per_checkpoint", "first_commit_s", "checkpoint_s_median", "checkpoint_s_max", "checkpoint_s_sum",
    "verify_s", "verified",
}  # fmt: skip
KKT_ROW_KEYS = {
    "model", "resolution", "batch", "params", "mode", "micro_batch", "step_over_fwd_bwd", "peak_mem_over_fwd_bwd",
    "grad_cosine_vs_exact", "fwd_bwd_s", "step_s", "ratio", "median_pair_ratio", "fwd_bwd_peak_mib", "step_peak_mib",
    "stationarity_params", "repeats", "work_behind", "auto_picks", "cosine_x", "cosine_lambda",
}  # fmt: skip
