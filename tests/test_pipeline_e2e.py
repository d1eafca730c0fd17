"""End to end through ``dsv-pipeline``: train (cached) -> synthesize -> export, on digits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dsv import cli
from dsv.store import RunStore, is_store

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SHOW_KEYS = {
    "candidates",
    "alive",
    "classified_as_target",
    "relative_stationarity",
    "stationarity_params",
    "entropy_start",
    "entropy_end",
    "iterations",
    "config_hash",
}


@pytest.fixture(scope="module")
def e2e(tmp_path_factory, write_pipeline):
    """One real run shared by the tests of this module (training + 20 iterations, ~1 s)."""
    root = tmp_path_factory.mktemp("e2e")
    store, cache = root / "run.zarr", root / "models"
    synthesis = {
        "iterations": 20,
        "record_every": 1,
        "checkpoint_every": 8,
        "losses": [
            {"name": "primal", "weight": 1.0},
            {"name": "stationarity", "weight": 1.0, "distance": "l1", "params": "head"},
        ],
        "priors": [{"name": "tv", "weight": 1e-2}, {"name": "norm", "weight": 1e-3}],
        "augmentations": [{"name": "flip", "p": 0.5}, {"name": "noise", "strength": 0.01}],
    }
    pipeline = write_pipeline(
        root / "digits.toml",
        name="digits_e2e",
        stages=("train", "synthesize", "export"),
        store=store,
        models=cache,
        synthesis=synthesis,
        tables={"export": {"png": "grid.png", "npz": "candidates.npz"}},
    )
    code = cli.main(["run", str(pipeline), "--no-progress"])
    return {"code": code, "root": root, "store": store, "cache": cache, "pipeline": pipeline}


def test_run_exits_zero_and_writes_a_store(e2e):
    assert e2e["code"] == 0
    assert is_store(e2e["store"])
    store = RunStore.open(e2e["store"])
    meta = store.meta
    assert meta["committed_iteration"] == 20
    assert meta["history_length"] == 20
    assert meta["config"]["synthesis"]["iterations"] == 20
    assert meta["config_text"] == e2e["pipeline"].read_text() and meta["config_overrides"] == []
    assert meta["dsv_version"] and meta["model_fingerprint"]
    assert 0.0 <= meta["base_test_accuracy"] <= 1.0
    assert meta["base_test_accuracy"] > 0.3  # one epoch on digits is far above chance (0.1)
    history = store.history()
    assert history["iteration"].tolist() == list(range(1, 21))
    assert {"primal", "stationarity", "primal_aug", "tv", "norm"} <= set(history)
    assert "stationarity_aug" not in history  # by default stationarity is taken on clean candidates only
    exports = sorted(p.name for p in (e2e["store"] / "exports").iterdir())
    assert exports == ["candidates.npz", "grid.png"]


def test_trained_weights_are_cached_once(e2e):
    files = list(e2e["cache"].glob("*.pt"))
    assert len(files) == 1 and files[0].name.startswith("convnet-")
    assert not list(e2e["cache"].glob("*.tmp"))


def test_show_json_has_the_summary_contract(e2e, capsys):
    capsys.readouterr()
    assert cli.main(["show", str(e2e["store"]), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert SHOW_KEYS <= set(summary)
    assert summary["iterations"] == 20
    assert summary["candidates"] == 10
    assert 0 <= summary["alive"] <= 10
    assert 0 <= summary["classified_as_target"] <= summary["alive"]
    assert summary["stationarity_params"] == 8 * 2 * 2 * 10 + 10  # head of convnet width 8, 8x8 -> 2x2
    assert summary["relative_stationarity"] > 0
    assert summary["entropy_start"] >= 0 and summary["entropy_end"] >= 0
    assert len(summary["config_hash"]) == 16
    assert summary["config_hash"] == RunStore.open(e2e["store"]).meta["config_hash"]


def test_show_text(e2e, capsys):
    capsys.readouterr()
    assert cli.main(["show", str(e2e["store"])]) == 0
    out = capsys.readouterr().out
    assert "run digits_e2e" in out and "iterations 20; candidates 10" in out


def test_export_png_and_npz(e2e, tmp_path):
    png, npz = tmp_path / "grid.png", tmp_path / "c.npz"
    assert cli.main(["export", str(e2e["store"]), "--png", str(png), "--npz", str(npz)]) == 0
    assert png.read_bytes()[:8] == PNG_MAGIC
    with np.load(npz) as arrays:
        assert {"x", "lambda", "labels", "alive"} <= set(arrays.files)
        assert arrays["x"].shape == (10, 1, 8, 8)
        assert arrays["lambda"].shape == (10,)
        assert arrays["labels"].tolist() == list(range(10))
        assert arrays["alive"].shape == (10,) and arrays["alive"].dtype == bool
        assert np.all(np.isfinite(arrays["x"]))
    assert (e2e["store"] / "exports" / "grid.png").read_bytes()[:8] == PNG_MAGIC


def test_export_needs_an_output(e2e, capsys):
    assert cli.main(["export", str(e2e["store"])]) == 2
    assert "--png" in capsys.readouterr().err


def test_second_run_without_fresh_refuses_and_keeps_the_store(e2e, capsys):
    before = RunStore.open(e2e["store"]).meta["config_hash"]
    capsys.readouterr()
    code = cli.main(["run", str(e2e["pipeline"]), "--no-progress", "--set", "synthesis.iterations=5"])
    assert code != 0
    err = capsys.readouterr().err
    assert "--fresh" in err and str(e2e["store"]) in err
    meta = RunStore.open(e2e["store"]).meta
    assert meta["committed_iteration"] == 20 and meta["config_hash"] == before
    assert len(list(e2e["cache"].glob("*.pt"))) == 1  # the weights came from the cache


def test_fresh_replaces_a_store_and_reuses_the_cache(e2e, tmp_path, capsys):
    store = tmp_path / "fresh.zarr"
    args = [
        "run",
        str(e2e["pipeline"]),
        "--no-progress",
        "--store",
        str(store),
        "--set",
        "synthesis.iterations=4",
        "--set",
        "export.npz=''",
    ]
    assert cli.main(args) == 0
    cached = list(e2e["cache"].glob("*.pt"))
    mtime = cached[0].stat().st_mtime_ns
    assert cli.main(args + ["--fresh", "--set", "synthesis.iterations=3"]) == 0
    meta = RunStore.open(store).meta
    assert meta["committed_iteration"] == 3
    assert meta["history_length"] == 3
    assert meta["config"]["synthesis"]["iterations"] == 3
    assert list(e2e["cache"].glob("*.pt")) == cached and cached[0].stat().st_mtime_ns == mtime


def test_fresh_refuses_a_plain_user_folder(e2e, tmp_path, capsys):
    folder = tmp_path / "my_photos"
    folder.mkdir()
    (folder / "holiday.txt").write_text("precious")
    (folder / "sub").mkdir()
    (folder / "sub" / "more.txt").write_text("also precious")
    capsys.readouterr()
    code = cli.main(
        [
            "run",
            str(e2e["pipeline"]),
            "--no-progress",
            "--fresh",
            "--store",
            str(folder),
            "--set",
            "synthesis.iterations=2",
        ]
    )
    assert code != 0
    assert "not a dsv store" in capsys.readouterr().err
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == ["holiday.txt", "sub", "sub/more.txt"]
    assert (folder / "holiday.txt").read_text() == "precious"


def test_show_on_a_missing_store_is_one_clear_error(tmp_path, capsys):
    assert cli.main(["show", str(tmp_path / "nope.zarr")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dsv-pipeline: error:") and "no such store" in err


def test_plugins_command_lists_names_by_kind(capsys):
    assert cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "losses:" in lines and "datasets:" in lines
    names = {line.split()[0] for line in lines if line.startswith("  ")}
    assert {"stationarity", "primal", "fashion-mnist", "digits", "tv", "convnet", "torchvision:"} <= names
    assert any(line.startswith("dsv.builtin.losses") for line in lines)


@pytest.mark.parametrize(
    "size, overrides, message",
    [
        (8, ["synthesis.resolutions=[[1, 8], [5, 12]]"], r"synthesis\.resolutions\[1\]: the model does not take 12x12"),
        (
            8,
            ["synthesis.upsample=true", "synthesis.resolutions=[[1, 8], [5, 12]]"],
            r"synthesis\.resolutions\[1\]: size 12 exceeds the model's input size 8",
        ),
        (
            16,
            ["synthesis.upsample=true", "synthesis.resolutions=[[1, 8]]"],
            r"the last stage is 8 px; with synthesis\.upsample it must be the model's input size, 16",
        ),
    ],
)
def test_a_resolution_schedule_the_model_cannot_take_is_a_config_error_before_the_run(
    e2e, tmp_path, size, overrides, message
):
    """A fixed-size model (a flattening head): a stage it cannot take, or with upsample one above
    its size or a schedule that does not end at it, stops the run before the store exists (upsample
    without a schedule is refused with the file: tests/test_bad_input.py)."""
    from torch import nn

    from dsv.errors import ConfigError
    from dsv.pipeline import Pipeline
    from dsv.plugins import InputSpec, LoadedModel
    from dsv.stages.synthesize import group_run

    pipeline = Pipeline.from_toml(e2e["pipeline"], store=str(tmp_path / "r.zarr"), progress=False, overrides=overrides)
    fixed = nn.Sequential(nn.Flatten(), nn.Linear(size * size, 10))  # takes size x size inputs only
    spec = InputSpec(1, size, (0.0,), (1.0,), [str(i) for i in range(10)])
    pipeline.context.model = LoadedModel(fixed, spec)
    with pytest.raises(ConfigError, match=message):
        group_run(pipeline.context, 0)
    assert not (tmp_path / "r.zarr").exists()
