"""The bn_stats prior of plugins/dsv-bn-prior, installed as a real distribution.

The session fixture installs plugins/dsv-bn-prior with pip (no dependencies, no index) into a
temporary folder, unless the environment already holds an identical copy (tox installs it);
tests put that folder on sys.path, so dsv finds the plugin through its entry point exactly as
after ``pip install plugins/dsv-bn-prior``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import torch
from conftest import REPO_ROOT, plugin_module
from torch import nn

from dsv import cli
from dsv import config as cfg
from dsv import plugins as dsv_plugins
from dsv.errors import ConfigError
from dsv.pipeline import Pipeline
from dsv.plugins import DsvPluginManager
from dsv.store import RunStore

PLUGIN_DIR = REPO_ROOT / "plugins" / "dsv-bn-prior"
DIST = "dsv-bn-prior"


def _installed_copy_is_current() -> bool:
    """True when the environment holds dsv-bn-prior installed from this very source."""
    try:
        dist = importlib.metadata.distribution(DIST)
    except importlib.metadata.PackageNotFoundError:
        return False
    version = tomllib.loads((PLUGIN_DIR / "pyproject.toml").read_text())["project"]["version"]
    if dist.version != version:
        return False
    src = PLUGIN_DIR / "src"
    for file in (src / "dsv_bn_prior").rglob("*.py"):
        installed = Path(dist.locate_file(file.relative_to(src).as_posix()))
        if not installed.is_file() or installed.read_bytes() != file.read_bytes():
            return False
    return True


@pytest.fixture(scope="session")
def bn_site(tmp_path_factory) -> Path | None:
    """Where the installed plugin lives: None (the environment) or a fresh pip --target folder."""
    if _installed_copy_is_current():
        return None
    root = tmp_path_factory.mktemp("bn_prior")
    source = root / "src"  # pip builds in the source tree: build from a copy, not the repository
    shutil.copytree(PLUGIN_DIR, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = root / "site"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--target",
        str(site),
        str(source),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"pip could not install plugins/dsv-bn-prior:\n{done.stdout}\n{done.stderr}")
    return site


@pytest.fixture
def bn_plugin(bn_site, monkeypatch):
    """The installed plugin visible to dsv (entry points) and to imports; returns its module."""
    if bn_site is not None:
        monkeypatch.syspath_prepend(str(bn_site))
    monkeypatch.setattr(dsv_plugins.manager, "_DEFAULT", {})  # managers built from here on see the plugin
    module = importlib.import_module("dsv_bn_prior")
    return module


def bn_net(seed: int = 0) -> nn.Module:
    """conv -> BN -> ReLU -> pool, twice, then a linear head: a tiny BatchNorm classifier for 8x8."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Conv2d(6, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 2 * 2, 10),
    )


