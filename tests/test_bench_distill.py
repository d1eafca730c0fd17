"""dsv.bench.distill and dsv.bench.table2: the distillation benchmark's options, methods, scoring,
noise floor and JSON, and Table 2's rows, claims and Markdown, on digits (a tiny base model,
a few synthesis iterations, one student seed)."""

from __future__ import annotations

import argparse
import json

import attrs
import numpy as np
import pytest
import torch

from dsv import config as cfg
from dsv.bench import table2
from dsv.bench.distill import (
    DistillBench,
    DistillOptions,
    entropy_notes,
    flag_noise_floor,
    format_row,
    noise_images,
    parse_variant,
    quick_schedule,
    synthesis_for,
)
from dsv.plugins import InputSpec

TINY = {
    "synthesis": {"iterations": 3, "candidates_per_class": 1, "lambda_warmup": 1, "checkpoint_every": 0},
    "select": {"pool_per_class": 12, "iterations": 5},
    "retrain": {"retrainer": {"name": "adam", "epochs": 3, "batch_size": 256, "lr": 1e-2}, "seeds": 2},
}


@pytest.fixture(scope="module")
def bench(tmp_path_factory, write_pipeline):
    """A DistillBench on digits: a ConvNet trained for one epoch, tiny tables."""
    root = tmp_path_factory.mktemp("bench")
    path = write_pipeline(root / "tiny.toml", name="tiny", models=root / "models", tables=TINY)
    options = DistillOptions(pipeline=str(path), dataset="digits", protocols=["hard"], dm_iterations=2)
    return DistillBench(options)


def test_options_come_from_parsed_arguments_and_quick_shortens_the_baselines():
    args = argparse.Namespace(**{f.name: f.default for f in DistillOptions.__attrs_attrs__}, extra=1)
    args.pipeline, args.gm_iterations = "p.toml", 12
    options = DistillOptions.from_namespace(args)
    assert options.pipeline == "p.toml" and options.gm_iterations == 12
    quick = options.quickened()
    assert (quick.dm_iterations, quick.gm_iterations, quick.gm_iterations_10) == (100, 2, 1)
    assert quick.pipeline == "p.toml" and options.dm_iterations == 500  # the given options unchanged


def test_a_variant_names_its_row_and_method_or_says_the_form():
    assert parse_variant("short:synthesis.iterations=3") == ("dsv_noise+short", "dsv_noise", ["synthesis.iterations=3"])
    name, method, extra = parse_variant("dsv_defaults+b:synthesis.lr_x=0.1;synthesis.tv=1")
    assert (name, method, extra) == ("dsv_defaults+b", "dsv_defaults", ["synthesis.lr_x=0.1", "synthesis.tv=1"])
    for bad, says in [
        ("noop:model.source=1", "expected [METHOD+]LABEL:synthesis.KEY=VALUE"),
        ("dm+x:synthesis.lr_x=1", "'dm' is not a DSV method"),
        ("nothing", "[METHOD+]LABEL:synthesis.KEY=VALUE"),
    ]:
        with pytest.raises(ValueError) as info:
            parse_variant(bad)
        assert says in str(info.value)


def test_each_method_gets_its_initializer_and_losses():
    table = cfg.load_text(
        '[model]\nsource = "convnet"\n[synthesis]\ninit = { name = "noise", std = 0.3 }\n'
        'losses = [{ name = "primal" }, { name = "stationarity" }]\n',
        source="test",
    ).config.synthesis
    primal = synthesis_for(table, "primal_only", 4)
    assert [t.name for t in primal.losses] == ["primal"] and primal.init.options == {"std": 0.3}
    assert primal.candidates_per_class == 4 and primal.checkpoint_every == 0
    assert synthesis_for(table, "dsv_other_data", 1).init.name == "other"
    assert synthesis_for(table, "dsv_real_init", 1).init.name == "real"
    noise = synthesis_for(table, "dsv_noise", 2)
    assert noise.init.options == {"std": 0.3} and [t.name for t in noise.losses] == ["primal", "stationarity"]


def test_the_quick_schedule_keeps_its_stages_in_order():
    assert quick_schedule([[1, 8], [500, 14], [800, 28]]) == [[1, 8], [100, 14], [160, 28]]
    assert quick_schedule([[1, 8], [3, 14], [4, 28]]) == [[1, 8], [2, 14], [3, 28]]  # never two at one start


def test_entropy_notes_read_the_curve():
    history = {"entropy": np.array([2.0, 1.5, 0.5, 0.7]), "iteration": np.array([25, 50, 75, 100])}
    notes = entropy_notes(history)
    assert notes == {
        "iterations": 100,
        "entropy_start": 2.0,
        "entropy_after_50": 1.5,
        "entropy_min": 0.5,
        "entropy_end": 0.7,
    }
    assert np.isnan(entropy_notes({"entropy": np.array([1.0, 0.5])})["entropy_after_50"])  # 2 iterations only


