"""Pipeline files: bad input gives one clear ConfigError naming the file and the key path."""

from __future__ import annotations

import textwrap

import pytest
import tomllib
import torch
from conftest import REPO_ROOT, SYNTHESIZE_ONLY

from dsv import cli
from dsv import config as cfg
from dsv.errors import ConfigError
from dsv.pipeline import Pipeline, load_pipeline, load_pipeline_text
from dsv.plugins import get_plugin_manager
from dsv.synthesis.build import target_matrix

MINIMAL = '[model]\nsource = "convnet"\n'


@pytest.fixture(scope="module")
def plugins():
    return get_plugin_manager()


def load(text: str, **kwargs) -> cfg.LoadedPipeline:
    return load_pipeline_text(textwrap.dedent(text), source="p.toml", **kwargs)


def config_error(text: str, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load(text, **kwargs)
    return str(info.value)


def build_error(spec, registry, path) -> str:
    with pytest.raises(ConfigError) as info:
        cfg.build(spec, registry, source="p.toml", path=path)
    return str(info.value)


# --------------------------------------------------------------------------------------------------
# what the loader accepts
# --------------------------------------------------------------------------------------------------


def test_minimal_file_gets_the_defaults():
    loaded = load(MINIMAL)
    c = loaded.config
    assert c.model.source == "convnet"
    assert c.synthesis.iterations == 300
    assert [s.name for s in c.synthesis.losses] == ["primal", "stationarity"]
    assert c.run.stages == ["train", "synthesize", "export"]
    assert loaded.store_path.as_posix() == "stores/run.zarr"


def test_plugin_tables_keep_their_options():
    loaded = load(MINIMAL + '[synthesis]\npriors = [{ name = "tv", weight = 0.5 }, "norm"]\nlr_x = 1\n')
    priors = loaded.config.synthesis.priors
    assert [(p.name, p.options) for p in priors] == [("tv", {"weight": 0.5}), ("norm", {})]
    lr_x = loaded.config.synthesis.lr_x
    assert lr_x == 1.0 and isinstance(lr_x, float)  # an integer is a fine float


def test_load_reads_a_file_and_names_it(tmp_path):
    path = tmp_path / "pipe.toml"
    path.write_text(MINIMAL + "[synthesis]\niterations = 7\n")
    loaded = load_pipeline(path)
    assert loaded.config.synthesis.iterations == 7
    assert loaded.source == str(path)
    with pytest.raises(ConfigError, match=r"missing\.toml: cannot read pipeline file"):
        load_pipeline(tmp_path / "missing.toml")


def test_the_pipeline_writer_of_the_tests_writes_toml_that_loads_back(tmp_path, write_pipeline):
    """conftest's write_pipeline renders Python values as TOML: tomllib reads back the same dict."""
    synthesis = {
        "iterations": 3,
        "lr_x": 1e-05,
        "scale": -2.5,
        "large": 1e16,
        "limits": [float("inf"), float("-inf")],
        "flags": [True, False],
        "empty": [],
        "targets": [3, {"1": 0.25, "2": 0.75}],
        "losses": [{"name": "primal"}, {"name": "stationarity", "params": ["head.*"], "options": {}}],
        "text": 'a "quote", a \\ backslash, a\ttab, a\nnewline, \x7f, é and 😀',
        "a key": "with a space",
    }
    path = write_pipeline(
        tmp_path / "p.toml",
        name="r",
        store=tmp_path / "s.zarr",
        models=tmp_path / "models",
        synthesis=synthesis,
        tables={"model": {"weights_path": tmp_path / "w.pt"}, "export": {"png": ""}},
    )
    assert tomllib.loads(path.read_text()) == {
        "run": {
            "name": "r",
            "seed": 0,
            "device": "cpu",
            "store": (tmp_path / "s.zarr").as_posix(),
            "stages": ["train", "synthesize"],
        },
        "data": {"name": "digits"},
        "model": {
            "source": "convnet",
            "options": {"width": 8, "depth": 2},
            "weights_path": (tmp_path / "w.pt").as_posix(),
        },
        "train": {
            "retrainer": {"name": "adam", "epochs": 1, "batch_size": 64, "lr": 0.01},
            "cache_dir": (tmp_path / "models").as_posix(),
        },
        "synthesis": synthesis,
        "export": {"png": ""},
    }


# --------------------------------------------------------------------------------------------------
# bad input, each kind with its message
# --------------------------------------------------------------------------------------------------


def test_wrong_type_of_a_plugin_option_names_the_key_path(plugins):
    spec = cfg.PluginSpec(name="tv", options={"weight": "abc"})
    message = build_error(spec, plugins.registry("priors"), "synthesis.priors[0]")
    assert message == 'p.toml: synthesis.priors[0].weight: expected a number, got "abc"'
    # the loader checks plugin options too, before any stage runs
    assert config_error(MINIMAL + '[synthesis]\npriors = [{ name = "tv", weight = "abc" }]\n') == message


def test_wrong_type_in_a_pipeline_file_fails_before_any_store_exists(
    tmp_path, digits_bundle, convnet_weights, write_pipeline, capsys
):
    store = tmp_path / "run.zarr"
    path = write_pipeline(
        tmp_path / "pipeline.toml",
        **SYNTHESIZE_ONLY,
        store=store,
        tables={"model": {"weights_path": convnet_weights}},
        synthesis={"iterations": 2, "priors": [{"name": "tv", "weight": "abc"}]},
    )
    expected = f'{path}: synthesis.priors[0].weight: expected a number, got "abc"'
    with pytest.raises(ConfigError) as info:
        Pipeline.from_toml(path, progress=False).run()
    assert str(info.value) == expected
    assert not store.exists()
    assert cli.main(["run", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not store.exists()


def test_wrong_type_of_a_table_key():
    assert config_error(MINIMAL + '[synthesis]\niterations = "5"\n') == (
        'p.toml: synthesis.iterations: expected an integer, got "5"'
    )
    assert "synthesis.iterations: expected an integer, got 5.5" in config_error(
        MINIMAL + "[synthesis]\niterations = 5.5\n"
    )
    assert "run.seed: expected an integer, got true" in config_error(MINIMAL + "[run]\nseed = true\n")
    assert 'synthesis.classes[1]: expected an integer, got "a"' in config_error(
        MINIMAL + '[synthesis]\nclasses = [1, "a"]\n'
    )


def test_unknown_key_at_top_level():
    message = config_error("bogus = 1\n" + MINIMAL)
    assert message.startswith("p.toml: bogus: unknown key")
    assert (
        "known: analyse, data, edit, evaluate, export, interpolate, logging, model, plugins, reconstruction, report, "
        "retrain, run, select, synthesis, train"
    ) in message


def test_unknown_key_in_a_nested_table():
    message = config_error(MINIMAL + "[synthesis]\niteratoins = 5\n")
    assert message.startswith("p.toml: synthesis.iteratoins: unknown key")
    assert "iterations" in message


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text(MINIMAL + "[synthesis\n")
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    message = str(info.value)
    assert message.startswith(f"{path}: invalid TOML")
    assert "line 3" in message


def test_unknown_plugin_name_suggests_the_close_one(plugins):
    message = build_error(cfg.PluginSpec(name="tvv"), plugins.registry("priors"), "synthesis.priors[0]")
    assert config_error(MINIMAL + '[synthesis]\npriors = [{ name = "tvv" }]\n') == message  # at load, too
    assert message.startswith("p.toml: synthesis.priors[0].name: unknown prior 'tvv'")
    assert "did you mean 'tv'" in message
    known = message.split("(known: ", 1)[1].rstrip(")").split(", ")
    assert {"norm", "tv"} <= set(known) and known == sorted(known)  # installed plugins may add more


def test_out_of_range_values():
    assert config_error(MINIMAL + "[synthesis]\niterations = 0\n") == (
        "p.toml: synthesis.iterations: must be at least 1, got 0"
    )
    message = config_error(MINIMAL + "[synthesis]\nlr_x = -1.0\nlambda_init = 0\n")
    assert "p.toml: synthesis.lr_x: must be positive, got -1.0" in message
    assert "p.toml: synthesis.lambda_init: must be positive" in message  # both problems at once
    assert "run.stages[1]: unknown stage 'bogus'" in config_error(MINIMAL + '[run]\nstages = ["train", "bogus"]\n')


def test_missing_required_key():
    assert config_error('[model]\nweights_path = "w.pt"\n') == "p.toml: model.source: required key missing"
    assert "data.name: required key missing" in config_error(MINIMAL + "[data]\nroot = 'x'\n")


def test_bad_set_syntax():
    with pytest.raises(ConfigError, match=r"--set synthesis\.iterations: expected KEY=VALUE"):
        load(MINIMAL, overrides=["synthesis.iterations"])
    with pytest.raises(ConfigError, match=r"is not a dotted key path"):
        load(MINIMAL, overrides=["synth esis.iterations=3"])
    with pytest.raises(ConfigError, match=r"model\.source is not a table"):
        load(MINIMAL, overrides=["model.source.x=3"])


def test_a_set_override_is_type_checked_like_the_file():
    # "abc" is not TOML, so it is taken as a string, and a string is not an integer
    assert 'synthesis.iterations: expected an integer, got "abc"' in config_error(
        MINIMAL, overrides=["synthesis.iterations=abc"]
    )


def test_unknown_plugin_option(plugins):
    spec = cfg.PluginSpec(name="tv", options={"wieght": 1})
    message = build_error(spec, plugins.registry("priors"), "synthesis.priors[0]")
    assert message.startswith("p.toml: synthesis.priors[0].wieght: unknown key")
    assert "weight" in message


def test_unknown_option_of_a_function_factory_lists_the_known_ones(plugins):
    spec = cfg.PluginSpec(name="digits", options={"test_fractoin": 0.5})
    message = build_error(spec, plugins.registry("datasets"), "data")
    assert message.startswith("p.toml: data.test_fractoin: unknown option of 'digits'")
    assert "test_fraction" in message


def test_invalid_option_value_caught_by_a_plugin_validator(plugins):
    spec = cfg.PluginSpec(name="flip", options={"p": 2.0})
    message = build_error(spec, plugins.registry("augmentations"), "synthesis.augmentations[0]")
    assert message == "p.toml: synthesis.augmentations[0].p: must be within [0, 1], got 2.0"


def test_attrs_choice_validator_gives_a_readable_message(plugins):
    """An attrs ``in_`` validator raises ValueError with 4 args; the message must stay one clear
    line naming the option, not the repr of attrs' argument tuple."""
    spec = cfg.PluginSpec(name="stationarity", options={"distance": "l3"})
    message = build_error(spec, plugins.registry("losses"), "synthesis.losses[0]")
    assert message.startswith("p.toml: synthesis.losses[0]")
    assert "'l3'" in message and "distance" in message
    assert "Attribute(" not in message, message
    assert len(message.splitlines()) == 1


def test_bad_targets():
    message = config_error(MINIMAL + '[synthesis]\ntargets = ["a"]\n')
    assert message.startswith("p.toml: synthesis.targets[0]: expected a class index or a table")
    loaded = load(MINIMAL + "[synthesis]\ntargets = [3, { 1 = 0.25, 2 = 0.75 }]\n")
    assert loaded.config.synthesis.targets == [3, {"1": 0.25, "2": 0.75}]


def test_class_index_out_of_range_in_targets():
    with pytest.raises(ConfigError) as info:
        target_matrix([1, {"2": 0.5, "10": 0.5}], [], 1, 10, "p.toml")
    assert str(info.value) == "p.toml: synthesis.targets[1]: class 10 is out of range (the model has 10 classes)"
    with pytest.raises(ConfigError, match=r"p\.toml: synthesis\.classes\[0\]: class 12 is out of range"):
        target_matrix([], [12], 1, 10, "p.toml")
    with pytest.raises(ConfigError, match=r"synthesis\.targets\[0\]: the weights sum to 0"):
        target_matrix([{"1": 0.0}], [], 1, 10, "p.toml")


def test_target_matrix_rows():
    m = target_matrix([3, {"1": 1.0, "2": 3.0}], [], 2, 5, "p.toml")
    assert m.shape == (4, 5)
    assert torch.allclose(m.sum(1), torch.ones(4))
    assert m[0].tolist() == m[1].tolist() == [0, 0, 0, 1, 0]
    assert m[2].tolist() == m[3].tolist() == [0, 0.25, 0.75, 0, 0]
    assert target_matrix([], [], 1, 3, "p.toml").argmax(1).tolist() == [0, 1, 2]  # every class
    assert target_matrix([], [2, 0], 1, 3, "p.toml").argmax(1).tolist() == [2, 0]


# --------------------------------------------------------------------------------------------------
# overrides and the config hash
# --------------------------------------------------------------------------------------------------


def test_overrides_change_the_loaded_config(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(MINIMAL + "[synthesis]\niterations = 300\n")
    store = tmp_path / "elsewhere.zarr"
    loaded = load_pipeline(
        path,
        overrides=["synthesis.iterations=50", "run.device=cpu", 'synthesis.priors=[{ name = "tv", weight = 2 }]'],
        store=str(store),
    )
    assert loaded.config.synthesis.iterations == 50
    assert loaded.config.run.device == "cpu"
    assert loaded.config.synthesis.priors[0].options == {"weight": 2}
    assert loaded.config.run.store == str(store)
    assert loaded.store_path == store
    assert loaded.raw["synthesis"]["iterations"] == 50  # what the store keeps and the hash covers


def test_apply_overrides_does_not_touch_the_input():
    raw = {"synthesis": {"iterations": 3}}
    out = cfg.apply_overrides(raw, ["synthesis.iterations=4", "run.name=x"])
    assert raw == {"synthesis": {"iterations": 3}}
    assert out == {"synthesis": {"iterations": 4}, "run": {"name": "x"}}


def test_parse_override_values_are_toml():
    assert cfg.parse_override("synthesis.iterations=50") == (["synthesis", "iterations"], 50)
    assert cfg.parse_override("synthesis.lr_x=1e-2") == (["synthesis", "lr_x"], 0.01)
    assert cfg.parse_override("run.device=cpu") == (["run", "device"], "cpu")
    assert cfg.parse_override('run.name="a=b"') == (["run", "name"], "a=b")
    assert cfg.parse_override("synthesis.classes=[1, 2]") == (["synthesis", "classes"], [1, 2])


def test_config_hash_is_stable_and_changes_with_a_value():
    a = load(MINIMAL + "[synthesis]\niterations = 20\nlr_x = 0.1\n")
    b = load("[synthesis]\nlr_x = 0.1\niterations = 20\n" + MINIMAL)  # same content, other order
    assert a.config_hash == b.config_hash
    assert a.config_hash == load(MINIMAL + "[synthesis]\niterations = 20\nlr_x = 0.1\n").config_hash
    assert len(a.config_hash) == 16
    c = load(MINIMAL + "[synthesis]\niterations = 21\nlr_x = 0.1\n")
    assert c.config_hash != a.config_hash
    d = load(MINIMAL + "[synthesis]\niterations = 20\nlr_x = 0.1\n", overrides=["synthesis.iterations=21"])
    assert d.config_hash == c.config_hash


# --------------------------------------------------------------------------------------------------
# shapes that are not what the key expects (each one a single clear line, never a crash)
# --------------------------------------------------------------------------------------------------


def test_a_string_where_a_list_is_expected_is_a_type_error():
    """TOML ``stages = "synthesize"``: one line saying a list is expected, not one error per
    character (cattrs iterates the string)."""
    message = config_error(MINIMAL + '[run]\nstages = "synthesize"\n')
    assert len(message.splitlines()) == 1, message
    assert message.startswith("p.toml: run.stages: expected a list"), message


def test_a_string_where_a_list_of_plugins_is_expected_is_not_split_into_characters():
    """``priors = "tv"`` must not load as the two priors 't' and 'v'."""
    with pytest.raises(ConfigError) as info:
        loaded = load(MINIMAL + '[synthesis]\npriors = "tv"\n')
        pytest.fail(f"loaded as {[p.name for p in loaded.config.synthesis.priors]}")
    assert str(info.value).startswith("p.toml: synthesis.priors: expected a list")


def test_a_scalar_where_a_table_is_expected():
    message = config_error('model = "convnet"\n')
    assert message.startswith("p.toml: model: expected a table"), message
    assert "AttributeError" not in message


def test_run_that_is_not_a_table_with_a_store_override():
    """``--store`` on a file whose ``run`` is not a table: a ConfigError, not a TypeError."""
    message = config_error("run = 3\n" + MINIMAL, store="elsewhere.zarr")
    assert message.startswith("p.toml: run")


@pytest.mark.parametrize("key,value", [("lr_x", "nan"), ("lr_lambda", "inf"), ("lambda_init", "nan")])
def test_non_finite_numbers_are_rejected(key, value):
    message = config_error(MINIMAL + f"[synthesis]\n{key} = {value}\n")
    assert message.startswith(f"p.toml: synthesis.{key}:"), message


@pytest.mark.parametrize("name", ["..", "."])
def test_export_file_names_that_are_not_plain_names_fail_at_load(name):
    """The store refuses them at export time (after the whole synthesis); the loader must too."""
    message = config_error(MINIMAL + f'[export]\npng = "{name}"\n')
    assert message.startswith("p.toml: export.png:")


def test_a_stationarity_glob_matching_nothing_is_a_config_error(tmp_path, convnet_weights, write_pipeline, capsys):
    """``params = "nope.*"`` fails in Stationarity.attach with a ValueError; the CLI must report it
    as one line naming the key (exit 2), not crash with a traceback, and create no store."""
    store = tmp_path / "run.zarr"
    path = write_pipeline(
        tmp_path / "pipeline.toml",
        **SYNTHESIZE_ONLY,
        store=store,
        tables={"model": {"weights_path": convnet_weights}},
        synthesis={"iterations": 2, "losses": ["primal", {"name": "stationarity", "params": "nope.*"}]},
    )
    assert cli.main(["run", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "synthesis.losses[1]" in err and "no parameter matches ['nope.*']" in err
    assert not store.exists()


# --------------------------------------------------------------------------------------------------
# the pipeline files shipped in pipelines/
# --------------------------------------------------------------------------------------------------

SHIPPED = sorted((REPO_ROOT / "pipelines").glob("*.toml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_pipelines_load_and_every_plugin_table_builds(path, plugins):
    loaded = load_pipeline(path)
    s = loaded.config.synthesis
    tables = [("losses", spec, f"synthesis.losses[{i}]") for i, spec in enumerate(s.losses)]
    tables += [("priors", spec, f"synthesis.priors[{i}]") for i, spec in enumerate(s.priors)]
    tables += [("augmentations", spec, f"synthesis.augmentations[{i}]") for i, spec in enumerate(s.augmentations)]
    tables += [("initializers", s.init, "synthesis.init")]
    if loaded.config.table("train") is not None:
        tables.append(("retrainers", loaded.config.table("train").retrainer, "train.retrainer"))
    if loaded.config.table("retrain") is not None:
        r = loaded.config.table("retrain")
        tables.append(("retrainers", r.retrainer, "retrain.retrainer"))
        tables += [("augmentations", spec, f"retrain.augmentations[{i}]") for i, spec in enumerate(r.augmentations)]
    for kind, spec, key in tables:
        obj = cfg.build(spec, plugins.registry(kind), source=loaded.source, path=key)
        for option, value in spec.options.items():
            assert getattr(obj, option) == value, (key, option)
    assert loaded.config.model.source in plugins.registry("models")
    if loaded.config.data is not None:
        assert loaded.config.data.name in plugins.registry("datasets")


def test_split_variant_gives_the_label_and_its_overrides_or_refuses():
    assert cfg.split_variant('ce:synthesis.lr_x=0.1; synthesis.losses=[{name="primal"}]') == (
        "ce",
        ["synthesis.lr_x=0.1", 'synthesis.losses=[{name="primal"}]'],
    )
    for bad in ("ce", ":synthesis.lr_x=1", "ce:", "ce:synthesis.lr_x"):
        with pytest.raises(ValueError, match="expected LABEL:KEY=VALUE"):
            cfg.split_variant(bad)
