"""The library under benchmarks/imagenet_gen.py (dsv/bench/imagenet_*.py) on small real inputs, no
ImageNet model: schedules scaled to an iteration count, equal-compute budgets and plans, a
verifier's figures per seed, the result JSON's sections, the tables printed and the Markdown."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT

from dsv.bench import imagenet_arms as arms
from dsv.bench.imagenet_scoring import comparison_json, save_grid, verified
from dsv.bench.imagenet_speed import one_forward, ratios, variants, without_bn
from dsv.bench.imagenet_tables import binomial_note, comparison_table, markdown, speed_table
from dsv.bench.imagenet_timing import budgets, per_iteration_seconds, plan, scaled, sizes_json, step_times

METHODS = arms.method_paths(REPO_ROOT / "pipelines")
NATURAL = {
    "spectrum_slope": -1.5,
    "spectrum_slope_std": 0.1,
    "saturation": 0.4,
    "saturated_fraction": 0.05,
    "verifier_bn_distance": 0.7,
}


def test_a_schedule_is_scaled_to_the_iterations_with_one_candidate_per_class():
    s = scaled(METHODS["dsv"], 30, [1, 207], [])
    assert s.iterations == 30 and s.resolutions == [[1, 64], [8, 128], [15, 224]]  # 300 -> 30: starts / 10
    assert s.lambda_warmup == 30  # held for the whole run, as in the 300-step profile
    assert s.classes == [1, 207] and s.targets == [] and s.candidates_per_class == 1
    capped = scaled(METHODS["dsv"], 30, [1], ["synthesis.lr_x=0.05"], max_size=32)
    assert capped.resolutions == [[1, 32], [8, 32], [15, 32]] and capped.lr_x == 0.05


def test_seconds_per_iteration_follow_the_schedule_and_budgets_equal_the_wall_clock():
    s = scaled(METHODS["dsv"], 30, [1], [])  # 7 steps at 64 px, 7 at 128, 16 at 224
    assert per_iteration_seconds(s, {64: 1.0, 128: 2.0, 224: 4.0}) == pytest.approx((7 + 14 + 64) / 30)
    cost = {"full": 2.0, "no_tv": 1.0, "slow": 4.0, "dsv+x": 8.0}
    sections = {"full": "ablation", "no_tv": "ablation", "slow": "methods", "dsv+x": "variants"}
    assert budgets(cost, 30, "full", sections) == {"full": 30, "no_tv": 60, "slow": 15, "dsv+x": 30}
    assert budgets({"full": 1.0, "slow": 1e9}, 30, "full", {"full": "ablation", "slow": "methods"})["slow"] == 1


def test_a_plan_adds_up_each_arm_over_the_seeds_and_the_equal_iterations_runs():
    at = {"dsv": {64: 1.0, 224: 3.0}, "deepinversion": {224: 1.0}}
    cost, budget = {"dsv": 2.0, "deepinversion": 1.0}, {"dsv": 10, "deepinversion": 20}
    result, lines = plan(at, cost, budget, ["deepinversion"], iterations=10, seeds=2)
    assert result["plan_seconds"] == {"dsv": 40.0, "deepinversion": 40.0}
    assert result["plan_total_seconds"] == 40 + 40 + 10 * 1.0 * 2
    assert result["step_seconds_by_size"] == {"dsv": {"64": 1.0, "224": 3.0}, "deepinversion": {"224": 1.0}}
    assert lines[0].split()[:6] == ["dsv", "10", "iterations", "x", "2", "seeds:"] and "1.00 s @64" in lines[0]
    assert lines[2] == "  equal-iterations runs of deepinversion: 20 s"
    assert lines[-1] == "synthesis in all: 100 s (0.03 h), calibration not counted"
    assert sizes_json({"a": {32: 0.5}}) == {"a": {"32": 0.5}}


def test_step_times_interleave_the_runs_and_skip_each_ones_first_step():
    order: list[tuple[str, int]] = []

    class Run:
        def __init__(self, name: str):
            self.name = name

        def step(self, i: int) -> None:
            order.append((self.name, i))

    from contextlib import nullcontext

    times = step_times({"a": (Run("a"), nullcontext), "b": (Run("b"), nullcontext)}, 2)
    assert order == [("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3), ("b", 3)]
    assert {k: len(v) for k, v in times.items()} == {"a": 2, "b": 2} and all(t >= 0 for t in times["a"])


def test_a_verifier_scores_over_all_seeds_and_per_seed_with_its_spread():
    # four candidates of classes 0 and 1, two seeds: seed 0 named right twice, seed 1 once
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.8, 0.1, 0.1], [0.1, 0.1, 0.8]])
    targets = np.eye(3)[[0, 1, 0, 1]]
    seed_of = np.array([0, 0, 1, 1])
    v = verified(probs, targets, seed_of, ["fish", "bird", "dog"], "efficientnet-lite1")
    assert v["model"] == "efficientnet-lite1" and v["n"] == 4
    assert v["top1"] == pytest.approx(0.75) and v["top1_by_seed"] == [1.0, 0.5]
    assert v["top1_std"] == pytest.approx(np.std([1.0, 0.5], ddof=1))
    assert v["p_target"] == pytest.approx((0.9 + 0.7 + 0.8 + 0.1) / 4)
    assert v["per_class"]["bird"]["predicted"] == ["bird", "dog"]
    one = verified(probs[:2], targets[:2], seed_of[:2], ["fish", "bird", "dog"], "m")
    assert one["top1_by_seed"] == [1.0] and one["top1_std"] == 0.0


def arm_result(top1: float, p_target: float, seeds: int = 2, **extra) -> dict:
    figures = {"top1": top1, "top5": 1.0, "p_target": p_target, "n": 4, "top1_by_seed": [top1] * seeds}
    figures["top1_std"] = 0.05 if seeds > 1 else 0.0
    return {
        "seconds": 12.3,
        "step_seconds": 0.4,
        "iterations": 30,
        "lite1": {**figures, "model": "efficientnet-lite1"},
        "lite2": {**figures, "model": "efficientnet-lite2"},
        "n": 4,
        "natural": NATURAL,
        **extra,
    }


def test_the_result_json_puts_each_arm_in_its_section_without_its_images():
    full = arm_result(0.5, 0.4, _images=np.zeros((1, 2, 2, 3)), _titles=["t"])
    results = {"full": full, "no_tv": arm_result(0.25, 0.3), "deepinversion": arm_result(0.75, 0.6)}
    sections = {"full": "ablation", "no_tv": "ablation", "deepinversion": "methods"}
    out = comparison_json(results, sections, {}, ablation=True, reference="full", partial=True)
    assert out["partial"] is True and list(out["ablation"]) == ["full", "no_tv"]
    assert list(out["methods"]) == ["dsv", "deepinversion"] and out["methods"]["dsv"] == out["ablation"]["full"]
    assert "_images" not in out["ablation"]["full"] and "_images" in full
    sections = {"dsv": "methods", "dsv+x": "variants"}
    results = {"dsv": arm_result(0.5, 0.4), "dsv+x": arm_result(0.5, 0.4)}
    equal = {"deepinversion": arm_result(0.1, 0.1)}
    out = comparison_json(results, sections, equal, ablation=False, reference="dsv", partial=False)
    assert "partial" not in out and list(out) == ["methods", "variants", "equal_iterations"]
    assert list(out["variants"]) == ["dsv+x"] and list(out["equal_iterations"]) == ["deepinversion"]


def ablation_json() -> dict:
    full = arm_result(0.5, 0.4, relative_stationarity=0.9876)
    return {
        "ablation": {"full": full, "no_tv": arm_result(0.25, 0.3, relative_stationarity=1.0)},
        "methods": {"dsv": full, "deepinversion": arm_result(0.75, 0.6, seeds=1)},
        "photos": NATURAL,
        "reference": "full",
        "step_seconds_by_size": {"full": {"32": 0.5, "64": 2.0}, "deepinversion": {"64": 1.0}},
    }


def test_the_markdown_tables_compare_every_arm_with_the_reference():
    shown = markdown(ablation_json())
    rows = [line for line in shown.splitlines() if line.startswith("| ablation |") or line.startswith("| methods |")]
    assert [row.split(" | ")[1] for row in rows] == ["full", "no_tv", "deepinversion"]  # dsv is the full arm
    assert rows[0].endswith("|  |")  # the reference has no change
    assert rows[1].endswith("| -0.100 |") and rows[2].endswith("| +0.200 |")
    assert "| 0.500 ± 0.05 | 1.000 | 0.400 |" in rows[0] and "| 0.750 | 1.000 | 0.600 |" in rows[2]  # one seed
    assert "| full | 0.9876 |" in shown and "| no_tv | 1.0000 |" in shown
    assert "| photographs (scikit-image) | -1.50 | 0.40 | 0.050 | 0.700 |" in shown
    assert "| full | 64 | 2.00 | 2.00 |" in shown and "| deepinversion | 64 | 1.00 | 1.00 |" in shown
    assert binomial_note(4) in shown


def test_the_binomial_note_gives_the_standard_error_at_two_accuracies():
    note = binomial_note(100)
    assert note.startswith("100 images per arm") and "0.050 at 0.5" in note and "0.036 at 0.85" in note


def test_the_plain_table_has_a_row_per_arm_and_section_and_the_photographs_last():
    result = ablation_json()
    result["methods"] = {"deepinversion": result["methods"]["deepinversion"]}
    lines = comparison_table(result).splitlines()
    assert lines[0] == "" and lines[1].split()[:4] == ["section", "arm", "iters", "seconds"]
    assert [line.split()[:2] for line in lines[2:5]] == [
        ["ablation", "full"],
        ["ablation", "no_tv"],
        ["equal", "wall-clock"],
    ]
    assert lines[2].split()[2:5] == ["30", "12.3", "0.50±0.05"] and lines[2].split()[-1] == "4"
    assert lines[5].startswith("photographs       scikit-image") and lines[5].split()[-4:] == [
        "-1.50",
        "0.40",
        "0.050",
        "0.700",
    ]
    assert lines[-1] == binomial_note(4)


def test_speed_ratios_are_to_deepinversion_and_carry_the_bn_stats_overhead():
    times = {"deepinversion": [1.0, 2.0, 3.0], "dsv": [4.0, 4.0], "dsv without bn_stats": [3.0], "x": [1.0]}
    rows = ratios(times, {"x": 30.0})
    assert rows["deepinversion"] == {"step_seconds": 2.0, "ratio_to_deepinversion": 1.0}
    assert rows["dsv"]["ratio_to_deepinversion"] == 2.0 and rows["dsv"]["bn_stats_overhead"] == pytest.approx(0.25)
    assert rows["x"]["first_step_seconds"] == 30.0
    table = speed_table({"speed": rows, "threads": 2, "candidates": 10}, 3).splitlines()
    assert table[1] == "step at 224 px, 10 candidates, 2 threads, median of 3 interleaved steps"
    assert (
        table[-2].endswith("(first step with compile: 30 s)") and table[-1] == "bn_stats overhead in dsv's step: 25.0%"
    )


def test_the_speed_variants_change_what_they_name():
    found = variants(METHODS)
    assert list(found)[:2] == ["deepinversion", "dsv"] and "deepinversion torch.compile" not in found
    assert "deepinversion torch.compile" in variants(METHODS, compile=True)
    assert "bn_stats" not in without_bn(METHODS["dsv"])[0] and "tv" in without_bn(METHODS["dsv"])[0]
    losses, priors = one_forward(METHODS["dsv"])
    assert losses.startswith("synthesis.losses=") and "clean = false" in losses and "augmented = true" in priors
    assert found["dsv bf16 autocast"][2] == {"bf16": True}


def test_a_grid_is_saved_with_the_arms_figures(tmp_path):
    images = np.random.default_rng(0).random((4, 8, 8, 3)).astype(np.float32)
    result = arm_result(0.5, 0.4, _images=images, _titles=["a", "b", "c", "d"])
    path = save_grid("full", result, 2, tmp_path / "full.png")
    assert path.stat().st_size > 1000
