"""Plugin manager and registries: built-ins, third-party plugins, lifecycle hooks."""

from __future__ import annotations

import importlib.metadata
import sys
import types

import attrs
import pytest
import torch
from torch import nn

from dsv import config as cfg
from dsv import plugins as dsv_plugins
from dsv.builtin.models import LoadedModel, ModelRequest
from dsv.engine import build_engine
from dsv.plugins import KINDS, DsvPluginManager, PluginError, Registry, UnknownNameError, get_plugin_manager

from conftest import plugin_module

BUILTIN_NAMES = {
    "losses": {"primal", "stationarity"},
    "priors": {"tv", "norm"},
    "augmentations": {"flip", "translate", "crop", "cutout", "noise"},
    "initializers": {"noise", "real"},
    "retrainers": {"adam", "sgd"},
    "models": {"convnet", "efficientnet-lite0", "efficientnet-lite2", "torchvision:", "module:"},
    "datasets": {"fashion-mnist", "digits", "cifar10", "cifar100", "svhn", "imagefolder"},
}


@attrs.define(kw_only=True)
class Sharpness:
    """A third-party prior: mean |x|."""

    weight: float = 1.0
    power: int = 1

    def __call__(self, x):
        return x.abs().pow(self.power).mean()


@pytest.fixture
def fake_entry_points(monkeypatch):
    """Install modules as entry points of group ``dsv`` (the real third-party loading path)."""

    def install(**plugins):
        eps = []
        for ep_name, module in plugins.items():
            if isinstance(module, str):  # an import path that does not exist: a broken plugin
                eps.append(importlib.metadata.EntryPoint(name=ep_name, value=module, group="dsv"))
                continue
            monkeypatch.setitem(sys.modules, module.__name__, module)
            eps.append(importlib.metadata.EntryPoint(name=ep_name, value=module.__name__, group="dsv"))
        original = importlib.metadata.entry_points

        def entry_points(**kwargs):
            if kwargs.get("group") == dsv_plugins.ENTRY_POINT_GROUP:
                return eps
            return original(**kwargs)

        monkeypatch.setattr(dsv_plugins.importlib.metadata, "entry_points", entry_points)

    return install


# --------------------------------------------------------------------------------------------------
# built-ins and registries
# --------------------------------------------------------------------------------------------------


def test_every_builtin_kind_has_its_names():
    pm = get_plugin_manager()
    assert set(pm.registries) == set(KINDS) == set(BUILTIN_NAMES)
    for kind, names in BUILTIN_NAMES.items():
        registry = pm.registry(kind)
        assert names <= set(registry.names()), kind
        for entry in registry.entries():
            if entry.name in names:
                assert entry.plugin == f"dsv.builtin.{kind} (built-in)"
                assert callable(entry.factory)
    plugin_names = {info.name for info in pm.plugins()}
    assert {f"dsv.builtin.{kind}" for kind in KINDS} <= plugin_names


def test_get_plugin_manager_is_built_once_per_disabled_set():
    assert get_plugin_manager() is get_plugin_manager()
    without_priors = get_plugin_manager(["dsv.builtin.priors"])
    assert without_priors is not get_plugin_manager()
    assert without_priors.registry("priors").names() == []
    assert "tv" in get_plugin_manager().registry("priors")


def test_builtin_factories_build_working_objects():
    pm = get_plugin_manager()
    x = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])
    tv = cfg.build(cfg.PluginSpec(name="tv", options={"weight": 0.5}), pm.registry("priors"), source="s", path="p")
    assert tv.weight == 0.5 and tv(x).item() == pytest.approx(2.0)
    flip = cfg.build(cfg.PluginSpec(name="flip", options={"p": 1.0}), pm.registry("augmentations"),
                     source="s", path="p")
    assert torch.equal(flip(x), x.flip(-1))


