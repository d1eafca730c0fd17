"""A damaged store is reported, never read as zeros; one writer at a time; creation is atomic.

Each kind of damage (a deleted, truncated or altered chunk, garbage metadata, an edited shape) is
made on a copy of one real digits store; ``verify`` names the array, and ``show``, ``export`` and
``resume`` refuse with one line naming it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import SMALL_SYNTHESIS, SYNTHESIZE_ONLY
from conftest import dsv_cli as dsv_pipeline

from dsv import cli
from dsv.builtin.models import ConvNet
from dsv.store import SCHEMA_VERSION, RunStore, is_half_created, is_store, lock
from dsv.store.arrays import CHUNK_BYTES, chunk_rows

ITERATIONS = 6


@pytest.fixture(scope="module")
def healthy(tmp_path_factory, write_pipeline):
    """A finished digits store (6 candidates, 6 iterations, checkpoints every 3)."""
    root = tmp_path_factory.mktemp("integrity")
    weights = root / "convnet.pt"
    torch.save(ConvNet(1, 8, 10, width=4, depth=2).state_dict(), weights)
    pipeline = write_pipeline(
        root / "digits.toml",
        **SYNTHESIZE_ONLY,
        tables={"model": {"weights_path": weights}},
        synthesis={**SMALL_SYNTHESIS, "iterations": ITERATIONS, "checkpoint_every": 3, "record_every": 1},
    )
    store = root / "healthy.zarr"
    assert cli.main(["run", str(pipeline), "--store", str(store), "--no-progress"]) == 0
    return {"root": root, "store": store, "pipeline": pipeline}


def _copy(healthy, tmp_path):
    store = tmp_path / "damaged.zarr"
    shutil.copytree(healthy["store"], store)
    return store, RunStore.open(store).region(0).record["state_slot"]


def _chunk(folder):
    return next(p for p in sorted((folder / "c").rglob("*")) if p.is_file())


def delete_lambda_chunk(store, slot):
    _chunk(store / "groups/0/state" / slot / "lambda").unlink()
    return f"groups/0/state/{slot}/lambda: chunk c/0 missing"


def delete_x_chunk(store, slot):
    _chunk(store / "groups/0/state" / slot / "x").unlink()
    return f"groups/0/state/{slot}/x: chunk c/0/0/0/0 missing"


def delete_history_chunk(store, slot):
    _chunk(store / "groups/0/history/entropy").unlink()
    return "groups/0/history/entropy: chunk c/0 missing"


def truncate_x_chunk(store, slot):
    chunk = _chunk(store / "groups/0/state" / slot / "x")
    chunk.write_bytes(chunk.read_bytes()[:7])
    return f"groups/0/state/{slot}/x: a chunk cannot be read"


def flip_lambda_byte(store, slot):
    chunk = _chunk(store / "groups/0/state" / slot / "lambda")
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x10
    chunk.write_bytes(bytes(data))
    return f"groups/0/state/{slot}/lambda: a chunk cannot be read"


def flip_targets_byte(store, slot):
    chunk = _chunk(store / "groups/0/candidates/targets")
    data = bytearray(chunk.read_bytes())
    data[3] ^= 0x01
    chunk.write_bytes(bytes(data))
    return "groups/0/candidates/targets: a chunk cannot be read"


def garbage_array_metadata(store, slot):
    (store / "groups/0/state" / slot / "x" / "zarr.json").write_bytes(b"\x00garbage{")
    return f"groups/0/state/{slot}/x/zarr.json: unreadable array metadata"


def garbage_region_metadata(store, slot):
    (store / "groups/0/zarr.json").write_text('{"zarr_format": 3, "node_type": ')
    return "groups/0/zarr.json: unreadable group metadata"


def garbage_root_metadata(store, slot):
    (store / "zarr.json").write_bytes(b"\xff\xfe not json")
    return "zarr.json: not a JSON object"


def edit_x_shape(store, slot):
    meta = store / "groups/0/state" / slot / "x" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["shape"][0] -= 1
    meta.write_text(json.dumps(doc))
    return f"groups/0/state/{slot}: x (5, 1, 8, 8), lambda (6,) and alive (6,) do not describe the same candidates"


def negative_lambda_alive(store, slot):
    opened = RunStore.open(store, mode="a")
    arr = opened.region(0).group[f"state/{slot}/lambda"]
    values = arr[...]
    values[2] = -4.5  # a consistent chunk (checksum and all) that breaks dual feasibility
    arr[...] = values
    return f"groups/0/state/{slot}/lambda: candidate 2 is alive with lambda -4.5 < 0"


DAMAGE = [
    delete_lambda_chunk,
    delete_x_chunk,
    delete_history_chunk,
    truncate_x_chunk,
    flip_lambda_byte,
    flip_targets_byte,
    garbage_array_metadata,
    garbage_region_metadata,
    garbage_root_metadata,
    edit_x_shape,
    negative_lambda_alive,
]


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_damage_is_found_by_verify_and_refused_by_show_export_resume(healthy, tmp_path, capsys, damage):
    store, slot = _copy(healthy, tmp_path)
    expected = damage(store, slot)
    assert cli.main(["verify", str(store)]) == 1
    out = capsys.readouterr().out
    assert expected in out and "Traceback" not in out, out
    for command in (["show", str(store)], ["export", str(store), "--npz", str(tmp_path / "out.npz")]):
        assert cli.main(command) == 2
        captured = capsys.readouterr()
        line = _one_line(captured.err)
        assert expected in line and str(store) in line, line
        assert not captured.out
    assert not (tmp_path / "out.npz").exists()
    assert cli.main(["resume", str(store), "--no-progress"]) == 2
    assert expected in _one_line(capsys.readouterr().err)


def test_the_healthy_store_verifies_with_checksums_on_every_array(healthy, capsys):
    assert cli.main(["verify", str(healthy["store"])]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ok: {healthy['store']}: schema {SCHEMA_VERSION}, iteration {ITERATIONS}")
    arrays = [
        p.parent for p in healthy["store"].rglob("zarr.json") if json.loads(p.read_text())["node_type"] == "array"
    ]
    assert len(arrays) > 15
    for folder in arrays:
        codecs = [c["name"] for c in json.loads((folder / "zarr.json").read_text())["codecs"]]
        assert codecs[-1] == "crc32c", (folder, codecs)


def test_a_store_written_before_checksums_is_still_read(healthy, tmp_path, capsys):
    """Schema 3 (no checksums, chunks equal to the fill value left unwritten) is read and
    verified for structure; a missing chunk there is not an error (it may be zeros)."""
    store, slot = _copy(healthy, tmp_path)
    doc = json.loads((store / "zarr.json").read_text())
    doc["attributes"]["dsv"]["schema_version"] = 3
    (store / "zarr.json").write_text(json.dumps(doc))
    expected = RunStore.open(healthy["store"]).candidates()
    assert cli.main(["verify", str(store)]) == 0
    assert "written before checksums" in capsys.readouterr().out
    got = RunStore.open(store).candidates()
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value)
    assert cli.main(["show", str(store)]) == 0


def test_chunks_hold_many_candidates():
    assert chunk_rows((1, 8, 8), 4) == CHUNK_BYTES // 256
    assert chunk_rows((3, 224, 224), 4) == CHUNK_BYTES // (3 * 224 * 224 * 4)
    assert chunk_rows((3, 4096, 4096), 4) == 1  # one candidate larger than a chunk: one per chunk
    assert chunk_rows((50,), 4, most=256) == 256


def _files(folder):
    """Every file under ``folder`` (by path relative to it) with its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_each_region_has_its_own_arrays_and_a_commit_writes_inside_its_region_only(tmp_path, monkeypatch):
    """The single-writer rule under the chunk layout: groups never share an array, so no chunk
    spans two ranks' regions, and one region's checkpoint changes no file outside its folder."""
    row = 1 * 8 * 8 * 4
    monkeypatch.setattr("dsv.store.arrays.CHUNK_BYTES", 2 * row)  # chunks of 2 candidates
    path = tmp_path / "grouped.zarr"
    store = RunStore.create(path, {"config": {}}, groups=3)
    sizes = (5, 5, 4)

    def state(n, value):
        x = np.full((n, 1, 8, 8), value, np.float32)
        return {"x": x, "lambda": np.full(n, value, np.float32), "alive": np.ones(n, bool), "adam_x_exp_avg": x}

    try:
        for g, n in enumerate(sizes):
            store.region(g).init_candidates(
                np.zeros((n, 1, 8, 8), np.float32), np.ones(n, np.float32), np.eye(n, 4), np.ones(n, bool)
            )
        before = _files(path)
        rows = {"iteration": np.array([1]), "lambda": np.ones((1, sizes[1]), np.float32)}
        store.region(1).commit(1, state(sizes[1], 0.5), {}, rows)
        after = _files(path)
        changed = {name for name in before.keys() | after.keys() if before.get(name) != after.get(name)}
        assert any(name.startswith("groups/1/state/b/x/c/") for name in changed)
        assert changed and all(name.startswith("groups/1/") for name in changed), sorted(changed)

        arrays = [
            p.parent.relative_to(path).as_posix()
            for p in path.rglob("zarr.json")
            if json.loads(p.read_text())["node_type"] == "array"
        ]
        # every array (its chunks lie in its folder) belongs to one region; none is shared
        assert arrays and all(a.startswith(("groups/0/", "groups/1/", "groups/2/")) for a in arrays), arrays
        assert "groups/1/zarr.json" in changed  # the commit record, written last
        x = RunStore.open(path).region(1).group["state/b/x"]
        assert x.chunks[0] == 2 and len(list((path / "groups/1/state/b/x/c").iterdir())) == 3
    finally:
        lock.release(store.path)


