"""The distillation stages on digits: select, retrain, evaluate, analyse, and the baselines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT, image_classifier
from torch import nn

from dsv import cli
from dsv import config as cfg
from dsv.builtin.models import InputSpec
from dsv.errors import ConfigError
from dsv.evaluation.analysis import class_lambda_sums, pearson
from dsv.evaluation.baselines import distribution_matching, embedding, herding, random_real, synthesize_images
from dsv.evaluation.retraining import Augmented, accuracy_on, fresh_model, retrain_models
from dsv.kkt.selection import fit_feasible, fit_multipliers, head_features, top_per_class
from dsv.pipeline import load_pipeline_text
from dsv.plugins import InitContext, get_plugin_manager, normalize
from dsv.store import RunStore

DISTILL_SYNTHESIS = {
    "iterations": 15,
    "candidates_per_class": 2,
    "lambda_warmup": 5,
    "init": {"name": "other", "dataset": "digits", "split": "test"},
    "checkpoint_every": 0,
}
DISTILL_TABLES = {
    "select": {"iterations": 60, "top_k": [1, 5], "random_samples": 200},
    "retrain": {
        "retrainer": {"name": "sam", "epochs": 15, "batch_size": 64, "lr": 1e-2},
        "seeds": 3,
        "augmentations": [{"name": "noise", "strength": 0.05}],
    },
    "export": {"png": ""},
}

ALL_STAGES = ("train", "synthesize", "select", "retrain", "evaluate", "analyse", "export")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, write_pipeline):
    """train -> synthesize -> select -> retrain -> evaluate -> analyse on digits (a few seconds)."""
    root = tmp_path_factory.mktemp("distill")
    path = write_pipeline(
        root / "all.toml",
        name="all",
        stages=ALL_STAGES,
        store=root / "all.zarr",
        models=root / "models",
        synthesis=DISTILL_SYNTHESIS,
        tables=DISTILL_TABLES,
    )
    assert cli.main(["run", str(path), "--no-progress"]) == 0
    return RunStore.open(root / "all.zarr")


def test_every_stage_records_its_results(full_run, capsys):
    results = full_run.results
    assert {
        "select",
        "retrain",
        "retrained",
        "pearson_lambda_accuracy",
        "entropy_start",
        "entropy_end",
        "class_lambda_accuracy",
    } <= set(results)
    assert cli.main(["show", str(full_run.path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["retrained"] == results["retrained"]
    assert shown["entropy_start"] == results["entropy_start"]


def test_retrained_accuracy_is_mean_and_std_over_three_seeds(full_run):
    r = full_run.results["retrained"]
    assert r["seeds"] == 3 and len(r["accuracies"]) == 3 and r["images"] == 20
    assert r["mean"] == pytest.approx(np.mean(r["accuracies"]))
    assert r["std"] == pytest.approx(np.std(r["accuracies"]))
    assert len(set(r["accuracies"])) > 1  # different seeds, different models
    assert all(0.0 <= a <= 1.0 for a in r["accuracies"])


def test_coreset_holds_the_top_k_of_each_class_by_lambda(full_run):
    with np.load(full_run.export_path("coreset.npz")) as z:
        lam, pool, pool_labels = z["pool_lambda"], z["pool_indices"], z["pool_labels"]
        assert (lam >= 0).all()
        for k in (1, 5):
            idx, labels = z[f"top{k}_indices"], z[f"top{k}_labels"]
            assert np.bincount(labels, minlength=10).tolist() == [k] * 10
            assert z[f"top{k}_images"].shape == (10 * k, 1, 8, 8)
            for cls in range(10):
                chosen = lam[np.isin(pool, idx[labels == cls])]
                others = lam[(pool_labels == cls) & ~np.isin(pool, idx)]
                assert chosen.min() >= others.max()
    select = full_run.results["select"]
    assert 0 < select["relative_stationarity"] < 1  # the multipliers explain part of the head
    assert set(select["entropy_selected"]) == {"1", "5"}


def test_analyse_correlates_class_lambda_with_class_accuracy(full_run):
    analysed = full_run.results["class_lambda_accuracy"]
    assert analysed["lambda_source"] == "select"
    sums, acc = np.array(analysed["lambda_sum"]), np.array(analysed["test_accuracy"])
    assert full_run.results["pearson_lambda_accuracy"] == pytest.approx(np.corrcoef(sums, acc)[0, 1])
    for name in ("entropy.png", "lambda_accuracy.png"):
        assert full_run.export_path(name).read_bytes()[:4] == b"\x89PNG"


def test_select_alone_then_retrain_on_the_coreset(tmp_path, write_pipeline):
    core = dict(name="core", store=tmp_path / "core.zarr", models=tmp_path / "models", synthesis=DISTILL_SYNTHESIS)
    path = write_pipeline(tmp_path / "core.toml", **core, stages=("train", "select"), tables=DISTILL_TABLES)
    assert cli.main(["run", str(path), "--no-progress"]) == 0
    store = RunStore.open(tmp_path / "core.zarr")
    assert not store.has_candidates and "select" in store.results
    coreset = {"source": "coreset", "top_k": 5, "seeds": 3, "retrainer": {"name": "adam", "epochs": 10, "lr": 1e-2}}
    tables = {"select": DISTILL_TABLES["select"], "retrain": coreset}  # no [export]
    write_pipeline(tmp_path / "core.toml", **core, stages=("train", "retrain", "evaluate"), tables=tables)
    assert cli.main(["run", str(path), "--no-progress"]) == 0
    r = RunStore.open(tmp_path / "core.zarr").results["retrained"]
    assert r["source"] == "coreset" and r["images"] == 50 and r["seeds"] == 3
    assert r["mean"] > 0.3  # 5 real digits per class teach a fresh model far beyond chance


def test_fit_multipliers_recovers_the_planted_support_vectors():
    torch.manual_seed(0)
    n, k, d = 8, 3, 5
    logits, features = torch.randn(n, k), torch.randn(n, d)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    g = F.softmax(logits, 1) - F.one_hot(labels, k).float()
    planted = torch.tensor([0, 0, 1, 0, 1, 0, 0, 0], dtype=torch.float32)  # samples 2 (class 2) and 4 (class 1)
    head = nn.Linear(d, k)
    with torch.no_grad():  # theta = -sum_i lambda_i grad_theta CE_i with lambda = planted
        head.weight.copy_(-(g * planted[:, None]).T @ features)
        head.bias.copy_(-(g * planted[:, None]).sum(0))
    lambdas, history = fit_multipliers(head, logits, features, labels, iterations=1500, lr=0.02)
    assert history[-1] < 0.02 < history[0]
    assert torch.allclose(lambdas, planted, atol=0.05)
    assert set(top_per_class(lambdas, labels, 1).tolist()) >= {2, 4}


def test_head_features_are_the_input_of_the_last_linear_layer():
    model = image_classifier()
    x = torch.randn(5, 1, 8, 8)
    logits, feats = head_features(model, x, batch_size=2)
    assert torch.allclose(logits, model(x))
    assert torch.allclose(model[3](feats), logits, atol=1e-6)


def test_herding_picks_the_sample_nearest_the_class_mean_first():
    features = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0], [13.0]])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    first = herding(features, labels, 1)
    assert first.tolist() == [1, 4]  # means 1.0 and 11.33
    both = herding(features, labels, 2)
    assert len(set(both.tolist())) == 4 and set(first.tolist()) <= set(both.tolist())


def test_distribution_matching_moves_the_embedding_towards_the_real_images(digits_bundle):
    model = image_classifier()
    spec = InputSpec(1, 8, digits_bundle.mean, digits_bundle.std, [str(i) for i in range(10)])
    real, labels = random_real(digits_bundle, spec, 2, seed=0)
    noise = torch.randn(real.shape, generator=torch.Generator().manual_seed(1))

    def gap(x):  # mean-embedding gap under networks DM never saw
        nets = [fresh_model(model, 10_000 + i) for i in range(5)]
        with torch.no_grad():
            return sum(float((embedding(n, real) - embedding(n, x)).mean(0).pow(2).sum()) for n in nets)

    syn = distribution_matching(model, real, labels, noise, labels, iterations=60, lr=1.0, seed=0)
    assert syn.shape == real.shape
    assert gap(syn) < 0.5 * gap(noise)


def test_primal_only_inversion_runs_without_a_store_and_reaches_its_targets(digits_bundle):
    model = image_classifier().eval()
    spec = InputSpec(1, 8, digits_bundle.mean, digits_bundle.std, [str(i) for i in range(10)])
    synthesis = cfg.structure(
        {
            "iterations": 40,
            "classes": [0, 3, 7],
            "candidates_per_class": 2,
            "lr_x": 0.1,
            "losses": [{"name": "primal"}],
        },
        cfg.SynthesisConfig,
        source="t",
    )
    x, labels, alive, history = synthesize_images(
        model, spec, synthesis, plugins=get_plugin_manager(), data=None, seed=0
    )
    assert x.shape == (6, 1, 8, 8) and labels.tolist() == [0, 0, 3, 3, 7, 7] and bool(alive.all())
    with torch.no_grad():
        assert (model(x).argmax(1) == labels).float().mean() >= 5 / 6
    assert history["primal"][-1] < history["primal"][0]


def test_random_real_draws_each_class_from_the_training_set(digits_bundle):
    spec = InputSpec(1, 8, digits_bundle.mean, digits_bundle.std, [str(i) for i in range(10)])
    images, labels = random_real(digits_bundle, spec, 3, seed=4)
    train_x, train_y = digits_bundle.tensors("train")
    flat = normalize(train_x, spec.mean, spec.std).flatten(1)
    for img, label in zip(images, labels):
        match = (flat - img.flatten()).abs().sum(1).argmin()
        assert torch.allclose(flat[match], img.flatten()) and train_y[match] == label
    again, _ = random_real(digits_bundle, spec, 3, seed=4)
    assert torch.equal(images, again)


def test_other_initializer_upscales_another_data_set(digits_bundle):
    init = cfg.build(
        cfg.PluginSpec(name="other", options={"dataset": "digits"}),
        get_plugin_manager().registry("initializers"),
        source="p.toml",
        path="synthesis.init",
    )
    spec = InputSpec(3, 28, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), [str(i) for i in range(10)])
    x = init((6, 3, 28, 28), torch.arange(6), InitContext(torch.Generator().manual_seed(0), spec))
    assert x.shape == (6, 3, 28, 28)
    pixels = x * 0.25 + 0.5
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6
    assert torch.equal(x[:, 0], x[:, 1])  # grey images repeated over the colour channels
    assert x.std() > 0.1  # images, not a constant


def test_sam_and_adam_retrain_fresh_models_that_beat_chance(digits_bundle):
    images, labels = digits_bundle.tensors("train")
    images = normalize(images, digits_bundle.mean, digits_bundle.std)
    test_x, test_y = digits_bundle.tensors("test")
    test_x = normalize(test_x, digits_bundle.mean, digits_bundle.std)
    registry = get_plugin_manager().registry("retrainers")
    for name in ("sam", "adam"):
        retrainer = registry.get(name)(epochs=3, batch_size=64, lr=1e-2)
        (model,) = retrain_models(image_classifier(), images, labels, retrainer, seeds=[0])
        assert accuracy_on(model, test_x, test_y, 10)[0] > 0.7, name


def test_fresh_model_has_new_weights_by_seed():
    template = image_classifier(seed=0)
    a, b, a2 = fresh_model(template, 1), fresh_model(template, 2), fresh_model(template, 1)
    assert not torch.equal(a[1].weight, template[1].weight)
    assert not torch.equal(a[1].weight, b[1].weight) and torch.equal(a[1].weight, a2[1].weight)
    assert all(p.requires_grad for p in a.parameters())


def test_augmentations_act_in_training_mode_only():
    model = Augmented(nn.Identity(), [lambda x: x + 1.0])
    x = torch.zeros(2, 1, 4, 4)
    assert torch.equal(model.train()(x), x + 1.0)
    assert torch.equal(model.eval()(x), x)


def test_accuracy_per_class_and_lambda_sums():
    model = nn.Identity()
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    overall, per_class = accuracy_on(model, logits, torch.tensor([0, 1, 1, 2]), 3, batch_size=3)
    assert overall == 0.75 and per_class.tolist() == [1.0, 0.5, 1.0]
    sums = class_lambda_sums(np.array([0.5, -1.0, 2.0, 1.0]), np.array([0, 0, 2, 2]), 3)
    assert sums.tolist() == [0.5, 0.0, 3.0]
    assert pearson(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 6.5])) > 0.99
    assert np.isnan(pearson(np.array([1.0, 1.0, 1.0]), np.array([1.0, 2.0, 3.0])))


@pytest.mark.parametrize(
    "text, message",
    [
        ('[retrain]\nsource = "dsvs"\n', "retrain.source: expected 'candidates' or 'coreset'"),
        ("[retrain]\nseeds = 0\n", "retrain.seeds: must be at least 1"),
        ("[select]\ntop_k = [0]\n", "select.top_k: a non-empty list of sizes >= 1"),
        ('[select]\nnpz = "../x.npz"\n', "select.npz: a file name inside the run store"),
        ('[analyse]\nlambda_source = "x"\n', "analyse.lambda_source"),
        ("[select]\ntopk = [1]\n", "select.topk: unknown key"),
        ('[retrain]\nretrainer = { name = "adamw" }\n', "retrain.retrainer.name: unknown retrainer 'adamw'"),
        ('[run]\nstages = ["select"]\n', "run.stages: the select stage needs a [data] table"),
    ],
)
def test_bad_distill_tables_name_the_key(text, message):
    source = '[model]\nsource = "convnet"\n' + text
    with pytest.raises(ConfigError) as info:
        load_pipeline_text(source, source="p.toml")
    assert f"p.toml: {message}" in str(info.value)


def test_range_prior_penalizes_only_values_outside_the_range():
    prior = cfg.build(
        cfg.PluginSpec(name="range", options={"low": -1.0, "high": 2.0}),
        get_plugin_manager().registry("priors"),
        source="p.toml",
        path="synthesis.priors[0]",
    )
    assert float(prior(torch.tensor([[-1.0, 0.0, 2.0]]))) == 0.0
    assert float(prior(torch.tensor([[-3.0, 4.0]]))) == pytest.approx((4.0 + 4.0) / 2)
    with pytest.raises(ConfigError, match="low: must be below high"):
        cfg.build(
            cfg.PluginSpec(name="range", options={"low": 1.0, "high": 0.0}),
            get_plugin_manager().registry("priors"),
            source="p.toml",
            path="synthesis.priors[0]",
        )


def test_misclassified_samples_are_no_support_vectors():
    torch.manual_seed(0)
    logits, features = torch.randn(12, 3), torch.randn(12, 4)
    labels = logits.argmax(1)
    labels[:3] = (labels[:3] + 1) % 3  # the first three are misclassified
    head = nn.Linear(4, 3)
    lambdas, _ = fit_feasible(
        head, logits, features, labels, feasible_only=True, iterations=50, lr=0.1, lambda_init=0.5
    )
    assert (lambdas[:3] == 0).all() and (lambdas[3:] > 0).any()
    everyone, _ = fit_feasible(
        head, logits, features, labels, feasible_only=False, iterations=50, lr=0.1, lambda_init=0.5
    )
    assert (everyone[:3] > 0).any()


def test_the_teacher_labelled_retrainer_learns_the_teachers_outputs_not_the_labels(digits_bundle):
    from dsv.builtin.retrainers import Adam, TeacherLabelled

    images, _ = digits_bundle.tensors("train")
    images = images[:40]
    labels = torch.zeros(40, dtype=torch.long)  # every hard label says class 0

    class Teacher(nn.Module):  # says class 7 of everything, with some doubt about class 2
        def forward(self, x):
            logits = torch.zeros(len(x), 10)
            logits[:, 7], logits[:, 2] = 3.0, 1.0
            return logits

    template = image_classifier(seed=1)
    options = dict(epochs=30, batch_size=20, lr=1e-2)
    taught = retrain_models(
        template, images, labels, TeacherLabelled(noise=0.05, **options), seeds=[0], teacher=Teacher()
    )[0]
    hard = retrain_models(template, images, labels, Adam(**options), seeds=[0])[0]
    with torch.no_grad():
        p_taught, p_hard = taught(images).softmax(1), hard(images).softmax(1)
    want = Teacher()(images[:1]).softmax(1)[0]
    assert (p_taught.argmax(1) == 7).all() and (p_hard.argmax(1) == 0).all()
    assert torch.allclose(p_taught.mean(0), want, atol=0.05)  # the teacher's distribution, doubt included
    with pytest.raises(ValueError, match="needs the base model"):
        retrain_models(template, images, labels, TeacherLabelled(**options), seeds=[0])


def test_teacher_mixup_shows_the_teacher_mixtures_of_the_images():
    from dsv.builtin.retrainers import TeacherLabelled

    images = torch.cat([torch.zeros(4, 1, 8, 8), torch.ones(4, 1, 8, 8)])  # black and white
    labels = torch.zeros(8, dtype=torch.long)

    class Recording(nn.Module):
        def __init__(self):
            super().__init__()
            self.seen: list[torch.Tensor] = []

        def forward(self, x):
            self.seen.append(x.detach().clone())
            return torch.zeros(len(x), 10)

    def seen_by_teacher(mixup: float) -> torch.Tensor:
        teacher = Recording()
        retrainer = TeacherLabelled(noise=0.0, mixup=mixup, epochs=5, batch_size=8, lr=1e-3)
        retrain_models(image_classifier(seed=1), images, labels, retrainer, seeds=[0], teacher=teacher)
        return torch.cat(teacher.seen)

    plain, mixed = seen_by_teacher(0.0), seen_by_teacher(1.0)
    assert set(plain.unique().tolist()) == {0.0, 1.0}
    flat = mixed.flatten(1)
    assert torch.allclose(flat, flat[:, :1].expand_as(flat))  # a mixture of two flat images is flat
    values = flat[:, 0]
    assert values.min() >= 0.0 and values.max() <= 1.0
    assert ((values > 0.01) & (values < 0.99)).sum() >= len(values) // 4  # many lie strictly between


def run_benchmark(script: str, args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python benchmarks/<script> ARGS`` in ``cwd`` with the repository importable."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / script), *args],
        capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env,
    )  # fmt: skip


@pytest.mark.slow
def test_the_distill_benchmark_runs_variants_side_by_side(tmp_path):
    """benchmarks/distill.py on digits, tiny: a --variant row next to its reference row, each with
    its own [synthesis] table, in one run and one JSON."""
    args = ["--dataset", "digits", "--quick", "--ipc", "1", "--methods", "noise_gaussian", "dsv_defaults"]
    args += ["--protocols", "hard", "--variant", "dsv_defaults+short:synthesis.iterations=3"]
    args += ["--set", "retrain.seeds=1", "--set", 'retrain.retrainer={name="adam",epochs=3,batch_size=256,lr=1e-3}']
    done = run_benchmark("distill.py", [*args, "--json", "out.json"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "out.json").read_text())
    assert [r["method"] for r in result["rows"]] == ["noise_gaussian", "dsv_defaults", "dsv_defaults+short"]
    # the reference keeps the defaults (300 iterations); the variant runs its own table
    assert result["notes"]["dsv_defaults/1"]["iterations"] == 300
    assert result["notes"]["dsv_defaults+short/1"]["iterations"] == 3
    assert "noise_floor" in result["rows"][2] and "dsv_defaults+short" in done.stdout
    bad = run_benchmark("distill.py", ["--dataset", "digits", "--variant", "noop:model.source=1"], tmp_path)
    assert bad.returncode != 0 and "expected [METHOD+]LABEL:synthesis.KEY=VALUE" in bad.stderr


@pytest.mark.slow
def test_table2_runs_in_two_workers_and_merges_one_table(tmp_path):
    """benchmarks/distill.py --table2 on digits, tiny: the rows of 10 img/cls come from the second
    worker, the rest (coresets, thread check) from the first; one JSON in the table's order."""
    args = ["--dataset", "digits", "--pipeline", str(REPO_ROOT / "pipelines" / "paper_fashion_mnist.toml")]
    args += ["--table2", "--no-ablations", "--gm-iterations", "1", "--gm-iterations-10", "1", "--dm-iterations", "2"]
    for item in ("train.max_epochs=1", "train.retrainer.epochs=1", "synthesis.iterations=2", "retrain.seeds=2",
                 'retrain.retrainer={name="adam",epochs=2,batch_size=256,lr=1e-4}', "select.iterations=2",
                 "select.pool_per_class=20"):  # fmt: skip
        args += ["--set", item]
    done = run_benchmark("distill.py", [*args, "--json", "out.json"], tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "out.json").read_text())
    cells = [(r["img_per_class"], r["shots"], r["method"]) for r in result["table2"]]
    baselines = ["dsv", "dc", "dsa", "dm", "random_real"]
    expected = [(ipc, s, m) for ipc in (1, 10) for s in (0, 1, 10) for m in (["dsv"] if s == 0 else baselines)]
    assert cells == expected
    assert all(r["seeds"] == 2 and 0.0 <= r["mean"] <= 1.0 for r in result["table2"])
    assert set(result["claims"]) == {"1_1", "10_10"} and set(result["threads"]) == {"1", "2"}
    assert {"dc_10_10", "dsa_10_1", "dm_10_10", "dc_1_1"} <= set(result["curves"])  # both workers' curves
    assert "dsv_10_0" in result["notes"] and "dsv_1_1" in result["notes"]
    assert not result["partial"] and result["settings"]["workers"] == 2
    assert {r["method"] for r in result["coreset"]} >= {"random", "lambda_top"}
    assert -1.0 <= result["rho"] <= 1.0 and result["notes"]["select"]["fit"] == "stationarity"  # the paper's fit
    assert sorted(p.name for p in tmp_path.glob("out*")) == ["out.json"]  # the second worker's JSON merged
    shown = run_benchmark("paper_table2.py", ["out.json"], tmp_path, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    ten = next(r for r in result["table2"] if (r["img_per_class"], r["shots"], r["method"]) == (10, 10, "dm"))
    assert "| 10 | 10 |" in shown.stdout and f"{100 * ten['mean']:.2f} ± {100 * ten['std']:.2f}" in shown.stdout
    assert "| 10 img/cls, 10 shots |" in shown.stdout and "| threads |" in shown.stdout