def test_duplicate_name_names_both_plugins():
    def dsv_register_priors(registry):
        registry.add("tv", Sharpness)

    pm = DsvPluginManager(load_entry_points=False)
    with pytest.raises(PluginError) as info:
        pm.register(plugin_module("dup_prior", dsv_register_priors=dsv_register_priors), "dup_prior")
    message = str(info.value)
    assert "priors name 'tv' registered twice" in message
    assert "dsv.builtin.priors (built-in)" in message
    assert "plugin 'dup_prior'" in message


def test_registry_rejects_empty_names():
    registry = Registry("priors")
    with pytest.raises(PluginError, match="non-empty strings"):
        registry.add("", Sharpness)


def test_unknown_name_lists_the_known_ones_and_suggests_close_ones():
    registry = get_plugin_manager().registry("augmentations")
    with pytest.raises(UnknownNameError) as info:
        registry.get("flipp")
    message = str(info.value)
    assert message.startswith("unknown augmentation 'flipp'; did you mean 'flip'?")
    assert "(known: crop, cutout, flip, noise, translate)" in message
    with pytest.raises(UnknownNameError) as info:
        registry.get("zzzzzz")
    assert "did you mean" not in str(info.value) and "known: crop" in str(info.value)
    assert isinstance(info.value, KeyError)
    assert "flip" in registry and "flipp" not in registry


def test_prefix_entries_resolve_with_the_rest_of_the_name():
    models = get_plugin_manager().registry("models")
    entry, rest = models.split("torchvision:resnet18")
    assert entry.name == "torchvision:" and rest == "resnet18"
    entry, rest = models.split("module:my_pkg.nets:make")
    assert entry.name == "module:" and rest == "my_pkg.nets:make"
    entry, rest = models.split("convnet")
    assert entry.name == "convnet" and rest is None
    assert "torchvision:anything" in models
    with pytest.raises(UnknownNameError, match="unknown model 'torchvisio:resnet18'"):
        models.split("torchvisio:resnet18")


def test_module_prefix_builds_a_users_model(monkeypatch, digits_bundle):
    user = types.ModuleType("dsv_test_user_models")
    user.make = lambda hidden=4: nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    monkeypatch.setitem(sys.modules, user.__name__, user)
    spec = cfg.PluginSpec(name="module:dsv_test_user_models:make", options={"kwargs": {"hidden": 3}})
    loaded = cfg.build(spec, get_plugin_manager().registry("models"), source="s", path="model",
                       request=ModelRequest(data=digits_bundle))
    assert isinstance(loaded, LoadedModel)
    assert loaded.trainable and not loaded.module.training
    assert loaded.module[1].out_features == 3
    assert (loaded.spec.channels, loaded.spec.size, loaded.spec.num_classes) == (1, 8, 10)


# --------------------------------------------------------------------------------------------------
# third-party plugins
# --------------------------------------------------------------------------------------------------


def _sharpness_plugin(name="dsv_test_sharpness"):
    def dsv_register_priors(registry):
        registry.add("sharpness", Sharpness)

    return plugin_module(name, dsv_register_priors=dsv_register_priors)


def test_a_plugin_registered_on_a_manager_adds_a_prior():
    pm = DsvPluginManager(load_entry_points=False)
    assert "sharpness" not in pm.registry("priors")
    pm.register(_sharpness_plugin(), "sharpness_plugin")
    registry = pm.registry("priors")
    assert registry.names() == ["norm", "sharpness", "tv"]
    assert registry.split("sharpness")[0].plugin.startswith("plugin 'sharpness_plugin'")
    prior = cfg.build(cfg.PluginSpec(name="sharpness", options={"weight": 0.1, "power": 2}), registry,
                      source="s", path="synthesis.priors[0]")
    assert prior.weight == 0.1
    assert prior(torch.tensor([1.0, -3.0])).item() == pytest.approx(5.0)
    with pytest.raises(Exception, match=r"synthesis\.priors\[0\]\.power: expected an integer"):
        cfg.build(cfg.PluginSpec(name="sharpness", options={"power": 1.5}), registry, source="s",
                  path="synthesis.priors[0]")