# ---- one writer at a time --------------------------------------------------------------------------

HOLD = """
import sys, time
from dsv.store import lock
lock.acquire(sys.argv[1])
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_writer_is_refused_with_the_holder_and_a_dead_holder_is_taken_over(healthy, tmp_path, capsys):
    store = tmp_path / "locked.zarr"
    shutil.copytree(healthy["store"], store)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(store)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        for command in (
            ["resume", str(store), "--no-progress"],
            ["run", str(healthy["pipeline"]), "--store", str(store), "--no-progress"],
            ["run", str(healthy["pipeline"]), "--store", str(store), "--fresh", "--no-progress"],
        ):
            assert cli.main(command) == 2
            line = _one_line(capsys.readouterr().err)
            assert f"{store}: another dsv process is writing this store" in line
            assert f"pid {holder.pid}" in line
        assert is_store(store)  # --fresh deleted nothing
        # readers are not writers
        assert cli.main(["verify", str(store)]) == 0
        assert cli.main(["show", str(store)]) == 0
        capsys.readouterr()
    finally:
        holder.kill()  # SIGKILL: the OS drops the lock with the process
        holder.wait()
    assert lock.holder(store).endswith(f"pid {holder.pid}")  # the dead holder's note is still there
    assert cli.main(["resume", str(store), "--no-progress"]) == 0
    assert not lock.is_held(store)  # released when the run ended
    assert lock.holder(store) == ""  # a clean end names nobody: the next writer says nothing about it


def test_the_lock_is_counted_per_process_and_dropped_by_its_session(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    with lock.session():
        lock.acquire(folder)
        lock.acquire(folder)  # the same process asking again
        assert lock.is_held(folder)
    assert not lock.is_held(folder)


# ---- atomic creation -------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_kill_during_creation_leaves_nothing_at_the_path_and_the_next_run_cleans_up(healthy, tmp_path):
    store = tmp_path / "new.zarr"
    killed = dsv_pipeline("run", str(healthy["pipeline"]), "--store", str(store), fault="in-creation:0")
    assert killed.returncode == -9
    assert not store.exists()
    left = list(tmp_path.glob(".new.zarr.creating-*"))
    assert len(left) == 1 and (left[0] / "zarr.json").is_file()
    done = dsv_pipeline("run", str(healthy["pipeline"]), "--store", str(store))
    assert done.returncode == 0, done.stderr
    assert is_store(store) and not list(tmp_path.glob(".new.zarr.*"))


def test_a_half_created_store_of_an_older_dsv_is_recognised_and_replaced(healthy, tmp_path, capsys, caplog):
    store = tmp_path / "half.zarr"
    (store / "groups" / "0").mkdir(parents=True)
    group = json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}})
    (store / "zarr.json").write_text(group)
    (store / "groups" / "zarr.json").write_text(group)
    assert is_half_created(store)
    assert cli.main(["show", str(store)]) == 2
    assert "creation was interrupted" in _one_line(capsys.readouterr().err)
    with caplog.at_level("WARNING", logger="dsv"):
        assert cli.main(["run", str(healthy["pipeline"]), "--store", str(store), "--no-progress"]) == 0
    assert "left half-created by an interrupted run" in caplog.text
    assert RunStore.open(store).meta["committed_iteration"] == ITERATIONS


def test_a_folder_with_data_is_never_taken_for_a_half_created_store(tmp_path, healthy, capsys):
    folder = tmp_path / "mine.zarr"
    folder.mkdir()
    (folder / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    (folder / "notes.txt").write_text("keep me")
    assert not is_half_created(folder)
    for extra in ([], ["--fresh"]):
        assert cli.main(["run", str(healthy["pipeline"]), "--store", str(folder), "--no-progress", *extra]) == 2
        assert "not a dsv store" in _one_line(capsys.readouterr().err)
    assert (folder / "notes.txt").read_text() == "keep me"


def test_abandoned_builds_of_live_processes_are_left_alone(tmp_path):
    from dsv.store.run_store import remove_abandoned_builds

    live, dead = tmp_path / ".x.zarr.creating-1-aa", tmp_path / ".x.zarr.creating-2-bb"
    live.mkdir()
    dead.mkdir()
    fd = lock.lock_folder(live)
    try:
        remove_abandoned_builds(tmp_path / "x.zarr")
        assert live.exists() and not dead.exists()
    finally:
        os.close(fd)
    time.sleep(0)


# ---- disk full -------------------------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 360 KiB tmpfs (needs the right to mount; skipped otherwise), unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=360k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or done.returncode})")
    yield mount
    subprocess.run(["umount", str(mount)], capture_output=True)


@pytest.mark.slow
def test_a_full_disk_is_one_line_with_the_resume_command_and_the_resume_is_exact(healthy, small_tmpfs, tmp_path):
    store = small_tmpfs / "full.zarr"
    overrides = ["--set", "synthesis.iterations=20", "--set", "synthesis.checkpoint_every=2"]
    overrides += ["--set", "synthesis.candidates_per_class=10"]
    full = dsv_pipeline("run", str(healthy["pipeline"]), "--store", str(store), *overrides)
    assert full.returncode == 1
    assert "Traceback" not in full.stderr and "Task was destroyed" not in full.stderr
    last = full.stderr.strip().splitlines()[-1]
    assert last.startswith(f"dsv-pipeline: error: {store}/groups/0: no space left on its device")
    assert last.endswith(f"the last checkpoint is intact: resume with: dsv-pipeline resume {store}")
    stopped = RunStore.open(store).meta["committed_iteration"]
    assert 0 < stopped < 20
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_tmpfs)], check=True)
    resumed = dsv_pipeline("resume", str(store))
    assert resumed.returncode == 0, resumed.stderr
    reference = tmp_path / "reference.zarr"
    done = dsv_pipeline("run", str(healthy["pipeline"]), "--store", str(reference), *overrides)
    assert done.returncode == 0, done.stderr
    expected, got = RunStore.open(reference), RunStore.open(store)
    for key, value in expected.candidates().items():
        np.testing.assert_array_equal(got.candidates()[key], value)
    for key, value in expected.history().items():
        np.testing.assert_array_equal(got.history()[key], value)


def test_chunks_of_zeros_are_written_also_when_the_array_is_reopened(tmp_path):
    """zarr skips chunks equal to the fill value unless told otherwise, and the setting is not
    stored with an array: a history column of zeros written by a later checkpoint must exist."""
    store = RunStore.create(tmp_path / "zeros.zarr", {"config": {}}, groups=1)
    try:
        region = store.region(0)
        n = 3
        region.init_candidates(
            np.zeros((n, 1, 8, 8), np.float32), np.ones(n, np.float32), np.eye(n, 4), np.ones(n, bool)
        )
        for iteration in (1, 2):
            rows = {"iteration": np.array([iteration]), "accuracy": np.zeros(1, np.float32)}
            region = RunStore.open(store.path, mode="a").region(0)  # arrays opened afresh
            region.commit(
                iteration, {"x": np.zeros((n, 1, 8, 8)), "lambda": np.zeros(n), "alive": np.ones(n, bool)}, {}, rows
            )
        assert (tmp_path / "zeros.zarr/groups/0/history/accuracy/c/0").is_file()
        np.testing.assert_array_equal(RunStore.open(store.path).history()["accuracy"], [0.0, 0.0])
    finally:
        lock.release(store.path)
