"""Plugin tables are checked when the file loads, before any stage runs, every problem at once."""

from __future__ import annotations

import textwrap

import attrs
import pytest
from conftest import plugin_module

from dsv import cli
from dsv import config as cfg
from dsv.errors import ConfigError
from dsv.pipeline import Stage, load_pipeline_text
from dsv.plugins import DsvPluginManager


@attrs.define(kw_only=True)
class LowPass:
    """A third-party prior with a validated option."""

    weight: float = 1.0
    cutoff: float = attrs.field(default=0.5, validator=attrs.validators.gt(0))

    def __call__(self, x):
        return x.mean()


def blur(sigma: float = 1.0, size: int = 3):
    """A third-party augmentation made by a plain function (no attrs class)."""
    return lambda x: x


@attrs.define(kw_only=True)
class GuessesTable:
    """A third-party stage table holding a plugin table under a key the checks do not know by name."""

    teacher: cfg.PluginSpec = attrs.field(
        factory=lambda: cfg.PluginSpec(name="adam"), metadata={"plugin_kind": "retrainers"}
    )


@pytest.fixture
def plugins() -> DsvPluginManager:
    pm = DsvPluginManager(load_entry_points=False)
    pm.register(
        plugin_module(
            "third_party",
            dsv_register_priors=lambda registry: registry.add("lowpass", LowPass),
            dsv_register_augmentations=lambda registry: registry.add("box_blur", blur),
            dsv_register_stages=lambda registry: registry.add(
                "guesses", Stage(name="guesses", run=lambda context, store: [], order=800, table=GuessesTable)
            ),
        ),
        "third_party",
    )
    return pm


HEAD = """
[run]
stages = ["train", "synthesize", "retrain"]
[data]
name = "digits"
[model]
source = "convnet"
"""


def problems(text: str, plugins: DsvPluginManager) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_pipeline_text(textwrap.dedent(HEAD + text), source="x.toml", plugins=plugins)
    lines = str(info.value).splitlines()
    assert all(line.startswith("x.toml: ") for line in lines), lines
    return [line.removeprefix("x.toml: ") for line in lines]


def test_every_plugin_table_of_every_table_is_checked_and_all_problems_are_reported_at_once(plugins):
    found = problems(
        """
        [train]
        retrainer = { name = "adam", lrr = 1 }
        [synthesis]
        priors = [{ name = "tv", weight = 0.1 }, { name = "lowpass", cutoff = 0.0 }, { name = "tvv" }]
        augmentations = [{ name = "noise", std = 0.1 }, { name = "box_blur", sigma = 1, radius = 2, mode = "x" }]
        losses = [{ name = "primal", weight = "heavy" }]
        init = { name = "noise", spread = 1 }
        [retrain]
        seeds = 0
        retrainer = { name = "sam", rho = -1 }
        augmentations = [{ name = "flip", prob = 0.5 }]
        [guesses]
        teacher = { name = "sgd", momentum = "a lot" }
        """,
        plugins,
    )
    expected = {
        "train.retrainer.lrr: unknown key",
        "synthesis.priors[1].cutoff: must be > 0, got 0.0",
        "synthesis.priors[2].name: unknown prior 'tvv'; did you mean 'tv'?",
        "synthesis.augmentations[0].std: unknown key",
        "synthesis.augmentations[1].radius: unknown option of 'box_blur' (known: sigma, size)",
        "synthesis.augmentations[1].mode: unknown option of 'box_blur' (known: sigma, size)",
        'synthesis.losses[0].weight: expected a number, got "heavy"',
        "synthesis.init.spread: unknown key",
        "retrain.seeds: must be at least 1, got 0",
        "retrain.retrainer.rho: must be > 0.0, got -1.0",
        "retrain.augmentations[0].prob: unknown key",
        'guesses.teacher.momentum: expected a number, got "a lot"',
    }
    for line in expected:
        assert any(p.startswith(line) for p in found), (line, found)
    assert len(found) == len(expected), found


def test_a_failing_attrs_validator_names_the_key(plugins):
    assert problems('[synthesis]\npriors = [{ name = "tv" }, { name = "lowpass", cutoff = 0.0 }]', plugins) == [
        "synthesis.priors[1].cutoff: must be > 0, got 0.0"
    ]