def test_entry_point_plugins_load_and_can_be_disabled(fake_entry_points):
    fake_entry_points(sharp=_sharpness_plugin())
    pm = DsvPluginManager()
    assert "sharpness" in pm.registry("priors")
    assert "sharp" in {info.name for info in pm.plugins()}
    assert "sharpness" not in DsvPluginManager(disabled=["sharp"]).registry("priors")


def test_a_plugin_can_replace_a_disabled_builtin(fake_entry_points):
    def dsv_register_priors(registry):
        registry.add("tv", Sharpness)

    fake_entry_points(mytv=plugin_module("dsv_test_mytv", dsv_register_priors=dsv_register_priors))
    with pytest.raises(PluginError, match="registered twice"):
        DsvPluginManager()
    pm = DsvPluginManager(disabled=["dsv.builtin.priors"])
    assert pm.registry("priors").get("tv") is Sharpness


def test_a_broken_plugin_is_named_with_the_way_to_skip_it(fake_entry_points):
    fake_entry_points(broken="dsv_test_no_such_module_xyz")
    with pytest.raises(PluginError) as info:
        DsvPluginManager()
    message = str(info.value)
    assert "plugin 'broken'" in message and "failed to load" in message
    assert "ModuleNotFoundError" in message
    assert "--disable-plugin broken" in message
    assert "tv" in DsvPluginManager(disabled=["broken"]).registry("priors")


def test_a_plugin_raising_in_a_registration_hook_is_named():
    def dsv_register_priors(registry):
        raise RuntimeError("boom at registration")

    pm = DsvPluginManager(load_entry_points=False)
    with pytest.raises(PluginError) as info:
        pm.register(plugin_module("m", dsv_register_priors=dsv_register_priors), "exploding")
    message = str(info.value)
    assert "plugin 'exploding'" in message and "dsv_register_priors" in message
    assert "RuntimeError: boom at registration" in message
    assert "--disable-plugin exploding" in message


# --------------------------------------------------------------------------------------------------
# lifecycle hooks
# --------------------------------------------------------------------------------------------------


def test_iteration_completed_returning_true_stops_the_run(make_run):
    seen = []

    def dsv_iteration_completed(run, iteration, metrics):
        seen.append((iteration, sorted(metrics)))
        return iteration == 7

    pm = DsvPluginManager(load_entry_points=False)
    pm.register(plugin_module("stopper", dsv_iteration_completed=dsv_iteration_completed), "stopper")
    run = make_run(hooks=pm, iterations=20)
    engine = build_engine(run)
    engine.run(data=None, max_epochs=1, epoch_length=20)
    assert engine.state.iteration == 7
    assert [i for i, _ in seen] == list(range(1, 8))
    assert {"primal", "stationarity", "total", "entropy", "accuracy", "alive"} <= set(seen[0][1])
    assert run.committed_iteration == 7  # the final write happened at the stop


def test_a_plugin_raising_in_a_lifecycle_hook_is_named(make_run):
    def dsv_iteration_completed(run, iteration, metrics):
        if iteration == 3:
            raise ValueError("logger lost its connection")

    pm = DsvPluginManager(load_entry_points=False)
    pm.register(plugin_module("bad_logger", dsv_iteration_completed=dsv_iteration_completed), "bad_logger")
    run = make_run(hooks=pm, iterations=10)
    with pytest.raises(PluginError) as info:
        build_engine(run).run(data=None, max_epochs=1, epoch_length=10)
    message = str(info.value)
    assert "plugin 'bad_logger'" in message
    assert "raised in dsv_iteration_completed" in message
    assert "ValueError: logger lost its connection" in message
    assert "--disable-plugin bad_logger" in message


def test_call_lifecycle_passes_only_the_arguments_a_hook_takes():
    calls = []

    def dsv_candidate_pruned(indices):
        calls.append(indices)

    pm = DsvPluginManager(load_entry_points=False)
    pm.register(plugin_module("p", dsv_candidate_pruned=dsv_candidate_pruned), "pruned_logger")
    assert pm.call_lifecycle("dsv_candidate_pruned", run=None, indices=[2, 5], iteration=4) == [None]
    assert calls == [[2, 5]]