def calibrated(x: torch.Tensor) -> nn.Module:
    """A bn_net (float64, eval, frozen) whose running statistics are exactly x's batch statistics."""
    model = bn_net().double()
    bns = [m for m in model if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.momentum = 1.0  # the running statistics become the last batch's
    model.train()
    with torch.no_grad():
        model(x)
    n = x.shape[0] * x.shape[2] * x.shape[3], x.shape[0] * (x.shape[2] // 2) * (x.shape[3] // 2)
    for bn, count in zip(bns, n):
        bn.running_var.mul_((count - 1) / count)  # BN keeps the unbiased variance; the prior the biased
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# --------------------------------------------------------------------------------------------------
# the loss
# --------------------------------------------------------------------------------------------------


def test_zero_at_the_running_statistics_and_positive_elsewhere(bn_plugin):
    x = torch.randn(16, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    model = calibrated(x)
    prior = bn_plugin.BNStats()
    prior.attach(model)
    assert float(prior(x)) == pytest.approx(0.0, abs=1e-9)
    assert float(prior(x * 2 + 1)) > 1.0
    assert float(prior(x[:8])) > 0.0  # another batch of the same data: close, but not the same
    prior.detach()


def test_value_is_the_sum_of_mean_and_variance_distances_with_the_first_layer_weighted(bn_plugin):
    gen = torch.Generator().manual_seed(1)
    model = calibrated(torch.randn(16, 1, 8, 8, dtype=torch.float64, generator=gen))
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64, generator=gen) * 1.5 + 0.3
    distances, h = [], x
    for layer in model:
        if isinstance(layer, nn.BatchNorm2d):
            mean, var = h.mean(dim=(0, 2, 3)), h.var(dim=(0, 2, 3), unbiased=False)
            distances.append(float((mean - layer.running_mean).norm() + (var - layer.running_var).norm()))
        h = layer(h)
    prior = bn_plugin.BNStats(first_layer_multiplier=3.0)
    prior.attach(model)
    assert float(prior(x)) == pytest.approx(3.0 * distances[0] + distances[1], rel=1e-9)
    prior.detach()
    second_only = bn_plugin.BNStats(first_layer_multiplier=3.0, layers=["5"])  # the multiplier goes to layer 5
    second_only.attach(model)
    assert float(second_only(x)) == pytest.approx(3.0 * distances[1], rel=1e-9)
    second_only.detach()


def test_gradients_reach_the_input_and_not_the_model(bn_plugin):
    model = calibrated(torch.randn(16, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
    x = (torch.rand(4, 1, 8, 8, dtype=torch.float64) * 3).requires_grad_(True)
    prior = bn_plugin.BNStats()
    prior.attach(model)
    prior(x).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    prior.detach()


def test_the_fused_statistics_match_torch_and_their_gradient_is_exact(bn_plugin):
    moments = bn_plugin._ChannelMoments.apply
    gen = torch.Generator().manual_seed(3)
    for shape in [(3, 4, 5, 6), (4, 3), (2, 3, 7)]:  # conv, linear (BatchNorm1d), sequence features
        x = (torch.randn(*shape, dtype=torch.float64, generator=gen) * 2 + 0.5).requires_grad_(True)
        dims = (0, *range(2, x.dim()))
        mean, var = moments(x)
        torch.testing.assert_close(mean, x.mean(dims))
        torch.testing.assert_close(var, x.var(dims, unbiased=False))
        assert torch.autograd.gradcheck(moments, (x,))
        only_var = torch.autograd.grad(moments(x)[1].sum(), x)[0]  # one output unused: no None error
        torch.testing.assert_close(only_var, torch.autograd.grad(x.var(dims, unbiased=False).sum(), x)[0])


def test_hooks_leave_the_model_unchanged_and_detach_removes_them(bn_plugin):
    model = bn_net().eval()
    x = torch.randn(6, 1, 8, 8)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    expected = model(x)
    prior = bn_plugin.BNStats()
    prior.attach(model)
    assert hook_count(model) == 3  # the model (a pass starts) and its two BatchNorm layers
    assert torch.equal(model(x), expected)
    prior(x)
    prior.attach(model)  # attaching again replaces the hooks, it does not add to them
    assert hook_count(model) == 3
    prior.detach()
    assert hook_count(model) == 0
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with pytest.raises(RuntimeError, match="attach"):
        prior(x)


def test_uses_the_forward_pass_the_model_made_on_these_candidates(bn_plugin):
    """In a synthesis step the model sees the clean candidates, then an augmented copy: the prior
    takes the statistics of the clean pass and runs no forward pass of its own."""
    model = calibrated(torch.randn(16, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3)))
    calls = []
    model.register_forward_pre_hook(lambda m, args: calls.append(1))
    prior = bn_plugin.BNStats()
    prior.attach(model)
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64) * 2
    alone = float(prior(x))  # the model has not seen x: the prior makes the pass
    assert len(calls) == 1
    model(x)
    model(x.flip(-1) * 3)  # an "augmented" pass after the clean one
    assert float(prior(x)) == pytest.approx(alone, rel=1e-12)
    assert len(calls) == 3
    prior.detach()


def test_augmented_takes_the_statistics_of_the_pass_on_the_augmented_copy(bn_plugin, make_run):
    """DeepInversion's choice: in a synthesis step the prior reads the augmented forward (no pass
    of its own), and equals the prior of a fresh model pass on that copy."""
    model = calibrated(torch.randn(16, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4)))
    model = model.float()
    calls = []
    model.register_forward_pre_hook(lambda m, args: calls.append(1))
    prior = bn_plugin.BNStats(weight=1.0, augmented=True)
    prior.attach(model)
    run = make_run(model=model, augmentations=[lambda x: x * 2 + 1], priors=[("bn_stats", prior)])
    x0 = run.x.detach().clone()
    metrics = run.step(1)
    assert len(calls) == 2  # the clean pass and the augmented pass, none by the prior
    reference = bn_plugin.BNStats()
    prior.detach()
    reference.attach(model)
    assert metrics["bn_stats"] == pytest.approx(float(reference(x0 * 2 + 1)), rel=1e-5)
    assert metrics["bn_stats"] != pytest.approx(float(reference(x0)), rel=1e-3)
    reference.detach()


def test_attach_refuses_models_it_cannot_use(bn_plugin):
    with pytest.raises(ValueError, match="no BatchNorm layer"):
        bn_plugin.BNStats().attach(nn.Sequential(nn.Conv2d(1, 2, 3)).eval())
    with pytest.raises(ValueError, match=r"layers=\['head\*'\] matches no BatchNorm layer \(the model has 1, 5\)"):
        bn_plugin.BNStats(layers=["head*"]).attach(bn_net().eval())
    with pytest.raises(ValueError, match="'1' is in training mode"):
        bn_plugin.BNStats().attach(bn_net().train())
    model = bn_net().eval()
    with pytest.raises(ValueError):
        bn_plugin.BNStats(layers="zzz").attach(model)
    assert hook_count(model) == 0


# --------------------------------------------------------------------------------------------------
# as a plugin: entry point, options, pipelines
# --------------------------------------------------------------------------------------------------


def test_the_installed_distribution_registers_bn_stats(bn_plugin):
    pm = DsvPluginManager()
    info = next(i for i in pm.plugins() if i.name == "bn-prior")
    version = tomllib.loads((PLUGIN_DIR / "pyproject.toml").read_text())["project"]["version"]
    assert (info.distribution, info.version) == (DIST, version)
    assert info.names == {"priors": ["bn_stats"]} and info.hooks == ["dsv_register_priors"]
    registry = pm.registry("priors")
    prior = cfg.build(
        cfg.PluginSpec(name="bn_stats", options={"weight": 0.5, "layers": ["1", "5"]}),
        registry,
        source="p.toml",
        path="synthesis.priors[0]",
    )
    assert (prior.weight, prior.layers, prior.first_layer_multiplier) == (0.5, ["1", "5"], 10.0)
    with pytest.raises(ConfigError, match=r"p\.toml: synthesis\.priors\[0\]\.wieght: unknown key"):
        cfg.build(
            cfg.PluginSpec(name="bn_stats", options={"wieght": 0.5}),
            registry,
            source="p.toml",
            path="synthesis.priors[0]",
        )
    with pytest.raises(ConfigError, match="first_layer_multiplier: must be at least 0"):
        cfg.build(
            cfg.PluginSpec(name="bn_stats", options={"first_layer_multiplier": -1.0}),
            registry,
            source="p.toml",
            path="synthesis.priors[0]",
        )


def test_plugins_command_lists_the_distribution(bn_plugin, capsys):
    assert cli.main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "bn-prior  [dsv-bn-prior 0.1.0]\n    priors: bn_stats\n    hooks: dsv_register_priors\n" in out
    assert cli.main(["plugins", "--disable-plugin", "bn-prior"]) == 0
    out = capsys.readouterr().out
    assert "bn_stats" not in out and "disabled: bn-prior" in out


@pytest.fixture(scope="module")
def bn_models(tmp_path_factory) -> Path:
    """One weights cache for the module: bn_net is trained once on digits."""
    return tmp_path_factory.mktemp("bn_models")


# a digits pipeline training bn_net one epoch (cached in bn_models), then a short synthesis
BN_PIPELINE = {"name": "bn", "model_source": "module:test_bn_prior:bn_net", "model_options": None}
BN_SYNTHESIS = {
    "domain": "none",  # these tests are about the prior alone
    "lambda_warmup": 5,
    "checkpoint_every": 5,
    "augmentations": [{"name": "flip", "p": 0.5}, {"name": "noise", "strength": 0.01}],
}


def test_a_pipeline_uses_bn_stats_and_leaves_no_hook_behind(bn_plugin, bn_models, tmp_path, write_pipeline):
    seen = {}

    def dsv_run_started(run):
        seen["hooks during the run"] = hook_count(run.model)

    def dsv_run_finished(run, summary):
        seen["hooks after the run"] = hook_count(run.model)
        seen["state"] = {k: v.clone() for k, v in run.model.state_dict().items()}
        seen["model"] = run.model

    pm = DsvPluginManager()
    pm.register(plugin_module("watch", dsv_run_started=dsv_run_started, dsv_run_finished=dsv_run_finished), "watch")
    finals = {}
    for weight in (0.0, 2.0):  # weight 0: the term is recorded but does not steer the candidates
        priors = [{"name": "bn_stats", "weight": weight}, {"name": "tv", "weight": 0.01}]
        path = write_pipeline(
            tmp_path / "bn.toml",
            **BN_PIPELINE,
            store=tmp_path / "bn.zarr",
            models=bn_models,
            synthesis={"iterations": 20, **BN_SYNTHESIS, "priors": priors},
        )
        result = Pipeline.from_toml(path, plugins=pm, progress=False, fresh=True).run()
        bn = RunStore.open(result.store).history()["bn_stats"]
        assert len(bn) == 20 and torch.isfinite(torch.from_numpy(bn)).all()
        assert seen["hooks during the run"] == 3 and seen["hooks after the run"] == 0
        finals[weight] = (bn[0], bn[-1])
    # same seed, same start; with the term, the candidates' feature statistics move to the data's
    assert finals[0.0][0] == finals[2.0][0]
    assert finals[2.0][1] < finals[2.0][0] and finals[2.0][1] < 0.5 * finals[0.0][1]
    trained = torch.load(next(bn_models.glob("*.pt")), weights_only=True)
    assert all(torch.equal(v, trained[k]) for k, v in seen["state"].items())  # running stats untouched


def test_bn_stats_from_the_command_line(bn_plugin, bn_models, tmp_path, write_pipeline, capsys):
    bn = dict(BN_PIPELINE, store=tmp_path / "bn.zarr", models=bn_models)
    priors = [{"name": "bn_stats", "weight": 0.05, "layers": "4"}]
    path = write_pipeline(tmp_path / "bn.toml", **bn, synthesis={"iterations": 3, **BN_SYNTHESIS, "priors": priors})
    assert cli.main(["run", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dsv-pipeline: error:") and "synthesis.priors[0]: bn_stats: layers='4'" in err
    priors = [{"name": "bn_stats", "weight": 0.05, "layers": "5"}]
    path = write_pipeline(tmp_path / "bn.toml", **bn, synthesis={"iterations": 3, **BN_SYNTHESIS, "priors": priors})
    assert cli.main(["run", str(path), "--no-progress", "--fresh"]) == 0
    assert "bn_stats" in RunStore.open(tmp_path / "bn.zarr").history()
    assert cli.main(["run", str(path), "--no-progress", "--fresh", "--disable-plugin", "bn-prior"]) == 2
    assert "unknown prior 'bn_stats'" in capsys.readouterr().err


def run_imagenet_benchmark(bn_site, args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    paths = [str(REPO_ROOT)] + ([str(bn_site)] if bn_site is not None else [])
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "imagenet_gen.py"), *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO_ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done


ARM_KEYS = {"lite1", "lite2", "seconds", "step_seconds", "iterations", "n", "natural"}
NATURAL_KEYS = {"spectrum_slope", "spectrum_slope_std", "saturation", "saturated_fraction", "verifier_bn_distance"}


def check_arm(r: dict, n: int) -> None:
    """An arm's figures: both verifiers named, in range, per seed; the naturalness measures."""
    assert ARM_KEYS <= set(r) and set(r["natural"]) == NATURAL_KEYS
    assert r["n"] == n and r["seconds"] > 0 and r["step_seconds"] > 0
    for key, model in (("lite1", "efficientnet-lite1"), ("lite2", "efficientnet-lite2")):
        v = r[key]
        assert v["model"] == model and v["n"] == n and 0 <= v["top1"] <= v["top5"] <= 1
        assert len(v["top1_by_seed"]) >= 1 and v["top1_std"] >= 0


@pytest.mark.slow
def test_the_imagenet_benchmark_runs_a_tiny_comparison_and_writes_all_methods(bn_site, tmp_path):
    """benchmarks/imagenet_gen.py end to end on one class, a few iterations at 32 px: the three
    methods, both verifiers' figures, the grids."""
    out = tmp_path / "out.json"
    args = ["--classes", "1", "--seeds", "1", "--iterations", "4", "--calibration-steps", "1", "--threads", "1"]
    args += ["--max-size", "32", "--variant", "slow:synthesis.lr_x=1e-6"]  # an extra dsv arm, its own table
    done = run_imagenet_benchmark(bn_site, [*args, "--json", str(out), "--out", str(tmp_path)])
    result = json.loads(out.read_text())
    assert "partial" not in result
    for name in ("dsv", "dsv_paper", "deepinversion"):
        check_arm(result["methods"][name], 1)
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    assert result["methods"]["dsv"]["iterations"] == 4
    assert result["equal_iterations"]["deepinversion"]["iterations"] == 4
    variant = result["variants"]["dsv+slow"]
    assert variant["iterations"] == 4 and variant["n"] == 1 and (tmp_path / "dsv+slow.png").stat().st_size > 1000
    assert "dsv+slow" in done.stdout
    assert "equal wall-clock" in done.stdout and "photographs" in done.stdout


@pytest.mark.slow
def test_the_imagenet_ablation_runs_every_arm_at_the_full_profiles_wall_clock(bn_site, tmp_path):
    """--ablation on one class, two seeds, a few iterations at 32 px: the full profile, each
    ablation, two extra arms (a preset and overrides), the methods, the photographs' measures."""
    out = tmp_path / "ablation.json"
    args = ["--ablation", "--classes", "1", "--seeds", "2", "--iterations", "3", "--max-size", "32"]
    args += ["--calibration-steps", "1", "--threads", "1", "--arm", "stat_last_block"]
    args += ["--arm", 'mine=stationarity.rows="all",-tv', "--json", str(out)]
    done = run_imagenet_benchmark(bn_site, args)
    result = json.loads(out.read_text())
    assert "partial" not in result and result["reference"] == "full" and result["seeds"] == [0, 1]
    ablations = ["full", "no_stationarity", "no_bn_stats", "no_tv", "no_norm", "no_augmented", "no_schedule"]
    assert list(result["ablation"]) == [*ablations, "stat_last_block", "mine"]
    assert list(result["methods"]) == ["dsv", "dsv_paper", "deepinversion"]
    for r in [*result["ablation"].values(), *result["methods"].values()]:
        check_arm(r, 2)
        assert len(r["lite1"]["top1_by_seed"]) == 2
    assert result["methods"]["dsv"] == result["ablation"]["full"] and result["ablation"]["full"]["iterations"] == 3
    # the run's relative stationarity where the arm has the term (above 1.0 where the candidates
    # overshoot the weights), none without it
    with_term = [name for name, r in result["ablation"].items() if "relative_stationarity" in r]
    assert with_term == [name for name in result["ablation"] if name != "no_stationarity"]
    assert all(math.isfinite(r) and r > 0 for r in (result["ablation"][n]["relative_stationarity"] for n in with_term))
    assert set(result["photos"]) == NATURAL_KEYS and result["photos"]["spectrum_slope"] < -0.8
    for name in [*ablations, "dsv_paper", "deepinversion", "photographs"]:
        assert name in done.stdout
    shown = run_imagenet_benchmark(None, ["--markdown", str(out)]).stdout  # the README's tables
    rows = [line for line in shown.splitlines() if line.startswith("| ablation |")]
    assert [row.split(" | ")[1] for row in rows] == [*ablations, "stat_last_block", "mine"]
    assert rows[0].endswith("|  |") and all(row.rstrip(" |")[-6:-5] in "+-" for row in rows[1:])
    assert "| photographs (scikit-image) |" in shown and "| deepinversion | 32 |" in shown
    assert f"| full | {result['ablation']['full']['relative_stationarity']:.4f} |" in shown
    n = result["ablation"]["full"]["n"]
    assert f"{n} images per arm: a top-1 of p has a binomial standard error" in shown
    assert f"{(0.85 * 0.15 / n) ** 0.5:.3f} at 0.85" in shown and "binomial standard error" in done.stdout


@pytest.mark.slow
def test_the_ablation_can_be_restricted_to_the_full_profile_and_named_arms(bn_site, tmp_path):
    """--ablation NAMES --methods dsv --arm PRESET: the full arm (the reference), the named
    ablations and the presets only; an unknown ablation is named in the error."""
    args = ["--classes", "1", "--seeds", "1", "--iterations", "3", "--max-size", "32", "--calibration-steps", "1"]
    args += ["--threads", "1", "--plan", "--ablation", "no_tv", "--methods", "dsv", "--arm", "lambda_data"]
    done = run_imagenet_benchmark(bn_site, args)
    planned = next(line for line in done.stdout.splitlines() if line.startswith("iterations at"))
    assert [arm.split()[0] for arm in planned.split(": ")[1].split(", ")] == ["full", "no_tv", "lambda_data"]
    bad = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "imagenet_gen.py"), "--ablation", "no_tvv", "--plan"],
        capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
    )  # fmt: skip
    assert bad.returncode != 0 and "--ablation: no ablation no_tvv" in bad.stderr
