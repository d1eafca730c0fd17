"""The examples of docs/writing-plugins.md run: every Python block that starts with a
``# <module>.py`` line is loaded as that module, registered on a plugin manager in-process (no
installation) and used in a pipeline on scikit-learn's digits, each for a real effect."""

from __future__ import annotations

import re
import sys
import textwrap
import types

import pytest
import torch
from conftest import REPO_ROOT

from dsv.errors import ConfigError
from dsv.pipeline import Pipeline
from dsv.plugins import DsvPluginManager, InitContext, ModelRequest, hookimpl
from dsv.store import RunStore

GUIDE = REPO_ROOT / "docs" / "writing-plugins.md"
BLOCK = re.compile(r"```python\n# (dsv_\w+)\.py\n(.*?)```", re.S)

#: the plugin modules the guide teaches by kind; the test fails when one is missing
EXPECTED = {
    "dsv_grey_world",  # prior
    "dsv_sk_digits",  # data set
    "dsv_tiny_mlp",  # model source
    "dsv_full_batch",  # retrainer
    "dsv_class_mean",  # initializer
    "dsv_shift",  # augmentation
    "dsv_margin",  # loss
    "dsv_lambda_log",  # lifecycle hook with options
    "dsv_early_stop",  # lifecycle hook that stops a run
    "dsv_predictions_csv",  # stage (run by tests/test_plugins.py from a pipeline file)
}


def guide_modules() -> dict[str, types.ModuleType]:
    modules = {}
    for name, source in BLOCK.findall(GUIDE.read_text()):
        module = types.ModuleType(name)
        module.__file__ = f"{name}.py"
        sys.modules[name] = module  # attrs and pickling look classes up by module
        exec(compile(source, f"{GUIDE.name}:{name}", "exec"), module.__dict__)
        modules[name] = module
    return modules


@pytest.fixture(scope="module")
def guide():
    modules = guide_modules()
    yield modules
    for name in modules:
        sys.modules.pop(name, None)


def manager(guide, *names: str) -> DsvPluginManager:
    pm = DsvPluginManager(load_entry_points=False)
    for name in names:
        pm.register(guide[name], name.removeprefix("dsv_").replace("_", "-"))
    return pm


KINDS = ("dsv_grey_world", "dsv_sk_digits", "dsv_tiny_mlp", "dsv_full_batch", "dsv_class_mean", "dsv_shift")
KINDS += ("dsv_margin", "dsv_lambda_log")


def pipeline_text(tmp_path, store: str, iterations: int, noise: float, every: int) -> str:
    return textwrap.dedent(f"""\
        [run]
        device = "cpu"
        store = "{(tmp_path / store).as_posix()}"
        stages = ["train", "synthesize"]
        [data]
        name = "sk-digits"
        options = {{ test_fraction = 0.25 }}
        [model]
        source = "tiny-mlp"
        options = {{ hidden = 32 }}
        [train]
        retrainer = {{ name = "full-batch-adam", steps = 150 }}
        cache_dir = "{(tmp_path / "models").as_posix()}"
        [synthesis]
        iterations = {iterations}
        init = {{ name = "class-mean", noise = {noise} }}
        augmentations = [{{ name = "shift", pixels = 1 }}]
        losses = ["primal", "stationarity", {{ name = "margin", weight = 0.1, margin = 2.0 }}]
        priors = [{{ name = "grey_world", weight = 0.01 }}]
        [plugins.lambda-log]
        every = {every}
        file = "{(tmp_path / "lambda.csv").as_posix()}"
        """)


def test_the_guide_has_a_runnable_example_of_every_kind(guide):
    assert EXPECTED <= set(guide)


