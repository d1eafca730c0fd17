"""Synthesis across processes: candidate groups, 2 ranks on CPU (gloo), kill and resume with
another process count, and the schema-2 stores written before groups existed.

The multi-process runs go through ``dsv-pipeline run --nproc 2`` in subprocesses (spawning
ranks is slow: a tiny model, 3 groups of 2 candidates, 12 iterations)."""

from __future__ import annotations

import json
import shutil
import signal

import numpy as np
import pytest
import torch
from conftest import SMALL_SYNTHESIS
from conftest import dsv_cli as dsv_pipeline

from dsv import cli
from dsv.errors import ConfigError
from dsv.store import SCHEMA_VERSION, RunStore, combine_histories
from dsv.store.run_store import REGION_RECORD
from dsv.store.verify import verify
from dsv.synthesis.groups import combine_summaries, group_seed, group_slices, owned_groups

pytestmark = pytest.mark.slow  # several processes and killed runs, in subprocesses (tox -e slow)

ITERATIONS = 12
GROUPS = 3


def arrays_of(store) -> dict[str, np.ndarray]:
    """Every committed array of every group, and the exported NPZ."""
    opened = RunStore.open(store)
    out = {}
    for g, region in enumerate(opened.regions()):
        out.update({f"{g}/history/{k}": v for k, v in region.history().items()})
        out.update({f"{g}/candidates/{k}": v for k, v in region.candidates().items()})
    with np.load(store / "exports" / "candidates.npz") as exported:
        out.update({f"npz/{k}": exported[k] for k in exported.files})
    return out


