"""The plugins' own tables ([plugins.<name>]): checked when the file loads with every other
problem, structured into the class the plugin registered, handed to the lifecycle hooks as
``run.plugin_options``, left out of the config hash."""

from __future__ import annotations

import textwrap

import attrs
import pytest
import torch
from conftest import plugin_module

import dsv
from dsv import config as cfg
from dsv.errors import ConfigError
from dsv.pipeline import load_pipeline_text
from dsv.plugins import DsvPluginManager


@attrs.define(kw_only=True)
class WatchOptions:
    every: int = attrs.field(default=10, validator=attrs.validators.ge(1))
    label: str = "watch"


@attrs.define(kw_only=True)
class NeedsPath:
    path: str  # required: the plugin is configured only when the file has its table


class Watcher:
    """A lifecycle plugin that records the options it was given at every iteration."""

    def __init__(self):
        self.seen: list[tuple[int, WatchOptions]] = []

    @staticmethod
    def dsv_register_plugin_options(registry):
        registry.add("watch", WatchOptions)
        registry.add("needs_path", NeedsPath)

    def dsv_iteration_completed(self, run, iteration):
        options = run.plugin_options["watch"]
        if iteration % options.every == 0:
            self.seen.append((iteration, options))


@pytest.fixture
def watcher() -> tuple[DsvPluginManager, Watcher]:
    watcher = Watcher()
    module = plugin_module(
        "watcher",
        dsv_register_plugin_options=Watcher.dsv_register_plugin_options,
        dsv_iteration_completed=lambda run, iteration: watcher.dsv_iteration_completed(run, iteration),
    )
    pm = DsvPluginManager(load_entry_points=False)
    pm.register(module, "watcher")
    return pm, watcher


HEAD = """
[run]
stages = ["synthesize"]
[model]
source = "convnet"
"""


def load(text: str, pm: DsvPluginManager) -> cfg.LoadedPipeline:
    return load_pipeline_text(textwrap.dedent(HEAD + text), source="x.toml", plugins=pm)


def test_plugin_tables_are_checked_with_every_other_problem_of_the_file(watcher):
    pm, _ = watcher
    with pytest.raises(ConfigError) as info:
        load(
            """
            [synthesis]
            iterations = 0
            [plugins.watch]
            every = 0
            [plugins.wacth]
            every = 2
            """,
            pm,
        )
    lines = sorted(line.removeprefix("x.toml: ") for line in str(info.value).splitlines())
    assert lines == [
        "plugins.wacth: unknown plugin options 'wacth'; did you mean 'watch'? (known: needs_path, watch)",
        "plugins.watch.every: must be >= 1, got 0",
        "synthesis.iterations: must be at least 1, got 0",
    ]
    with pytest.raises(ConfigError, match=r"x\.toml: plugins\.watch\.lable: unknown key \(known: every, label\)"):
        load('[plugins.watch]\nlable = "x"\n', pm)
    with pytest.raises(ConfigError, match=r"x\.toml: plugins: expected a table of \[plugins\.<name>\] tables, got 3"):
        raw = {"model": {"source": "convnet"}, "plugins": 3}
        cfg.from_dict(raw, source="x.toml", plugin_options=pm.registry("plugin_options"))


def test_a_plugins_table_is_structured_into_its_class_and_defaults_fill_the_rest(watcher):
    pm, _ = watcher
    loaded = load("[plugins.watch]\nevery = 3\n", pm)
    assert loaded.config.plugin_options == {"watch": WatchOptions(every=3)}  # needs_path has a required key
    assert load("", pm).config.plugin_options == {"watch": WatchOptions()}
    with_path = load('[plugins.needs_path]\npath = "a.txt"\n', pm).config.plugin_options
    assert with_path["needs_path"] == NeedsPath(path="a.txt")
    with pytest.raises(ConfigError, match=r"x\.toml: plugins\.needs_path\.path: required key missing"):
        load("[plugins.needs_path]\n", pm)


def test_without_a_plugin_that_registers_options_a_plugins_table_is_an_error():
    pm = DsvPluginManager(load_entry_points=False)
    with pytest.raises(ConfigError, match=r"plugins\.watch: unknown plugin options 'watch' \(known: none\)"):
        load("[plugins.watch]\nevery = 3\n", pm)


def test_plugin_options_are_left_out_of_the_config_hash(watcher):
    pm, _ = watcher
    base = load("", pm)
    assert load("[plugins.watch]\nevery = 7\n", pm).config_hash == base.config_hash
    assert load("[synthesis]\niterations = 7\n", pm).config_hash != base.config_hash


def test_the_hooks_receive_the_options_of_the_api_call(watcher, tmp_path):
    pm, seen = watcher
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    result = dsv.synthesize(
        model,
        targets=[0, 1],
        input_shape=(1, 8, 8),
        input_range=(0.0, 1.0),
        iterations=6,
        plugins=pm,
        plugin_options={"watch": {"every": 2, "label": "api"}},
        store=tmp_path / "s.zarr",
        progress=False,
    )
    assert [i for i, _ in seen.seen] == [2, 4, 6]
    assert seen.seen[0][1] == WatchOptions(every=2, label="api")
    stored = dsv.open_store(result.store)
    from dsv.store import RunStore

    assert RunStore.open(stored.store).meta["config"]["plugins"] == {"watch": {"every": 2, "label": "api"}}
    with pytest.raises(ConfigError, match=r"dsv\.synthesize: plugins\.watch\.every: must be >= 1, got 0"):
        dsv.synthesize(
            model,
            targets=[0],
            input_shape=(1, 8, 8),
            input_range=(0.0, 1.0),
            iterations=1,
            plugins=pm,
            plugin_options={"watch": {"every": 0}},
            progress=False,
        )
