"""dsv.bench.kkt_loop: the KKT loop of dsv.synthesize against a plain PyTorch loop of the same loss
on a small MLP; and the engine's cheap RNG snapshot the benchmark led to."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT

from dsv.bench import kkt_loop
from dsv.store import checkpoint


def test_the_model_and_the_problem_are_seeded():
    a, b = kkt_loop.mlp(), kkt_loop.mlp()
    assert [p.shape for p in a.parameters()] == [(1000, 784), (2, 1000)]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    x0, labels = kkt_loop.problem(6)
    assert x0.shape == (6, 1, 28, 28) and labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert torch.equal(x0, kkt_loop.problem(6)[0])


def test_the_plain_loop_stamps_each_iteration_and_leaves_the_model_as_it_was():
    model = kkt_loop.mlp()
    model[1].weight.requires_grad_(False)
    x0, labels = kkt_loop.problem(4)
    stamps: list[float] = []
    losses = kkt_loop.plain_loop(model, x0, labels, 3, stamps)
    assert len(losses) == 3 and len(stamps) == 4 and np.all(np.diff(stamps) > 0)
    assert all(np.isfinite(losses))
    assert not model[1].weight.requires_grad and model[3].weight.requires_grad and model[1].weight.grad is None


def test_both_sides_compute_the_same_loss():
    check = kkt_loop.loss_check(2)
    assert len(check["dsv"]) == len(check["plain"]) == 2
    assert check["max_rel_diff"] < 1e-5


def test_the_summary_takes_medians_of_iterations_against_the_plain_loops():
    steps = {"plain": [1.0, 2.0, 3.0], "loop": [2.0, 4.0, 6.0]}
    calls = {"plain": [2.0, 4.0], "loop": [3.0, 6.0]}
    out = kkt_loop.summarise(steps, calls, {"iterations": 3})
    assert out["loop"]["dsv_ms"] == 4.0 and out["loop"]["plain_ms"] == 2.0 and out["loop"]["ratio"] == 2.0
    assert out["loop"]["ratio_p10"] == pytest.approx(2.0) and out["loop"]["call_ratio"] == pytest.approx(1.5)
    assert out["loop"]["call_ratio_per_round"] == [1.5, 1.5] and out["plain"]["step_ms"] == 2.0
    shown = kkt_loop.table(out)
    assert "in memory" in shown and "store" not in shown.splitlines()[2:]


def test_a_measurement_times_the_plain_loop_and_the_variants_asked_for():
    out = kkt_loop.measure(iterations=2, repeats=1, threads=torch.get_num_threads(), only=["loop"])
    assert set(out) == {"settings", "plain", "loop"}
    assert set(out["loop"]) >= {"dsv_ms", "plain_ms", "ratio", "call_ratio"} and out["loop"]["dsv_ms"] > 0


def test_a_failed_steps_rng_is_the_one_at_its_start():
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    want = checkpoint.capture_rng()
    snapshot = checkpoint.snapshot_rng()
    torch.rand(5), np.random.rand(5), random.random()  # the step draws, then fails
    now = checkpoint.capture_rng()
    got = checkpoint.rng_arrays(snapshot)
    assert set(got[0]) == set(want[0]) and got[1] == want[1]
    assert all(np.array_equal(got[0][k], want[0][k]) for k in want[0])
    after = checkpoint.capture_rng()  # the conversion left the generators where they were
    assert after[1] == now[1] and all(np.array_equal(after[0][k], now[0][k]) for k in now[0])


@pytest.mark.slow
def test_the_kkt_loop_benchmark_writes_its_json(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "kkt_loop.py"), "--quick", "--json", "o.json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads((tmp_path / "o.json").read_text())
    assert {"settings", "plain", "loop", "store", "loss_check"} <= set(out)
    assert {"dsv_ms", "plain_ms", "ratio"} <= set(out["loop"]) and out["loss_check"]["max_rel_diff"] < 1e-4
    assert "dsv.synthesize, in memory" in done.stdout