def test_every_example_of_the_guide_works_in_one_pipeline(guide, tmp_path, capsys):
    pm = manager(guide, *KINDS)
    started = []

    class Observer:  # what the run looked like before its first step
        @hookimpl
        def dsv_run_started(self, run):
            started.append((run.x.detach().clone(), run.targets.argmax(1).clone()))

    pm.register(Observer(), "observer")
    path = tmp_path / "run.toml"
    path.write_text(pipeline_text(tmp_path, "run.zarr", iterations=6, noise=0.0, every=2))
    result = Pipeline.from_toml(path, plugins=pm, progress=False).run()
    store = RunStore.open(result.store)
    out = capsys.readouterr().out

    # data set and model source: the run is of the sk-digits classes, on the tiny MLP
    assert store.meta["classes"] == [str(i) for i in range(10)]
    # retrainer: it trained the base model, which classifies held-out digits well
    assert "full-batch-adam: 150 steps on 1348 samples" in out
    assert store.meta["base_test_accuracy"] > 0.8
    # initializer (noise 0): each candidate started as its class's mean training image, normalized
    x0, labels = started[0]
    data = guide["dsv_sk_digits"].sk_digits(test_fraction=0.25)
    images, targets = data.tensors("train")
    expected = torch.stack([(images[targets == c].mean(0) - 0.3) / 0.4 for c in labels.tolist()])
    torch.testing.assert_close(x0, expected)
    # augmentation and loss: the margin term was evaluated on the clean and the shifted candidates
    history = store.history()
    assert history["margin"].shape == (6,) and history["margin_aug"].shape == (6,)
    assert history["grey_world"].shape == (6,)
    # lifecycle hook: it read its [plugins.lambda-log] options (every 2 iterations, into its file)
    rows = (tmp_path / "lambda.csv").read_text().splitlines()
    assert [int(row.split(",")[0]) for row in rows] == [2, 4, 6]
    assert [int(row.split(",")[1]) for row in rows] == [int(a) for a in history["alive"][[1, 3, 5]]]
    assert "lambda-log: iteration 4: alive" in out
    assert store.meta["config"]["plugins"]["lambda-log"]["every"] == 2


def test_the_guide_examples_check_their_options(guide, tmp_path):
    pm = manager(guide, *KINDS)
    path = tmp_path / "bad.toml"
    text = pipeline_text(tmp_path, "bad.zarr", iterations=6, noise=-1.0, every=0)
    path.write_text(text.replace("pixels = 1", "pixels = -1").replace("margin = 2.0", "margn = 2.0"))
    with pytest.raises(ConfigError) as info:
        Pipeline.from_toml(path, plugins=pm, progress=False)
    message = str(info.value)
    for line in (
        "synthesis.init.noise: must be >= 0, got -1.0",
        "synthesis.augmentations[0].pixels: must be >= 0, got -1",
        "synthesis.losses[2].margn: unknown key",
        "plugins.lambda-log.every: must be >= 1, got 0",
    ):
        assert line in message, message
    assert not (tmp_path / "models").exists()  # nothing ran


def test_the_augmentation_is_a_differentiable_module_and_the_model_source_loads_weights(guide, tmp_path):
    shift = guide["dsv_shift"].Shift(pixels=2)
    assert isinstance(shift, torch.nn.Module) and shift.pixels == 2
    x = torch.randn(3, 1, 8, 8, requires_grad=True)
    y = shift(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # a roll moves every value once
    data = guide["dsv_sk_digits"].sk_digits()
    fresh = guide["dsv_tiny_mlp"].tiny_mlp(ModelRequest(data=data), hidden=8)
    assert fresh.trainable and fresh.spec.num_classes == 10 and fresh.spec.low == ((0 - 0.3) / 0.4,)
    torch.save(fresh.module.state_dict(), tmp_path / "w.pt")
    loaded = guide["dsv_tiny_mlp"].tiny_mlp(ModelRequest(data=data, weights_path=str(tmp_path / "w.pt")), hidden=8)
    assert not loaded.trainable
    probe = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(loaded.module(probe), fresh.module(probe))
    init = guide["dsv_class_mean"].ClassMean(noise=0.5)
    context = InitContext(torch.Generator().manual_seed(0), loaded.spec, data)
    a = init((2, 1, 8, 8), torch.tensor([3, 7]), context)
    b = init((2, 1, 8, 8), torch.tensor([3, 7]), InitContext(torch.Generator().manual_seed(0), loaded.spec, data))
    torch.testing.assert_close(a, b)  # every random number from the run's generator


def test_the_early_stop_hook_stops_the_run(guide, tmp_path, monkeypatch):
    monkeypatch.setattr(guide["dsv_early_stop"], "STREAK", 2)
    pm = manager(guide, *KINDS, "dsv_early_stop")
    path = tmp_path / "run.toml"
    path.write_text(pipeline_text(tmp_path, "stop.zarr", iterations=30, noise=0.0, every=100))
    result = Pipeline.from_toml(path, plugins=pm, progress=False).run()
    history = RunStore.open(result.store).history()
    stopped = int(history["iteration"][-1])
    accuracy = history["accuracy"].tolist()
    # it stopped at the first iteration that completed a streak of two with every candidate right
    first = next(i for i in range(1, len(accuracy)) if accuracy[i] == accuracy[i - 1] == 1.0)
    assert stopped == first + 1 < 30
    assert result.summary["iterations"] == stopped
