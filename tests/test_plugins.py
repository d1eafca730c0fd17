"""Plugin manager and registries: built-ins, third-party plugins, lifecycle hooks."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import sys
import textwrap
import types

import attrs
import pytest
import torch
from conftest import REPO_ROOT, plugin_module
from torch import nn

from dsv import cli
from dsv import config as cfg
from dsv import plugins as dsv_plugins
from dsv.builtin.models import LoadedModel, ModelRequest
from dsv.pipeline import Pipeline
from dsv.plugins import KINDS, DsvPluginManager, PluginError, Registry, UnknownNameError, get_plugin_manager, hookimpl
from dsv.store import RunStore
from dsv.synthesis.engine import build_engine

BUILTIN_NAMES = {
    "losses": {"primal", "stationarity"},
    "priors": {"tv", "norm"},
    "augmentations": {"flip", "translate", "crop", "cutout", "noise", "blur"},
    "initializers": {"noise", "real"},
    "retrainers": {"adam", "sgd"},
    "models": {
        "convnet",
        "efficientnet-lite0",
        "efficientnet-lite1",
        "efficientnet-lite2",
        "torchvision:",
        "timm:",
        "module:",
    },
    "datasets": {"fashion-mnist", "digits", "cifar10", "cifar100", "svhn", "imagefolder"},
    "stages": {
        "train",
        "synthesize",
        "select",
        "retrain",
        "evaluate",
        "analyse",
        "interpolate",
        "edit",
        "export",
        "report",
    },
}


@attrs.define(kw_only=True)
class Sharpness:
    """A third-party prior: mean |x|."""

    weight: float = 1.0
    power: int = 1

    def __call__(self, x):
        return x.abs().pow(self.power).mean()


@pytest.fixture
def fake_distribution(tmp_path, monkeypatch):
    """Install a distribution the way pip leaves one: a module and a ``.dist-info`` folder with
    METADATA and entry_points.txt on sys.path. dsv then discovers it through importlib.metadata.

    ``install(dist, version, {module: source}, {entry point name: module})``. Process-wide plugin
    managers are rebuilt, so ``dsv-pipeline`` sees the distribution.
    """
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(dsv_plugins.manager, "_DEFAULT", {})
    modules = []

    def install(dist: str, version: str, sources: dict[str, str], entry_points: dict[str, str]) -> None:
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
        (info / "entry_points.txt").write_text(f"[dsv]\n{lines}")
        for module, source in sources.items():
            (site / f"{module}.py").write_text(textwrap.dedent(source))
            modules.append(module)
        importlib.invalidate_caches()

    yield install
    for module in modules:
        sys.modules.pop(module, None)


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

        monkeypatch.setattr(dsv_plugins.manager.importlib.metadata, "entry_points", entry_points)

    return install


# --------------------------------------------------------------------------------------------------
# built-ins and registries
# --------------------------------------------------------------------------------------------------


def test_every_builtin_kind_has_its_names():
    pm = get_plugin_manager()
    # every kind has built-in names, but the plugins' own option tables (only third parties have them)
    assert set(pm.registries) == set(KINDS) == {*BUILTIN_NAMES, "plugin_options"}
    for kind, names in BUILTIN_NAMES.items():
        registry = pm.registry(kind)
        assert names <= set(registry.names()), kind
        for entry in registry.entries():
            if entry.name in names:
                assert entry.plugin == f"dsv.builtin.{kind} (built-in)"
                assert callable(entry.factory.run if kind == "stages" else entry.factory)
    plugin_names = {info.name for info in pm.plugins()}
    assert {f"dsv.builtin.{kind}" for kind in BUILTIN_NAMES} <= plugin_names


def test_get_plugin_manager_is_built_once_per_disabled_set():
    assert get_plugin_manager() is get_plugin_manager()
    without_priors = get_plugin_manager(["dsv.builtin.priors"])
    assert without_priors is not get_plugin_manager()
    assert not {"tv", "norm"} & set(without_priors.registry("priors").names())  # installed plugins may add some
    assert "tv" in get_plugin_manager().registry("priors")


def test_builtin_factories_build_working_objects():
    pm = get_plugin_manager()
    x = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])
    tv = cfg.build(cfg.PluginSpec(name="tv", options={"weight": 0.5}), pm.registry("priors"), source="s", path="p")
    assert tv.weight == 0.5 and tv(x).item() == pytest.approx(2.0)
    flip = cfg.build(
        cfg.PluginSpec(name="flip", options={"p": 1.0}), pm.registry("augmentations"), source="s", path="p"
    )
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
    assert message.endswith("(disable one of them: --disable-plugin dsv.builtin.priors or --disable-plugin dup_prior)")


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
    assert "(known: blur, crop, cutout, flip, jitter, noise, translate)" in message
    with pytest.raises(UnknownNameError) as info:
        registry.get("zzzzzz")
    assert "did you mean" not in str(info.value) and "known: blur, crop" in str(info.value)
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
    loaded = cfg.build(
        spec,
        get_plugin_manager().registry("models"),
        source="s",
        path="model",
        request=ModelRequest(data=digits_bundle),
    )
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
    assert registry.names() == ["norm", "range", "sharpness", "tv"]
    assert registry.split("sharpness")[0].plugin.startswith("plugin 'sharpness_plugin'")
    prior = cfg.build(
        cfg.PluginSpec(name="sharpness", options={"weight": 0.1, "power": 2}),
        registry,
        source="s",
        path="synthesis.priors[0]",
    )
    assert prior.weight == 0.1
    assert prior(torch.tensor([1.0, -3.0])).item() == pytest.approx(5.0)
    with pytest.raises(Exception, match=r"synthesis\.priors\[0\]\.power: expected an integer"):
        cfg.build(
            cfg.PluginSpec(name="sharpness", options={"power": 1.5}), registry, source="s", path="synthesis.priors[0]"
        )


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
    assert (
        pm.call_lifecycle("dsv_candidate_pruned", run=None, indices=[2, 5], iteration=4) == []
    )  # pluggy: non-None results
    assert calls == [[2, 5]]


# --------------------------------------------------------------------------------------------------
# installed distributions through dsv-pipeline: listing, clashes, broken plugins, failures in runs
# --------------------------------------------------------------------------------------------------

SHARP_SOURCE = """
    import attrs
    from dsv.plugins import hookimpl

    @attrs.define(kw_only=True)
    class Sharp:
        weight: float = 1.0
        fail_at: int = 0  # raise on this call (0: never)
        calls: int = attrs.field(default=0, init=False)

        def __call__(self, x):
            self.calls += 1
            if self.calls == self.fail_at:
                raise RuntimeError("sharp cannot handle these candidates")
            return x.abs().mean()

    @hookimpl
    def dsv_register_priors(registry):
        registry.add("sharp", Sharp)
