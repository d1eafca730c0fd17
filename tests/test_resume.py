"""Kill a synthesis at any moment, resume it, lose nothing; refuse what must be refused.

The crash tests run ``dsv-pipeline`` in subprocesses on digits and kill them with SIGKILL at
reproducible moments (the ``DSV_FAULT`` switch), one of them halfway through a checkpoint write.
"""

from __future__ import annotations

import json
import logging
import signal

import numpy as np
import pytest
import torch
from conftest import SMALL_SYNTHESIS
from conftest import dsv_cli as dsv_pipeline

from dsv import cli
from dsv.store import SCHEMA_VERSION, RunStore, checkpoint

ITERATIONS = 24


@pytest.fixture(scope="module")
def reference(tmp_path_factory, write_pipeline):
    """The uninterrupted run every resumed run must equal (it also fills the weights cache)."""
    root = tmp_path_factory.mktemp("resume")
    pipeline = write_pipeline(
        root / "digits.toml",
        name="digits_resume",
        seed=3,
        stages=("train", "synthesize", "export"),
        models=root / "models",
        synthesis={
            **SMALL_SYNTHESIS,
            "iterations": ITERATIONS,
            "candidates_per_class": 1,
            "record_every": 1,
            "resolutions": [[1, 8], [12, 12]],
        },
        tables={"export": {"png": "", "npz": "candidates.npz"}},
    )
    store = root / "reference.zarr"
    done = dsv_pipeline("run", str(pipeline), "--store", str(store))
    assert done.returncode == 0, done.stderr
    return {"root": root, "pipeline": pipeline, "store": store, "arrays": arrays_of(store)}


def arrays_of(store) -> dict[str, np.ndarray]:
    opened = RunStore.open(store)
    out = {f"history/{k}": v for k, v in opened.history().items()}
    out.update({f"candidates/{k}": v for k, v in opened.candidates().items()})
    return out


