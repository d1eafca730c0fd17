"""dsv.bench.digits and dsv.bench.input_domain: the input-domain benchmark's data, base models,
students, domain wrappers, DSV rows, scoring and table, on scikit-learn digits."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT

from dsv.bench import digits
from dsv.bench.digits import HIGH, LOW, Protocol, accuracy, digits_split, train_base, train_hard, train_teacher
from dsv.bench.input_domain import (
    DomainBench,
    InDomainAugmentation,
    SigmoidInput,
    Variant,
    format_row,
    from_domain,
    goals,
    header,
    synthesize_keywords,
    to_domain,
    top_lambda_per_class,
    variants,
)

STEPS = Protocol(steps=40, noises=(0.1,))


@pytest.fixture(scope="module")
def split():
    return digits_split()


@pytest.fixture(scope="module")
def mlp(split):
    xtr, ytr, _, _ = split
    return train_base("mlp", xtr, ytr, max_epochs=30)


@pytest.fixture(scope="module")
def bench(split):
    xtr, ytr, xte, yte = split
    return DomainBench(
        seeds=[0], protocol=STEPS, xtr=xtr, ytr=ytr, xte=xte, yte=yte, data_std=float(xtr.std()), verbose=False
    )


def test_the_split_is_stratified_and_in_the_domain(split):
    xtr, ytr, xte, yte = split
    assert xtr.shape[1:] == digits.SHAPE and len(xtr) + len(xte) == 1797 and len(xte) == 540
    assert xtr.min() == LOW and xtr.max() == HIGH
    assert torch.bincount(yte).min() >= 50  # each class in the test split, in its share


def test_the_base_models_learn_digits(split, mlp):
    xtr, ytr, xte, yte = split
    assert accuracy(mlp, xtr, ytr) > 0.99 and accuracy(mlp, xte, yte) > 0.9  # 30 epochs: (almost) all right
    for name in ("conv", "conv+in"):
        assert digits.BASE_MODELS[name]()(xtr[:2]).shape == (2, 10)


def test_students_learn_from_real_images_more_than_from_noise(split, mlp, bench):
    _, _, xte, yte = split
    labels = torch.arange(10)
    real = bench.real(0)
    assert real.shape == (10, *digits.SHAPE)
    hard = accuracy(train_hard(mlp, real, labels, 0, STEPS), xte, yte)
    noise_hard = accuracy(train_hard(mlp, bench.uniform(0), labels, 0, STEPS), xte, yte)
    teacher = accuracy(train_teacher(mlp, mlp, real, 0, STEPS, 0.1 * bench.data_std), xte, yte)
    assert hard > noise_hard + 0.15 and teacher > 0.3


def test_the_sigmoid_reparametrization_keeps_inputs_in_the_domain(mlp):
    z = torch.linspace(-20, 20, 101)
    x = to_domain(z)
    assert x.min() >= LOW and x.max() <= HIGH
    inside = torch.linspace(LOW + 0.01, HIGH - 0.01, 50)
    assert torch.allclose(to_domain(from_domain(inside)), inside, atol=1e-5)
    image = torch.zeros(1, *digits.SHAPE)
    assert torch.allclose(SigmoidInput(mlp)(from_domain(image)), mlp(image), atol=1e-4)
    flip = InDomainAugmentation(lambda x: -x)  # an augmentation on x, undone into z
    assert torch.allclose(to_domain(flip(from_domain(inside))), -inside, atol=1e-4)


def test_each_variant_becomes_the_keywords_of_its_row(mlp):
    target, plain = synthesize_keywords(Variant(name="defaults"), mlp, data_std=0.4)
    assert target is mlp and plain == {}
    v = Variant(name="x", init_std=1.0, range_weight=10.0, clamp=True, all_params=True, tv=1.0, per_class=4)
    target, kwargs = synthesize_keywords(v, mlp, data_std=0.4)
    assert kwargs["init"] == {"name": "noise", "std": 0.4} and kwargs["candidates_per_class"] == 4
    assert [p["name"] for p in kwargs["priors"]] == ["tv", "range"] and kwargs["priors"][1]["low"] == LOW
    assert kwargs["losses"][1] == {"name": "stationarity", "params": "all", "mode": "exact"}
    assert "clamp-to-domain" in [name for name, _ in kwargs["plugins"].pm.list_name_plugin()]
    target, kwargs = synthesize_keywords(Variant(name="s", sigmoid=True, tv=1.0), mlp, data_std=0.4)
    assert isinstance(target, SigmoidInput) and kwargs["init"]["std"] == 1.5 and len(kwargs["priors"]) == 1
    names = [v.name for v in variants()]
    assert len(names) == len(set(names)) and "dsv defaults" in names


def test_the_top_lambda_candidate_of_each_class_in_class_order():
    labels = np.array([0, 0, 1, 1, 2, 2] * 1 + [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    lambdas = np.array([0.1, 0.5, 0.9, 0.2, 0.3, 0.4] + [0.0] * 10)
    alive = np.ones(len(labels), dtype=bool)
    alive[1] = False  # class 0's largest lambda is dead: the alive one of largest lambda is kept
    keep = top_lambda_per_class(lambdas, alive, labels)
    assert keep[:3].tolist() == [0, 2, 5] and labels[keep].tolist() == list(range(10))


def test_a_dsv_row_is_scored_and_judged_against_the_baselines(mlp, bench):
    images, info = bench.dsv(mlp, Variant(name="c", init_std=1.0, clamp=True, options={"iterations": 20}), 0)
    assert images.shape == (10, *digits.SHAPE) and images.min() >= LOW and images.max() <= HIGH
    assert info["alive"] <= 10 and 0 <= info["as_target"] <= 10 and info["seconds"] > 0
    bench.rows.clear()
    bench.add("mlp", "random real", mlp, lambda s: (bench.real(s), {}))
    bench.add("mlp", "gaussian noise", mlp, lambda s: (bench.gaussian(s), {}))
    bench.add("mlp", "c", mlp, lambda s: (images, info))
    bench.add("mlp", "broken", mlp, lambda s: (_ for _ in ()).throw(RuntimeError("no")))
    real, noise, dsv, broken = bench.rows
    assert (
        real["inside"] == 1.0 and set(real["teacher"]) == {"0.1"} and real["hard"]["values"][0] == real["hard"]["mean"]
    )
    assert dsv["relative_stationarity"] == info["relative_stationarity"] and dsv["inside"] == 1.0
    assert broken["error"] == "RuntimeError: no" and "failed: RuntimeError" in format_row(broken, bench.rows)
    assert goals(real, bench.rows) == "" and goals(dsv, bench.rows)[0] == "D"
    strong = {**dsv, "hard": {"mean": 1.0}, "teacher": {"0.1": {"mean": 1.0}}}
    assert goals(strong, bench.rows) == "DTH"
    weak = {**dsv, "inside": 0.5, "hard": {"mean": 0.0}, "teacher": {"0.1": {"mean": noise["teacher"]["0.1"]["mean"]}}}
    assert goals(weak, bench.rows) == "---"
    assert "teach 0.1s" in header((0.1,)) and format_row(dsv, bench.rows).startswith("mlp      c ")


@pytest.mark.slow
def test_the_input_domain_benchmark_writes_its_table(tmp_path):
    args = ["--quick", "--rows", "(c) a + clamp", "--seeds", "1", "--student-steps", "10", "--teacher-noise", "0.1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "input_domain.py"), *args, "--quiet", "--json", "o.json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "o.json").read_text())
    assert set(result) == {"args", "data_std", "protocol", "base_models", "seconds", "rows"}
    assert [r["row"] for r in result["rows"]] == [
        "random real", "gaussian noise", "uniform noise", "gaussian std 1 (no clip)", "(c) a + clamp"
    ]  # fmt: skip
    baseline = {"model", "row", "hard", "teacher", "inside", "min", "max", "std", "seconds_row"}
    assert set(result["rows"][0]) == baseline
    assert set(result["rows"][-1]) == baseline | {"seconds", "relative_stationarity", "alive", "as_target"}
    assert result["rows"][-1]["inside"] == 1.0 and set(result["base_models"]) == {"mlp"}
    assert "(c) a + clamp" in done.stdout and "teach 0.1s" in done.stdout