def test_noise_images_stay_in_the_domain_with_one_label_per_class_in_turn():
    spec = InputSpec(1, 8, (0.5,), (0.25,), [str(c) for c in range(3)], low=(-2.0,), high=(2.0,))
    for method in ("noise_gaussian", "noise_uniform"):
        images, labels = noise_images(spec, method, 2, seed=0)
        assert images.shape == (6, 1, 8, 8) and labels.tolist() == [0, 0, 1, 1, 2, 2]
        assert images.min() >= -2.0 and images.max() <= 2.0
    gaussian, _ = noise_images(spec, "noise_gaussian", 50, seed=0)
    uniform, _ = noise_images(spec, "noise_uniform", 50, seed=0)
    assert (gaussian.abs() < 1).float().mean() > 0.6 and 0.4 < (uniform.abs() < 1).float().mean() < 0.6


def test_a_dsv_row_below_the_noise_floor_of_its_protocol_and_size_is_flagged():
    rows = [
        {"method": "noise_gaussian", "protocol": "hard", "img_per_class": 1, "mean": 0.3},
        {"method": "noise_uniform", "protocol": "hard", "img_per_class": 1, "mean": 0.4},
        {"method": "noise_uniform", "protocol": "teacher", "img_per_class": 1, "mean": 0.9},
        {"method": "noise_uniform", "protocol": "hard", "img_per_class": 10, "mean": 0.9},
    ]
    plain = {"method": "dsv_noise", "protocol": "hard", "img_per_class": 1, "mean": 0.35}
    low = dict(plain)
    flag_noise_floor(low, rows)
    assert low["noise_floor"] == 0.4 and low["beats_noise_floor"] is False
    high = {**plain, "mean": 0.5}
    flag_noise_floor(high, rows)
    assert high["beats_noise_floor"] is True
    real = {**plain, "method": "random_real"}
    flag_noise_floor(real, rows)
    assert "noise_floor" not in real
    row = {**low, "shots_per_class": 0, "std": 0.01, "seeds": 3, "seconds_total": 2.0}
    assert "BELOW THE NOISE FLOOR" in format_row(row)


def test_the_bench_scores_rows_coresets_and_writes_its_json(bench, capsys):
    bench.run([1], ["noise_gaussian", "random_real", "dsv_noise", "random", "lambda_top"])
    methods = [(r["method"], r["shots_per_class"]) for r in bench.rows]
    assert methods == [("noise_gaussian", 0), ("random_real", 1), ("dsv_noise", 0)]
    assert all(0.0 <= r["mean"] <= 1.0 and r["seeds"] == 2 for r in bench.rows)
    assert "beats_noise_floor" in bench.rows[2] and bench.notes["dsv_noise/1"]["iterations"] == 3
    assert [r["method"] for r in bench.coreset] == ["random", "lambda_top"]
    assert all(r["shots_per_class"] == 12 for r in bench.coreset)
    select = bench.notes["select"]
    assert (
        select["pool"] == 120 and len(select["class_lambda_sum"]) == 10 and -1 <= select["pearson_lambda_accuracy"] <= 1
    )
    result = json.loads(json.dumps(bench.result([1], seconds=1.0, threads=1)))
    assert result["rho"] == select["pearson_lambda_accuracy"] and result["protocols"] == ["hard"]
    assert result["entropy"]["end"] == bench.notes["dsv_noise/1"]["entropy_end"]
    shown = capsys.readouterr().out
    assert "dsv_noise" in shown and "select: Pearson rho" in shown


def test_real_images_score_above_noise(bench):
    """The scoring can tell images apart: ten real images per class teach more than noise."""
    longer = attrs.evolve(bench.retrainer, epochs=30)
    real = bench.score(*bench.images_of("random_real", 10), retrainer=longer)
    noise = bench.score(*bench.images_of("noise_uniform", 10), retrainer=longer)
    assert real["mean"] > noise["mean"] + 0.2


def test_table2_makes_each_method_s_images_from_the_same_shots(bench):
    bench.options = attrs.evolve(bench.options, gm_iterations=1, gm_iterations_10=1)
    t = table2.Table2(bench)
    seen, seen_labels = t.seen(2)
    for method in ("random_real", "dm", "dc", "dsa"):
        images, labels = t.images_of(method, 1, 2)
        assert images.shape == (10, 1, 8, 8) and labels.tolist() == list(range(10))
    random_real, _ = t.images_of("random_real", 1, 2)
    assert all(any(torch.equal(x, s) for s in seen) for x in random_real)  # drawn from the shots seen
    assert {"dm_1_2", "dc_1_2", "dsa_1_2"} == set(t.curves)
    assert len(t.curves["dm_1_2"]) == 2 and len(t.curves["dc_1_2"]) == 1  # one entry per iteration
    dsv, dsv_labels = t.dsv(1, 3)  # 3 candidates per class, the top-lambda one kept
    assert dsv.shape == (10, 1, 8, 8) and dsv_labels.tolist() == list(range(10))
    assert t.notes["dsv_1_3"]["iterations"] == 3