def test_a_plugins_own_check_names_the_key(plugins):
    """A validator or ``__attrs_post_init__`` that raises "NAME must ..." is reported at NAME's key."""
    table = '[synthesis]\naugmentations = [{ name = "flip", p = 2.0 }, { name = "noise", strength = -1.0 }]'
    assert problems(table, plugins) == [
        "synthesis.augmentations[0].p: must be within [0, 1], got 2.0",
        "synthesis.augmentations[1].strength: must be >= 0, got -1.0",
    ]


def test_plugin_problems_are_reported_beside_a_stage_table_that_does_not_structure(plugins):
    found = problems(
        '[synthesis]\npriors = [{ name = "lowpass", cutoff = -1.0 }]\n[retrain]\nseeds = "three"\n',
        plugins,
    )
    assert found == [
        'retrain.seeds: expected an integer, got "three"',
        "synthesis.priors[0].cutoff: must be > 0, got -1.0",
    ]


def test_a_good_file_has_no_problems(plugins):
    text = HEAD + '[synthesis]\npriors = [{ name = "lowpass", cutoff = 0.2 }]\naugmentations = ["box_blur"]\n'
    loaded = load_pipeline_text(textwrap.dedent(text), source="x.toml", plugins=plugins)
    assert loaded.config.synthesis.priors[0].options == {"cutoff": 0.2}


def test_plugin_option_problems_stop_the_cli_before_the_train_stage_runs(tmp_path, capsys):
    cache = tmp_path / "cache"
    store = tmp_path / "run.zarr"
    path = tmp_path / "bad.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [run]
            stages = ["train", "synthesize"]
            store = "{store.as_posix()}"
            [data]
            name = "digits"
            [model]
            source = "convnet"
            options = {{ width = 4, depth = 1 }}
            [train]
            retrainer = {{ name = "adam", epochs = 1 }}
            cache_dir = "{cache.as_posix()}"
            [synthesis]
            priors = [{{ name = "range", low = "zero" }}, {{ name = "norm", p = 2 }}]
            augmentations = [{{ name = "flip", p = 1.5 }}]
            """
        )
    )
    assert cli.main(["run", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert 'synthesis.priors[0].low: expected a number, got "zero"' in err
    assert "synthesis.priors[1].p: unknown key" in err
    assert "synthesis.augmentations[0]" in err and "Traceback" not in err
    assert not cache.exists() and not store.exists()  # the train stage never ran


def test_the_api_reports_every_bad_plugin_table_at_once(plugins):
    import torch

    import dsv

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with pytest.raises(ConfigError) as info:
        dsv.synthesize(
            model,
            targets=[0, 1],
            input_shape=(1, 8, 8),
            iterations=1,
            priors=[{"name": "lowpass", "cutoff": 0.0}, {"name": "tv", "wieght": 1}],
            augmentations=[{"name": "box_blur", "radius": 2}],
            plugins=plugins,
        )
    lines = str(info.value).splitlines()
    assert lines[0].endswith("synthesis.priors[0].cutoff: must be > 0, got 0.0")
    assert "synthesis.priors[1].wieght: unknown key" in lines[1]
    assert "synthesis.augmentations[0].radius: unknown option of 'box_blur'" in lines[2]
    assert len(lines) == 3


@attrs.define(kw_only=True)
class FreqPenalty:
    """A ready-made prior whose class name is not its registered name."""

    weight: float = 0.1

    def __call__(self, x):
        return x.pow(2).mean()


@attrs.define(kw_only=True)
class Named:
    weight: float = 0.1
    name: str = "my_penalty"

    def __call__(self, x):
        return x.abs().mean()


def test_a_ready_made_term_is_recorded_under_its_registered_or_own_name(tmp_path):
    import torch

    import dsv

    pm = DsvPluginManager(load_entry_points=False)
    pm.register(
        plugin_module("freq", dsv_register_priors=lambda registry: registry.add("freq_penalty", FreqPenalty)), "freq"
    )
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    result = dsv.synthesize(
        model,
        targets=[0, 1],
        input_shape=(1, 8, 8),
        input_range=(0.0, 1.0),
        iterations=2,
        priors=[FreqPenalty(), Named(), FreqPenalty(weight=0.2)],
        plugins=pm,
        store=tmp_path / "s.zarr",
        progress=False,
    )
    assert {"freq_penalty", "my_penalty", "freq_penalty2"} <= set(result.history)
    from dsv.store import RunStore

    names = [p["name"] for p in RunStore.open(tmp_path / "s.zarr").meta["config"]["synthesis"]["priors"]]
    assert names == ["freq_penalty", "my_penalty", "freq_penalty"]