@pytest.mark.parametrize(
    "fault, resumes_from",
    [
        ("after-iteration:7", 5),  # between two checkpoints
        ("in-checkpoint:15", 10),  # halfway through writing the checkpoint of iteration 15
        ("after-iteration:22", 20),  # after the resolution change
    ],
)
@pytest.mark.slow
def test_a_killed_run_resumes_to_exactly_the_uninterrupted_result(reference, fault, resumes_from, capsys, caplog):
    store = reference["root"] / f"killed-{fault.replace(':', '-')}.zarr"
    killed = dsv_pipeline("run", str(reference["pipeline"]), "--store", str(store), fault=fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    meta = RunStore.open(store).meta
    assert meta["committed_iteration"] == resumes_from
    assert meta["history_length"] == resumes_from

    assert cli.main(["verify", str(store)]) == 0
    assert capsys.readouterr().out.startswith("ok:")

    with caplog.at_level(logging.INFO, logger="dsv"):
        assert cli.main(["resume", str(store), "--no-progress"]) == 0
    assert f"resuming after iteration {resumes_from} of {ITERATIONS}" in caplog.text

    got, want = arrays_of(store), reference["arrays"]
    assert sorted(got) == sorted(want)
    assert got["history/iteration"].tolist() == list(range(1, ITERATIONS + 1))  # none missing, none twice
    for name in want:
        assert np.array_equal(got[name], want[name]), name  # exactly, not approximately
    with np.load(store / "exports" / "candidates.npz") as exported:
        assert np.array_equal(exported["x"], want["candidates/x"])
        assert np.array_equal(exported["lambda"], want["candidates/lambda"])


@pytest.mark.slow
def test_sigterm_stops_after_the_step_checkpoints_and_says_how_to_resume(reference):
    store = reference["root"] / "terminated.zarr"
    stopped = dsv_pipeline("run", str(reference["pipeline"]), "--store", str(store), fault="term-after-iteration:8")
    assert stopped.returncode == 128 + signal.SIGTERM
    assert "SIGTERM received: stopped after iteration 9" in stopped.stderr
    assert f"dsv-pipeline resume {store}" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert RunStore.open(store).meta["committed_iteration"] == 9
    # `run` on the same config resumes (no --fresh needed) and ends where the reference ended
    again = dsv_pipeline("run", str(reference["pipeline"]), "--store", str(store))
    assert again.returncode == 0, again.stderr
    assert "resuming after iteration 9" in again.stderr
    got = arrays_of(store)
    for name, want in reference["arrays"].items():
        assert np.array_equal(got[name], want), name


def test_run_on_a_finished_store_of_the_same_config_does_not_repeat_the_synthesis(reference, caplog):
    before = arrays_of(reference["store"])
    with caplog.at_level(logging.INFO, logger="dsv"):
        code = cli.main(["run", str(reference["pipeline"]), "--store", str(reference["store"]), "--no-progress"])
    assert code == 0
    assert "already complete" in caplog.text
    after = arrays_of(reference["store"])
    assert all(np.array_equal(after[k], before[k]) for k in before)


def test_a_changed_config_is_refused_with_the_changed_keys(reference, capsys):
    code = cli.main(
        [
            "run",
            str(reference["pipeline"]),
            "--store",
            str(reference["store"]),
            "--no-progress",
            "--set",
            "synthesis.lr_x=0.1",
            "--set",
            "synthesis.priors=[]",
            "--set",
            "synthesis.checkpoint_every=2",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "synthesis.lr_x: (unset) -> 0.1" in err
    assert "synthesis.priors" in err
    assert "checkpoint_every" not in err  # does not change the result: not a reason to refuse
    assert "--fresh" in err and str(reference["store"]) in err
    assert RunStore.open(reference["store"]).meta["committed_iteration"] == ITERATIONS


def test_fresh_refuses_a_path_that_is_not_a_store(reference, tmp_path, capsys):
    target = tmp_path / "notes.zarr"
    target.mkdir()
    (target / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    (target / "mine.txt").write_text("keep")
    code = cli.main(["run", str(reference["pipeline"]), "--store", str(target), "--fresh", "--no-progress"])
    assert code == 2
    assert "not a dsv store" in capsys.readouterr().err
    assert (target / "mine.txt").read_text() == "keep"


@pytest.mark.slow
def test_resume_refuses_other_model_weights(reference, tmp_path, capsys):
    cache = reference["root"] / "models"
    (weights,) = cache.glob("*.pt")
    original = weights.read_bytes()
    store = tmp_path / "copy.zarr"
    assert (
        dsv_pipeline("run", str(reference["pipeline"]), "--store", str(store), fault="after-iteration:3").returncode
        == -signal.SIGKILL
    )
    state = torch.load(weights, weights_only=True)
    first = next(iter(state))
    state[first] = state[first] + 1.0
    torch.save(state, weights)
    try:
        assert cli.main(["resume", str(store), "--no-progress"]) == 2
        assert "weights differ" in capsys.readouterr().err
    finally:
        weights.write_bytes(original)


# ---- verify --------------------------------------------------------------------------------------


def test_verify_names_the_array_with_a_corrupted_chunk(reference, tmp_path, capsys):
    import shutil

    store = tmp_path / "damaged.zarr"
    shutil.copytree(reference["store"], store)
    slot = RunStore.open(store).region(0).record["state_slot"]
    x = store / "groups" / "0" / "state" / slot / "x"
    chunk = next(p for p in sorted(x.rglob("*")) if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[: len(chunk.read_bytes()) // 2])  # truncated
    assert cli.main(["verify", str(store)]) == 1
    out = capsys.readouterr().out
    assert f"groups/0/state/{slot}/x: a chunk cannot be read" in out
    assert "Traceback" not in out


def test_verify_reports_history_shorter_than_committed(reference, tmp_path, capsys):
    import shutil

    store = tmp_path / "short.zarr"
    shutil.copytree(reference["store"], store)
    opened = RunStore.open(store, mode="a")
    opened.region(0).group["history"]["entropy"].resize((5,))
    assert cli.main(["verify", str(store)]) == 1
    assert f"groups/0/history/entropy: has 5 rows, the commit record says {ITERATIONS}" in capsys.readouterr().out


def test_verify_refuses_a_newer_schema_and_a_non_store(reference, tmp_path, capsys):
    import shutil

    store = tmp_path / "future.zarr"
    shutil.copytree(reference["store"], store)
    doc = json.loads((store / "zarr.json").read_text())
    doc["attributes"]["dsv"]["schema_version"] = SCHEMA_VERSION + 1
    (store / "zarr.json").write_text(json.dumps(doc))
    assert cli.main(["verify", str(store)]) == 1
    assert f"store schema {SCHEMA_VERSION + 1}" in capsys.readouterr().out
    assert cli.main(["resume", str(store)]) == 2
    assert "upgrade dsv" in capsys.readouterr().err
    assert cli.main(["verify", str(tmp_path)]) == 1
    assert "not a dsv store" in capsys.readouterr().out


def test_verify_accepts_the_reference(reference, capsys):
    assert cli.main(["verify", str(reference["store"])]) == 0
    assert capsys.readouterr().out.startswith(
        f"ok: {reference['store']}: schema {SCHEMA_VERSION}, iteration {ITERATIONS}"
    )


# ---- the pieces of a checkpoint --------------------------------------------------------------------


def test_rng_states_round_trip_through_arrays():
    import random

    arrays, scalars = checkpoint.capture_rng()
    json.dumps(scalars)  # scalars are plain JSON
    first = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    checkpoint.restore_rng(arrays, scalars)
    second = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    assert torch.equal(first[0], second[0])
    assert np.array_equal(first[1], second[1]) and first[2] == second[2] and first[3] == second[3]


def test_adam_state_round_trips():
    p = torch.randn(4, requires_grad=True)
    opt = torch.optim.Adam([p], lr=0.1)
    for _ in range(3):
        p.grad = torch.randn(4)
        opt.step()
    arrays, scalars = checkpoint.capture_adam(opt, {"p": p})
    assert scalars["adam_steps"] == {"p": 3.0}
    q = p.detach().clone().requires_grad_(True)
    opt2 = torch.optim.Adam([q], lr=0.1)
    checkpoint.restore_adam(opt2, {"p": q}, arrays, scalars)
    grad = torch.randn(4)
    p.grad, q.grad = grad, grad.clone()
    opt.step()
    opt2.step()
    assert torch.equal(p, q)