"""


# a few synthesis iterations of a small ConvNet trained one epoch on digits (weights cached in models_dir)
TINY_SYNTHESIS = {"iterations": 6, "lambda_warmup": 2, "checkpoint_every": 4, "priors": []}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


def test_plugins_command_shows_each_distribution_its_names_and_hooks(fake_distribution, capsys):
    logger = """
        from dsv.plugins import hookimpl

        @hookimpl
        def dsv_iteration_completed(run, iteration, metrics):
            return None

        @hookimpl
        def dsv_run_finished(run, summary):
            pass
    """
    fake_distribution("dsv-sharp", "1.2.3", {"dsv_sharp": SHARP_SOURCE}, {"sharp": "dsv_sharp"})
    fake_distribution("dsv-log", "0.4", {"dsv_log": logger}, {"log": "dsv_log"})
    assert cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "sharp  [dsv-sharp 1.2.3]\n    priors: sharp\n    hooks: dsv_register_priors\n" in out
    assert "log  [dsv-log 0.4]\n    hooks: dsv_iteration_completed, dsv_run_finished\n" in out
    assert "dsv.builtin.priors  [dsv " in out and "    priors: norm, range, tv\n" in out
    assert "  sharp                  plugin 'sharp' (dsv-sharp 1.2.3)" in out.splitlines()
    assert "plugin_options: none" in out.splitlines()  # no plugin registers options: said, not a bare header
    assert cli.main(["plugins", "--disable-plugin", "sharp"]) == 0
    out = capsys.readouterr().out
    assert "[dsv-sharp" not in out and "disabled: sharp" in out and "log  [dsv-log 0.4]" in out


def test_disabling_an_unknown_plugin_is_an_error_listing_the_plugins(fake_distribution, capsys):
    fake_distribution("dsv-sharp", "1.2.3", {"dsv_sharp": SHARP_SOURCE}, {"sharp": "dsv_sharp"})
    assert cli.main(["plugins", "--disable-plugin", "sharpp"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dsv-pipeline: error: --disable-plugin sharpp: no plugin of that name")
    assert "dsv.builtin.priors" in err and "sharp" in err


def test_a_duplicate_name_from_a_distribution_is_named_on_the_command_line(fake_distribution, capsys):
    fake_distribution("dsv-sharp", "1.2.3", {"dsv_sharp": SHARP_SOURCE}, {"sharp": "dsv_sharp"})
    fake_distribution("dsv-sharp-fork", "0.9", {"dsv_sharp_fork": SHARP_SOURCE}, {"sharp-fork": "dsv_sharp_fork"})
    assert cli.main(["plugins"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "priors name 'sharp' registered twice" in err
    assert "plugin 'sharp' (dsv-sharp 1.2.3)" in err and "plugin 'sharp-fork' (dsv-sharp-fork 0.9)" in err
    assert "(disable one of them: --disable-plugin sharp" in err and "--disable-plugin sharp-fork" in err
    assert cli.main(["plugins", "--disable-plugin", "sharp-fork"]) == 0


def test_a_distribution_that_fails_to_import_is_named_and_can_be_skipped(
    fake_distribution, capsys, tmp_path, models_dir, write_pipeline
):
    broken = """
        import dsv_missing_dependency_xyz
    """
    fake_distribution("dsv-broken", "2.0", {"dsv_broken": broken}, {"broken": "dsv_broken"})
    path = write_pipeline(
        tmp_path / "tiny.toml",
        name="tiny",
        store=tmp_path / "tiny.zarr",
        models=models_dir,
        synthesis={**TINY_SYNTHESIS, "iterations": 2},
    )
    assert cli.main(["run", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "plugin 'broken' from distribution dsv-broken 2.0 failed to load" in err
    assert "ModuleNotFoundError" in err and "--disable-plugin broken" in err
    assert cli.main(["run", str(path), "--no-progress", "--disable-plugin", "broken"]) == 0


def test_a_prior_raising_during_a_run_names_its_distribution(
    fake_distribution, capsys, tmp_path, models_dir, write_pipeline
):
    fake_distribution("dsv-sharp", "1.2.3", {"dsv_sharp": SHARP_SOURCE}, {"sharp": "dsv_sharp"})
    path = write_pipeline(
        tmp_path / "tiny.toml",
        name="tiny",
        store=tmp_path / "tiny.zarr",
        models=models_dir,
        synthesis={**TINY_SYNTHESIS, "priors": [{"name": "sharp", "weight": 0.1, "fail_at": 3}]},
    )
    assert cli.main(["run", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith(
        "dsv-pipeline: error: plugin 'sharp' (dsv-sharp 1.2.3) raised RuntimeError: "
        "sharp cannot handle these candidates"
    )
    assert "dsv_sharp.py:" in err and "in __call__" in err and "--disable-plugin sharp" in err
    assert RunStore.open(tmp_path / "tiny.zarr").meta["committed_iteration"] == 2  # the store kept the rest


def test_a_lifecycle_hook_raising_during_a_run_names_its_distribution(
    fake_distribution, capsys, tmp_path, models_dir, write_pipeline
):
    flaky = """
        from dsv.plugins import hookimpl

        @hookimpl
        def dsv_iteration_completed(iteration):
            if iteration == 4:
                raise ConnectionError("dashboard unreachable")
    """
    fake_distribution("dsv-dashboard", "3.1", {"dsv_dashboard": flaky}, {"dashboard": "dsv_dashboard"})
    path = write_pipeline(
        tmp_path / "tiny.toml", name="tiny", store=tmp_path / "tiny.zarr", models=models_dir, synthesis=TINY_SYNTHESIS
    )
    assert cli.main(["run", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "plugin 'dashboard' (dsv-dashboard 3.1) raised in dsv_iteration_completed" in err
    assert "ConnectionError: dashboard unreachable" in err and "--disable-plugin dashboard" in err
    assert cli.main(["run", str(path), "--no-progress", "--fresh", "--disable-plugin", "dashboard"]) == 0


def test_an_error_in_dsv_itself_keeps_its_traceback(fake_distribution, monkeypatch):
    fake_distribution("dsv-sharp", "1.2.3", {"dsv_sharp": SHARP_SOURCE}, {"sharp": "dsv_sharp"})

    def broken_dsv_code(args):
        get_plugin_manager()
        raise ZeroDivisionError("a bug in dsv")

    monkeypatch.setitem(cli.COMMANDS, "plugins", broken_dsv_code)
    with pytest.raises(ZeroDivisionError):
        cli.main(["plugins"])


def test_every_lifecycle_hook_fires_in_a_pipeline_run_and_a_hook_can_stop_it(tmp_path, models_dir, write_pipeline):
    events = []

    def dsv_run_started(run):
        events.append(("started", run.committed_iteration, tuple(run.x.shape)))

    def dsv_iteration_completed(run, iteration, metrics):
        events.append(("iteration", iteration, metrics["alive"]))
        return iteration == 5  # ask for a stop

    def dsv_candidate_pruned(run, indices, iteration):
        events.append(("pruned", iteration, tuple(indices)))

    def dsv_run_finished(run, summary):
        events.append(("finished", summary["iterations"], summary["candidates"]))

    pm = DsvPluginManager(load_entry_points=False)
    pm.register(
        plugin_module(
            "recorder",
            dsv_run_started=dsv_run_started,
            dsv_iteration_completed=dsv_iteration_completed,
            dsv_candidate_pruned=dsv_candidate_pruned,
            dsv_run_finished=dsv_run_finished,
        ),
        "recorder",
    )
    # lambda_init tiny and lr_lambda large: lambdas cross 0 within a few iterations (pruning)
    overrides = ["synthesis.lambda_init=1e-4", "synthesis.lr_lambda=0.5", "synthesis.lambda_warmup=0"]
    path = write_pipeline(
        tmp_path / "tiny.toml",
        name="tiny",
        store=tmp_path / "tiny.zarr",
        models=models_dir,
        synthesis={**TINY_SYNTHESIS, "iterations": 20},
    )
    result = Pipeline.from_toml(path, overrides=overrides, plugins=pm, progress=False).run()
    assert events[0] == ("started", 0, (10, 1, 8, 8))
    assert [e[1] for e in events if e[0] == "iteration"] == [1, 2, 3, 4, 5]
    assert events[-1] == ("finished", 5, 10)
    pruned = [e for e in events if e[0] == "pruned"]
    assert pruned, "no candidate was pruned: the test needs one"
    alive_after = {e[1]: e[2] for e in events if e[0] == "iteration"}
    for _, iteration, indices in pruned:
        assert alive_after[iteration] <= 10 - len(indices)
    assert RunStore.open(result.store).meta["committed_iteration"] == 5


def test_an_unknown_loss_is_named_in_the_singular():
    with pytest.raises(UnknownNameError, match=r"unknown loss 'stationarty'.*did you mean 'stationarity'"):
        get_plugin_manager().registry("losses").get("stationarty")


# ---- hooks through pluggy, a misspelt hook, a third-party stage ---------------------------------


def test_a_wrapper_lifecycle_hook_wraps_the_others_and_does_not_stop_the_run(make_run):
    seen = []

    def dsv_iteration_completed(run, iteration, metrics):
        seen.append(("inner", iteration))
        return None

    def wrapping(run, iteration, metrics):  # pluggy's new-style wrapper: a generator
        seen.append(("before", iteration))
        results = yield
        seen.append(("after", iteration))
        return results

    wrapper = types.ModuleType("wrapping_logger")
    wrapper.dsv_iteration_completed = hookimpl(wrapper=True)(wrapping)
    wrapping.__name__ = "dsv_iteration_completed"
    pm = DsvPluginManager(load_entry_points=False)
    pm.register(plugin_module("inner_logger", dsv_iteration_completed=dsv_iteration_completed), "inner_logger")
    pm.register(wrapper, "wrapping_logger")
    run = make_run(hooks=pm, iterations=6)
    engine = build_engine(run)
    engine.run(data=None, max_epochs=1, epoch_length=6)
    assert engine.state.iteration == 6  # a wrapper's generator is not mistaken for a stop request
    assert seen[:3] == [("before", 1), ("inner", 1), ("after", 1)]
    assert len(seen) == 18


def test_a_misspelt_hook_is_an_error_naming_the_plugin_and_the_hook_meant():
    def dsv_register_prior(registry):  # the hook is dsv_register_priors
        registry.add("sharp", Sharpness)

    pm = DsvPluginManager(load_entry_points=False)
    with pytest.raises(PluginError) as info:
        pm.register(plugin_module("typo_plugin", dsv_register_prior=dsv_register_prior), "typo_plugin")
    message = str(info.value)
    assert "'typo_plugin'" in message and "'dsv_register_prior', which is no dsv hook" in message
    assert "did you mean dsv_register_priors" in message
    assert "typo_plugin" not in [name for name, _ in pm.pm.list_name_plugin()]  # the manager is as before
    assert "sharp" not in pm.registry("priors")


def test_a_misspelt_hook_of_an_installed_distribution_stops_the_cli_with_its_name(fake_distribution, capsys):
    fake_distribution(
        "dsv-typo",
        "0.2",
        {
            "dsv_typo": """
        from dsv.plugins import hookimpl

        @hookimpl
        def dsv_run_start(run):
            pass
        """
        },
        {"typo": "dsv_typo"},
    )
    assert cli.main(["plugins"]) == 2
    err = capsys.readouterr().err
    assert "plugin 'typo' (dsv-typo 0.2) implements 'dsv_run_start', which is no dsv hook" in err
    assert "did you mean dsv_run_started" in err and "--disable-plugin typo" in err
    assert cli.main(["plugins", "--disable-plugin", "typo"]) == 0


def guide_code(marker: str) -> str:
    """The Python block of docs/writing-plugins.md that starts with ``marker``."""
    text = (REPO_ROOT / "docs" / "writing-plugins.md").read_text()
    start = text.index(f"```python\n{marker}") + len("```python\n")
    return text[start : text.index("```", start)]


def test_the_stage_of_the_guide_runs_from_a_pipeline_file(
    fake_distribution, tmp_path, models_dir, write_pipeline, capsys
):
    fake_distribution(
        "dsv-predictions-csv",
        "0.1.0",
        {"dsv_predictions_csv": guide_code("# dsv_predictions_csv.py")},
        {"predictions-csv": "dsv_predictions_csv"},
    )
    tiny = dict(
        name="tiny", store=tmp_path / "tiny.zarr", models=models_dir, synthesis={**TINY_SYNTHESIS, "iterations": 3}
    )
    stages = ("predictions_csv", "train", "synthesize")
    path = write_pipeline(
        tmp_path / "tiny.toml", **tiny, stages=stages, tables={"predictions_csv": {"top": 2, "file": "guesses.csv"}}
    )
    assert cli.main(["run", str(path), "--no-progress", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = (tmp_path / "tiny.zarr" / "exports" / "guesses.csv").read_text().splitlines()
    assert rows[0] == "candidate,target,lambda,alive,top1,top2"
    assert len(rows) == 11  # 10 digits classes, one candidate each
    assert out["summary"]["predictions_csv"]["rows"] == 10  # its result, as show --json lists it
    assert out["exports"] == [str(tmp_path / "tiny.zarr" / "exports" / "guesses.csv")]
    # its table is checked like any other, before any stage runs
    write_pipeline(path, **tiny, stages=stages, tables={"predictions_csv": {"top": 0}})
    assert cli.main(["run", str(path), "--no-progress", "--fresh"]) == 2
    assert "predictions_csv.top" in capsys.readouterr().err
    write_pipeline(path, **tiny, stages=("predictions_cvs", "train", "synthesize"))
    assert cli.main(["run", str(path), "--no-progress", "--fresh"]) == 2
    assert "unknown stage 'predictions_cvs'" in capsys.readouterr().err


def test_a_registered_stage_that_is_no_stage_is_named():
    def dsv_register_stages(registry):
        registry.add("not_a_stage", lambda context, store: [])

    pm = DsvPluginManager(load_entry_points=False)
    pm.register(plugin_module("loose", dsv_register_stages=dsv_register_stages), "loose")
    with pytest.raises(PluginError, match=r"plugin 'loose' .* registered stage 'not_a_stage' as function"):
        Pipeline.from_toml(REPO_ROOT / "pipelines" / "fashion_mnist_dsv.toml", plugins=pm)


def test_a_plugin_that_fails_to_import_names_its_file_and_line_and_is_listed_as_broken(
    fake_entry_points, tmp_path, monkeypatch, capsys
):
    source = tmp_path / "dsv_test_crashing_plugin.py"
    source.write_text("import math\n\nVALUE = math.sqrt(4)\nraise RuntimeError('no GPU library here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    fake_entry_points(crashing="dsv_test_crashing_plugin")
    with pytest.raises(PluginError) as info:
        DsvPluginManager()
    message = str(info.value)
    assert f"failed to load at {source}:4: RuntimeError: no GPU library here" in message
    assert "--disable-plugin crashing" in message and "DsvPluginManager(disabled=['crashing'])" in message
    # `dsv-pipeline plugins` lists it as broken instead of stopping
    monkeypatch.setattr(dsv_plugins.manager, "_DEFAULT", {})
    assert cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "crashing  [BROKEN, not loaded]" in out and f"{source}:4" in out
    assert "dsv.builtin.priors" in out  # every other plugin is still listed


def test_an_unknown_name_that_a_disabled_plugin_provides_says_so(fake_entry_points):
    def dsv_register_priors(registry):
        registry.add("freq_penalty", Sharpness)

    fake_entry_points(freq=plugin_module("dsv_test_freq", dsv_register_priors=dsv_register_priors))
    pm = DsvPluginManager(disabled=["freq"])
    with pytest.raises(UnknownNameError) as info:
        pm.registry("priors").get("freq_penalty")
    assert (
        "unknown prior 'freq_penalty'; the disabled plugin 'freq' provides it (drop --disable-plugin freq, "
        "or from Python leave 'freq' out of DsvPluginManager(disabled=[...]))"
    ) in str(info.value)
    pm = DsvPluginManager(disabled=["dsv.builtin.priors"])
    problems = cfg.plugin_problems(cfg.PluginSpec(name="tv"), pm.registry("priors"), path="synthesis.priors[0]")
    assert problems == [
        "synthesis.priors[0].name: unknown prior 'tv'; the disabled plugin 'dsv.builtin.priors' provides it "
        "(drop --disable-plugin dsv.builtin.priors, or from Python leave 'dsv.builtin.priors' out of "
        "DsvPluginManager(disabled=[...])) (known: freq_penalty)"
    ]
    # a name nobody provides keeps the usual message
    with pytest.raises(UnknownNameError) as info:
        pm.registry("priors").get("freq_penalt")
    assert "did you mean 'freq_penalty'" in str(info.value) and "disabled" not in str(info.value)


def test_the_api_says_which_disabled_plugin_provides_a_name_and_how_to_enable_it_from_python(fake_entry_points):
    def dsv_register_priors(registry):
        registry.add("freq_penalty", Sharpness)

    fake_entry_points(freq=plugin_module("dsv_test_freq", dsv_register_priors=dsv_register_priors))
    import dsv

    with pytest.raises(dsv.ConfigError) as info:
        dsv.synthesize(
            nn.Sequential(nn.Flatten(), nn.Linear(64, 3)),
            targets=[0],
            input_shape=(1, 8, 8),
            iterations=1,
            input_range=(0.0, 1.0),
            priors=["freq_penalty"],
            plugins=DsvPluginManager(disabled=["freq"]),
            progress=False,
        )
    message = str(info.value)
    assert "synthesis.priors[0].name: unknown prior 'freq_penalty'; the disabled plugin 'freq' provides it" in message
    assert "leave 'freq' out of DsvPluginManager(disabled=[...])" in message


def test_print_line_writes_above_the_progress_bar_and_draws_it_again():
    import io

    from tqdm import tqdm

    from dsv.plugins import print_line

    out = io.StringIO()
    bar = tqdm(total=10, file=out, desc="synthesize", ascii=True)
    bar.update(3)
    drawn = out.getvalue()
    print_line("iteration 3: entropy 1.5", file=out)
    after = out.getvalue()[len(drawn) :]
    bar.close()
    line, redrawn = after.split("iteration 3: entropy 1.5\n")
    assert line.endswith("\r")  # the bar's line was cleared first, so the text starts a clean line
    assert "synthesize" in redrawn and "3/10" in redrawn  # and the bar is drawn again below it