def assert_same_arrays(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        assert np.array_equal(got[name], want[name]), name  # exactly, not approximately


@pytest.fixture(scope="module")
def reference(tmp_path_factory, write_pipeline):
    """The uninterrupted 1-process run of the grouped pipeline (it also fills the weights cache)."""
    root = tmp_path_factory.mktemp("groups")
    pipeline = write_pipeline(
        root / "digits.toml",
        name="digits_groups",
        seed=5,
        stages=("train", "synthesize", "export"),
        models=root / "models",
        synthesis={**SMALL_SYNTHESIS, "iterations": ITERATIONS, "groups": GROUPS},
        tables={"export": {"png": "", "npz": "candidates.npz"}},
    )
    store = root / "reference.zarr"
    done = dsv_pipeline("run", str(pipeline), "--store", str(store))
    assert done.returncode == 0, done.stderr
    return {"root": root, "pipeline": pipeline, "store": store, "arrays": arrays_of(store)}


def test_two_gloo_processes_write_what_one_process_writes(reference, capsys):
    store = reference["root"] / "two.zarr"
    done = dsv_pipeline("run", str(reference["pipeline"]), "--store", str(store), "--nproc", "2", "--backend", "gloo")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("store: ") == 1  # rank 0 alone reports
    assert_same_arrays(arrays_of(store), reference["arrays"])
    one, two = RunStore.open(reference["store"]), RunStore.open(store)
    assert two.meta["summary"] == one.meta["summary"] and two.meta["summary"]["candidates"] == 6
    assert two.meta["committed_iteration"] == ITERATIONS and two.group_count == GROUPS
    assert cli.main(["verify", str(store)]) == 0
    assert capsys.readouterr().out.startswith(
        f"ok: {store}: schema {SCHEMA_VERSION}, iteration {ITERATIONS} of {ITERATIONS}, 6 candidates in {GROUPS} groups"
    )


def test_groups_are_optimized_apart(reference):
    """A group's stationarity sees only its own candidates: the grouped run differs from the
    ungrouped one, and group 0 of it equals a run of group 0's candidates alone."""
    store = RunStore.open(reference["store"])
    ungrouped = reference["root"] / "ungrouped.zarr"
    assert (
        cli.main(
            [
                "run",
                str(reference["pipeline"]),
                "--store",
                str(ungrouped),
                "--no-progress",
                "--set",
                "synthesis.groups=1",
            ]
        )
        == 0
    )
    alone = reference["root"] / "alone.zarr"
    assert (
        cli.main(
            [
                "run",
                str(reference["pipeline"]),
                "--store",
                str(alone),
                "--no-progress",
                "--set",
                "synthesis.groups=1",
                "--set",
                "synthesis.classes=[0, 1]",
            ]
        )
        == 0
    )
    assert not np.array_equal(RunStore.open(ungrouped).candidates()["x"], store.candidates()["x"])
    group0, single = store.region(0).candidates(), RunStore.open(alone).candidates()
    assert all(np.array_equal(group0[k], single[k]) for k in single)


def test_a_killed_two_process_run_resumes_with_one_process(reference, caplog):
    store = reference["root"] / "killed2.zarr"
    killed = dsv_pipeline(
        "run", str(reference["pipeline"]), "--store", str(store), "--nproc", "2", fault="after-iteration:7"
    )
    assert killed.returncode != 0
    committed = [r.committed_iteration for r in RunStore.open(store).regions()]
    assert max(committed) < ITERATIONS  # every rank stopped inside its first group
    resumed = dsv_pipeline("resume", str(store))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after iteration 5" in resumed.stderr
    assert_same_arrays(arrays_of(store), reference["arrays"])


def test_a_killed_one_process_run_resumes_with_two_processes(reference):
    store = reference["root"] / "killed1.zarr"
    killed = dsv_pipeline("run", str(reference["pipeline"]), "--store", str(store), fault="after-iteration:7")
    assert killed.returncode == -signal.SIGKILL
    assert [r.committed_iteration for r in RunStore.open(store).regions()] == [5, 0, 0]  # groups run in turn
    resumed = dsv_pipeline("resume", str(store), "--nproc", "2")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_arrays(arrays_of(store), reference["arrays"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_nccl_without_gpus_is_refused(reference, capsys):
    code = cli.main(
        [
            "run",
            str(reference["pipeline"]),
            "--store",
            str(reference["root"] / "x.zarr"),
            "--nproc",
            "2",
            "--backend",
            "nccl",
        ]
    )
    assert code == 2
    assert "--backend nccl: needs CUDA GPUs" in capsys.readouterr().err


# ---- schema 2 --------------------------------------------------------------------------------------


def as_schema_2(store, target) -> None:
    """Rewrite a one-group store in the layout of schema 2: the region's arrays at the root and
    its commit record inside the root metadata."""
    shutil.copytree(store, target)
    for name in ("candidates", "state", "history"):
        (target / "groups" / "0" / name).rename(target / name)
    region = json.loads((target / "groups" / "0" / "zarr.json").read_text())["attributes"][REGION_RECORD]
    shutil.rmtree(target / "groups")
    doc = json.loads((target / "zarr.json").read_text())
    meta = doc["attributes"]["dsv"]
    meta.pop("groups")
    meta.update(schema_version=2, **{k: v for k, v in region.items() if k != "summary"})
    (target / "zarr.json").write_text(json.dumps(doc))


def test_a_schema_2_store_is_read_but_not_continued(reference, tmp_path, capsys):
    one_group = tmp_path / "new.zarr"
    assert (
        cli.main(
            [
                "run",
                str(reference["pipeline"]),
                "--store",
                str(one_group),
                "--no-progress",
                "--set",
                "synthesis.groups=1",
            ]
        )
        == 0
    )
    old = tmp_path / "old.zarr"
    as_schema_2(one_group, old)
    new_store, old_store = RunStore.open(one_group), RunStore.open(old)
    assert old_store.schema_version == 2 and old_store.group_count == 1
    assert old_store.meta["committed_iteration"] == ITERATIONS
    for got, want in ((old_store.candidates(), new_store.candidates()), (old_store.history(), new_store.history())):
        assert sorted(got) == sorted(want) and all(np.array_equal(got[k], want[k]) for k in want)
    assert verify(old).ok
    assert cli.main(["export", str(old), "--npz", str(tmp_path / "old.npz")]) == 0
    capsys.readouterr()
    assert (
        cli.main(
            ["run", str(reference["pipeline"]), "--store", str(old), "--no-progress", "--set", "synthesis.groups=1"]
        )
        == 2
    )
    assert "schema 2; it can be read, not continued" in capsys.readouterr().err


# ---- groups ----------------------------------------------------------------------------------------


def test_group_slices_cover_the_candidates_in_order():
    slices = group_slices(7, 3)
    assert [(s.start, s.stop) for s in slices] == [(0, 3), (3, 5), (5, 7)]
    assert group_slices(4, 1) == [slice(0, 4)]
    with pytest.raises(ConfigError, match="synthesis.groups: 5 groups for 4 candidates"):
        group_slices(4, 5)


def test_each_group_has_one_owner_whatever_the_process_count():
    for world in (1, 2, 3, 5):
        owned = [g for rank in range(world) for g in owned_groups(4, rank, world)]
        assert sorted(owned) == [0, 1, 2, 3]
    assert group_seed(9, 0) == 9  # one group is the ungrouped run
    assert len({group_seed(9, g) for g in range(50)}) == 50


def test_histories_and_summaries_of_groups_combine():
    a = {
        "iteration": np.array([1, 2, 3]),
        "alive": np.array([2.0, 2, 1]),
        "total": np.array([1.0, 2, 3]),
        "lambda": np.ones((3, 2)),
    }
    b = {
        "iteration": np.array([1, 2]),
        "alive": np.array([1.0, 0]),
        "total": np.array([4.0, 8]),
        "lambda": np.zeros((2, 1)),
    }
    h = combine_histories([a, b], [2, 1])
    assert h["iteration"].tolist() == [1, 2]  # the rows both groups committed
    assert h["alive"].tolist() == [3, 2]
    assert h["total"].tolist() == pytest.approx([2.0, 4.0])  # weighted by group size
    assert h["lambda"].shape == (2, 3)
    s = combine_summaries(
        [
            {"candidates": 2, "alive": 1, "iterations": 9, "relative_stationarity": 0.5},
            {"candidates": 1, "alive": 1, "iterations": 7, "relative_stationarity": 0.8},
        ],
        [2, 1],
    )
    assert s == {"candidates": 3, "alive": 2, "iterations": 7, "relative_stationarity": pytest.approx(0.6)}


def test_groups_are_checked(reference, capsys):
    assert (
        cli.main(
            [
                "run",
                str(reference["pipeline"]),
                "--store",
                str(reference["root"] / "y.zarr"),
                "--no-progress",
                "--set",
                "synthesis.groups=0",
            ]
        )
        == 2
    )
    assert "synthesis.groups: must be at least 1, got 0" in capsys.readouterr().err
    assert (
        cli.main(
            [
                "run",
                str(reference["pipeline"]),
                "--store",
                str(reference["root"] / "y.zarr"),
                "--no-progress",
                "--set",
                "synthesis.groups=7",
            ]
        )
        == 2
    )
    assert "synthesis.groups: 7 groups for 6 candidates" in capsys.readouterr().err
    assert not (reference["root"] / "y.zarr").exists()


def test_the_python_api_refuses_groups():
    from conftest import image_classifier

    import dsv

    with pytest.raises(ConfigError, match="groups: must be 1 here"):
        dsv.synthesize(
            image_classifier(),
            targets=range(4),
            input_shape=(1, 8, 8),
            iterations=2,
            groups=2,
            device="cpu",
            progress=False,
        )