def test_table2_runs_the_main_worker_s_part_and_writes_one_json(bench, tmp_path):
    """The rows of 1 img/cls (the main worker's; 10 img/cls is the second's), the coresets and the
    thread check, in this process."""
    out = tmp_path / "t2.json"
    bench.options = attrs.evolve(bench.options, gm_iterations=1, gm_iterations_10=1)
    run = table2.Table2Run(json=str(out), part="main", workers=1, ablations=False)
    done = table2.run_table2(bench, run)
    result = json.loads(out.read_text())
    main_cells = [c for c in table2.cells() if c[0] == 1]
    assert [(r["img_per_class"], r["shots"], r["method"]) for r in result["table2"]] == main_cells
    assert len(done.rows) == len(main_cells) and not result["partial"] and set(result["threads"]) == {"1", "2"}
    assert set(result["claims"]) == {"1_1"} and result["settings"]["part"] == "main"
    assert result["settings"]["gm_iterations"] == 1 and {r["img_per_class"] for r in result["coreset"]} >= {1, 10}
    assert result["entropy"]["end"] == result["notes"]["dsv_1_0"]["entropy_end"]
    shown = table2.markdown(result)
    assert all(f"\n| 1 | {shots} |" in shown for shots in table2.SHOTS) and "\n| 10 | 1 |" not in shown
    assert "| threads |" in shown and "| coreset |" in shown


def rows_of(cells: dict) -> list[dict]:
    return [
        {"img_per_class": i, "shots": s, "method": m, "mean": mean, "std": std, "seeds": 3, "seconds_total": 1.0}
        for (i, s, m), (mean, std) in cells.items()
    ]


def test_a_claim_is_met_only_by_more_than_the_larger_std():
    rows = rows_of(
        {
            (1, 1, "dsv"): (0.50, 0.02),
            (1, 1, "dc"): (0.40, 0.03),
            (1, 1, "dm"): (0.45, 0.01),
            (10, 10, "dsv"): (0.70, 0.05),
            (10, 10, "dsa"): (0.68, 0.01),
            (1, 0, "dsv"): (0.30, 0.01),
        }
    )
    claims = table2.claims(rows)
    assert claims["1_1"]["best_baseline"] == "dm" and claims["1_1"]["met"] is True
    assert claims["1_1"]["margin"] == pytest.approx(0.05) and claims["1_1"]["larger_std"] == 0.02
    assert claims["10_10"]["met"] is False  # 2 points ahead, 5 points of std
    assert "not met" in table2.format_claim("10_10", claims["10_10"])
    assert set(table2.claims(rows_of({(1, 1, "dsv"): (0.5, 0.0)}))) == set()  # no rival, no claim


def test_rows_are_ordered_as_the_table_and_split_between_workers():
    cells = table2.cells()
    assert len(cells) == 2 * (1 + 2 * 5) and cells[0] == (1, 0, "dsv") and cells[-1] == (10, 10, "random_real")
    shuffled = rows_of({c: (0.1, 0.0) for c in reversed(cells)})
    assert [(r["img_per_class"], r["shots"], r["method"]) for r in table2.ordered(shuffled)] == cells
    assert {table2.worker_of(i, s) for i, s, _ in cells if i == 10} == {"second"}
    assert {table2.worker_of(i, s) for i, s, _ in cells if i == 1} == {"main"}


def test_the_markdown_shows_the_cells_claims_and_extras():
    rows = rows_of({(1, 1, "dsv"): (0.5012, 0.0123), (1, 1, "dm"): (0.4, 0.01)})
    result = {
        "table2": rows,
        "claims": table2.claims(rows),
        "coreset": [{"method": "random", "img_per_class": 10, "mean": 0.8, "std": 0.0}],
        "rho": 0.25,
        "ablation": [{**rows[0], "label": "eta 1 (paper: 5)"}],
        "threads": {"2": {"dsv_1_1": 0.5, "std": 0.01}, "1": {"dsv_1_1": 0.49, "std": 0.02}},
    }
    lines = table2.markdown(result).splitlines()
    assert "| 1 | 1 | 50.12 ± 1.23 | - | - | 40.00 ± 1.00 | - |" in lines
    assert not any(line.startswith("| 10 |") for line in lines)  # no row without a cell
    assert "| 1 img/cls, 1 shots | 50.12 | dm 40.00 | +10.12 | 1.23 | yes |" in lines
    assert "| random | - | 80.00 ± 0.00 |" in lines and "rho (class lambda sum vs class test accuracy): +0.250" in lines
    assert "| eta 1 (paper: 5) | 50.12 ± 1.23 |" in lines
    assert lines.index("| 1 | 49.00 ± 2.00 |") < lines.index("| 2 | 50.00 ± 1.00 |")
    assert table2.plan()[-1].strip() == table2.BASE_ABLATION
