"""Malformed pipeline files and impossible settings: exit code 2, one line, no traceback, nothing
written. Each case is a file (or an override) a hostile but fair user could give."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import toml_document

from dsv import cli
from dsv.builtin.models import ConvNet


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    weights = root / "convnet.pt"
    torch.save(ConvNet(1, 8, 10, width=4, depth=2).state_dict(), weights)
    (root / "a_file").write_text("not a folder")
    return root


def base(root: Path) -> dict:
    return {
        "run": {"name": "bad", "seed": 0, "device": "cpu", "stages": ["synthesize"], "store": root / "bad.zarr"},
        "data": {"name": "digits"},
        "model": {"source": "convnet", "weights_path": root / "convnet.pt", "options": {"width": 4, "depth": 2}},
        "synthesis": {"iterations": 2, "classes": [0, 1], "lambda_warmup": 0},
    }


def with_keys(**changes):
    """A case that sets ``table.key`` (``table__key`` as keyword) in the base document."""

    def make(root: Path) -> dict:
        doc = base(root)
        for dotted, value in changes.items():
            *tables, key = dotted.split("__")
            node = doc
            for t in tables:
                node = node.setdefault(t, {})
            node[key] = value(root) if callable(value) else value
        return doc

    return make


def without(table: str, key: str):
    def make(root: Path) -> dict:
        doc = base(root)
        del doc[table][key]
        return doc

    return make


TRAIN = {"retrainer": {"name": "adam", "epochs": 1, "batch_size": 64, "lr": 1e-2}}

# (id, document maker or raw bytes, extra CLI arguments, what the line must say)
CASES = [
    ("non_utf8", b'[run]\nname = "caf\xe9"\n', [], "not UTF-8"),
    ("invalid_toml", b"[run\nname = 1\n", [], "invalid TOML"),
    ("empty_file", b"", [], "model: required key missing"),
    ("unknown_table", with_keys(foo__bar=1), [], "foo: unknown key"),
    ("unknown_run_key", with_keys(run__colour="red"), [], "run.colour: unknown key"),
    ("seed_string", with_keys(run__seed="x"), [], "run.seed: expected an integer"),
    ("seed_negative", with_keys(run__seed=-1), [], "run.seed: must be at least 0, got -1"),
    ("seed_negative_override", None, ["--set", "run.seed=-3"], "run.seed: must be at least 0, got -3"),
    ("device_tpu", with_keys(run__device="tpu"), [], "run.device"),
    ("device_meta", with_keys(run__device="meta"), [], "run.device: 'meta'"),
    ("store_under_a_file", with_keys(run__store=lambda r: r / "a_file" / "x.zarr"), [], "a_file"),
    ("stage_unknown", with_keys(run__stages=["nope"]), [], "run.stages[0]: unknown stage"),
    ("stage_needs_table", with_keys(run__stages=["synthesize", "edit"]), [], "needs an [edit] table"),
    ("data_unknown", with_keys(data__name="nope"), [], "data.name"),
    ("digits_root", with_keys(data__root=lambda r: r / "nowhere"), [], "data.root: digits"),
    ("model_source_unknown", with_keys(model__source="nope"), [], "model.source"),
    ("width_zero", with_keys(model__options={"width": 0, "depth": 2}), [], "model.options.width"),
    ("depth_negative", with_keys(model__options={"width": 4, "depth": -1}), [], "model.options.depth"),
    ("model_option_unknown", with_keys(model__options={"width": 4, "colour": 1}), [], "model.options.colour"),
    ("weights_missing", with_keys(model__weights_path=lambda r: r / "missing.pt"), [], "model.weights_path"),
    ("weights_not_torch", with_keys(model__weights_path=lambda r: r / "a_file"), [], "model.weights_path"),
    ("iterations_zero", with_keys(synthesis__iterations=0), [], "synthesis.iterations: must be at least 1"),
    ("iterations_absurd", None, ["--set", "synthesis.iterations=99999999999999999999"], "synthesis.iterations"),
    ("iterations_string", with_keys(synthesis__iterations="ten"), [], "synthesis.iterations: expected an integer"),
    ("candidates_absurd", with_keys(synthesis__candidates_per_class=1000000000), [], "candidates_per_class"),
    ("candidates_zero", with_keys(synthesis__candidates_per_class=0), [], "candidates_per_class"),
    ("resolution_absurd", with_keys(synthesis__resolutions=[[0, 100000]]), [], "synthesis.resolutions[0]"),
    ("resolution_tiny", with_keys(synthesis__resolutions=[[0, 4]]), [], "synthesis.resolutions[0]"),
    ("resolution_order", with_keys(synthesis__resolutions=[[10, 16], [5, 12]]), [], "synthesis.resolutions[1]"),
    ("resolution_repeated", with_keys(synthesis__resolutions=[[0, 8], [0, 12]]), [], "synthesis.resolutions[1]"),
    ("resolution_shape", with_keys(synthesis__resolutions=[[0, 16, 3]]), [], "synthesis.resolutions[0]"),
    ("upsample_alone", with_keys(synthesis__upsample=True), [], "synthesis.upsample: needs synthesis.resolutions"),
    ("lr_zero", with_keys(synthesis__lr_x=0.0), [], "synthesis.lr_x"),
    ("lr_nan", with_keys(synthesis__lr_lambda=float("nan")), [], "synthesis.lr_lambda"),
    ("lambda_init_negative", with_keys(synthesis__lambda_init=-1.0), [], "synthesis.lambda_init"),
    ("class_out_of_range", with_keys(synthesis__classes=[42]), [], "synthesis.classes"),
    ("class_negative", with_keys(synthesis__classes=[-1]), [], "synthesis.classes"),
    (
        "targets_and_classes_empty",
        with_keys(synthesis__targets=[], synthesis__classes=[]),
        [],
        "synthesis.targets: empty, and synthesis.classes is empty too",
    ),
    ("target_out_of_range", with_keys(synthesis__targets=[{"99": 1.0}]), [], "synthesis.targets"),
    ("groups_zero", with_keys(synthesis__groups=0), [], "synthesis.groups"),
    ("groups_too_many", with_keys(synthesis__groups=100), [], "synthesis.groups"),
    ("record_every_zero", with_keys(synthesis__record_every=0), [], "synthesis.record_every"),
    ("checkpoint_negative", with_keys(synthesis__checkpoint_every=-1), [], "synthesis.checkpoint_every"),
    ("domain_unknown", with_keys(synthesis__domain="x"), [], "synthesis.domain"),
    ("augmentation_unknown", with_keys(synthesis__augmentations=[{"name": "nope"}]), [], "augmentations[0].name"),
    ("domain_weight_zero", with_keys(synthesis__domain_weight=0.0), [], "synthesis.domain_weight"),
    ("loss_unknown", with_keys(synthesis__losses=[{"name": "nope"}]), [], "synthesis.losses[0].name"),
    (
        "loss_private_field",
        with_keys(synthesis__losses=[{"name": "stationarity", "_auto": 1}]),
        [],
        "synthesis.losses[0]._auto: unknown key",
    ),
    ("prior_weight_string", with_keys(synthesis__priors=[{"name": "tv", "weight": "abc"}]), [], "priors[0].weight"),
    ("init_unknown", with_keys(synthesis__init={"name": "nope"}), [], "synthesis.init.name"),
    ("logging_zero", with_keys(logging__scalars_every=0), [], "logging.scalars_every"),
    ("override_unknown", None, ["--set", "synthesis.colour=1"], "synthesis.colour: unknown key"),
    ("override_no_value", None, ["--set", "synthesis.iterations"], "synthesis.iterations"),
    (
        "epochs_zero",
        with_keys(
            run__stages=["train", "synthesize"],
            model__weights_path="",
            train=dict(TRAIN, retrainer={**TRAIN["retrainer"], "epochs": 0}),
        ),
        [],
        "epochs",
    ),
]


def _write(root: Path, case_id: str, document) -> Path:
    path = root / f"{case_id}.toml"
    if isinstance(document, bytes):
        path.write_bytes(document)
    else:
        doc = (document or base)(root)
        path.write_text(toml_document(doc))
    return path


@pytest.mark.parametrize("case_id, document, extra, expected", CASES, ids=[c[0] for c in CASES])
def test_a_bad_file_is_one_line_exit_2_and_writes_nothing(workspace, capsys, case_id, document, extra, expected):
    if case_id == "device_cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    pipeline = _write(workspace, case_id, document)
    before = sorted(p.name for p in workspace.iterdir())
    code = cli.main(["run", str(pipeline), "--no-progress", *extra])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert lines[0].startswith("dsv-pipeline: error: ") and expected in lines[0], lines[0]
    assert sorted(p.name for p in workspace.iterdir()) == before  # no store, no half store, nothing


def test_there_are_at_least_40_cases():
    assert len(CASES) >= 40


def test_cuda_without_a_gpu_is_one_line(workspace, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    pipeline = _write(workspace, "device_cuda", with_keys(run__device="cuda"))
    assert cli.main(["run", str(pipeline), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "run.device: 'cuda'" in err and "no CUDA" in err, err
    assert not (workspace / "bad.zarr").exists()
