"""The arms of benchmarks/imagenet_gen.py --ablation (dsv/bench/imagenet_arms.py): every ablation
and preset is a valid pipeline, the override syntax of --arm, and the arms a command line plans."""

from __future__ import annotations

import pytest
from conftest import REPO_ROOT

from dsv.bench import imagenet_arms as arms
from dsv.pipeline import load_pipeline

GEN = REPO_ROOT / "pipelines" / "imagenet_gen.toml"
METHODS = arms.method_paths(REPO_ROOT / "pipelines")


@pytest.fixture(scope="module")
def raw():
    return load_pipeline(GEN).raw


def entries(synthesis, kind: str) -> list[str]:
    return [spec.name for spec in getattr(synthesis, kind)]


def test_each_ablation_removes_what_it_names_and_nothing_else(raw):
    full = load_pipeline(GEN).config.synthesis
    for name, items in arms.ABLATIONS.items():
        s = load_pipeline(GEN, overrides=arms.resolve(raw, items)).config.synthesis
        if name == "full":
            assert s == full
        elif name in ("no_stationarity", "no_bn_stats", "no_tv", "no_norm"):
            term = name[3:]
            kind = "losses" if term == "stationarity" else "priors"
            assert term in entries(full, kind) and term not in entries(s, kind)
            assert len(entries(s, kind)) == len(entries(full, kind)) - 1
            assert s.augmentations == full.augmentations and s.resolutions == full.resolutions
        elif name == "no_augmented":
            assert s.augmentations == [] and s.losses == full.losses
        else:
            assert s.resolutions == [[1, 224]] and s.losses == full.losses


def test_every_preset_is_a_valid_pipeline_that_differs_from_the_full_profile(raw):
    full = load_pipeline(GEN).config.synthesis
    for name in arms.PRESETS:
        label, items = arms.parse_arm(name)
        s = load_pipeline(GEN, overrides=arms.resolve(raw, items)).config.synthesis
        assert label == name and s != full, name
    stat = load_pipeline(GEN, overrides=arms.resolve(raw, arms.PRESETS["stat_norm_affine"])).config.synthesis
    assert next(e for e in stat.losses if e.name == "stationarity").options["params"] == ["head", "norm_affine"]
    data = load_pipeline(GEN, overrides=arms.resolve(raw, arms.PRESETS["lambda_data"])).config.synthesis
    assert data.lambda_init == pytest.approx(100.0)  # 1 / (1000 classes x weight decay 1e-5)


def test_an_arm_of_overrides_edits_entries_removes_them_and_passes_pipeline_keys(raw):
    name, items = arms.parse_arm('mine=stationarity.params=["head", "last_block"],-tv,synthesis.lr_x=0.05')
    assert name == "mine" and items == ['stationarity.params=["head", "last_block"]', "-tv", "synthesis.lr_x=0.05"]
    s = load_pipeline(GEN, overrides=arms.resolve(raw, items)).config.synthesis
    assert s.lr_x == 0.05 and "tv" not in entries(s, "priors")
    stat = next(e for e in s.losses if e.name == "stationarity")
    assert stat.options["params"] == ["head", "last_block"] and stat.options["rows"] == "targets"  # others kept
    assert raw["synthesis"]["priors"][0]["name"] == "tv"  # the pipeline's tables are not changed


def test_top_level_split_keeps_lists_tables_and_strings_whole():
    text = 'a=[1, 2],b={ x = 1, y = "p,q" },c="r,s"'
    assert arms.split_top_level(text) == ["a=[1, 2]", 'b={ x = 1, y = "p,q" }', 'c="r,s"']


@pytest.mark.parametrize(
    "text, message",
    [
        ("nosuchpreset", "or a preset: stat_all_rows"),
        ("x=", "expected NAME=KEY=VALUE"),
        ("x=justakey", "expected NAME=KEY=VALUE"),
    ],
)
def test_bad_arms_are_refused_with_the_syntax(text, message):
    with pytest.raises(ValueError, match=message):
        arms.parse_arm(text)


def test_removing_an_entry_the_pipeline_lacks_names_it(raw):
    with pytest.raises(ValueError, match="no entry 'boundary'"):
        arms.resolve(raw, ["-boundary"])


def test_every_method_names_a_pipeline_file_of_the_repository():
    assert list(METHODS) == ["dsv", "dsv_paper", "deepinversion"] and METHODS["dsv"] == GEN
    assert all(path.is_file() for path in METHODS.values())


def test_a_comparison_plans_the_methods_then_the_extra_arms():
    choice = arms.ArmChoice(arms=("lambda_data",), variants=("slow:synthesis.lr_x=1e-6",))
    planned = arms.plan_arms(choice, METHODS)
    assert list(planned) == ["dsv", "dsv_paper", "deepinversion", "lambda_data", "dsv+slow"]
    assert {n: a.section for n, a in planned.items()} == {
        "dsv": "methods",
        "dsv_paper": "methods",
        "deepinversion": "methods",
        "lambda_data": "variants",
        "dsv+slow": "variants",
    }
    assert planned["deepinversion"].path == METHODS["deepinversion"] and planned["dsv"].overrides == []
    assert planned["dsv+slow"].overrides == ["synthesis.lr_x=1e-6"]
    assert load_pipeline(GEN, overrides=planned["lambda_data"].overrides).config.synthesis.lambda_init == 100.0


def test_an_ablation_plans_the_full_arm_first_and_only_the_ablations_named(raw):
    overrides = {"dsv": ["synthesis.lr_x=0.05"], "deepinversion": ["synthesis.iterations=7"]}
    choice = arms.ArmChoice(ablation=True, ablation_arms=("no_tv",), arms=("mine=-norm",), overrides=overrides)
    planned = arms.plan_arms(choice, METHODS)
    assert list(planned) == ["full", "no_tv", "dsv_paper", "deepinversion", "mine"]  # dsv is the full arm
    assert [planned[n].section for n in planned] == ["ablation", "ablation", "methods", "methods", "ablation"]
    assert planned["full"].overrides == ["synthesis.lr_x=0.05"]  # the method's overrides go to its arms
    assert planned["no_tv"].overrides == ["synthesis.lr_x=0.05", *arms.resolve(raw, ["-tv"])]
    assert planned["deepinversion"].overrides == ["synthesis.iterations=7"]


@pytest.mark.parametrize(
    "choice, message",
    [
        (arms.ArmChoice(methods=("deepinversion",)), "dsv is the reference"),
        (arms.ArmChoice(ablation=True, ablation_arms=("no_tvv",)), "no ablation no_tvv .known: full, no_stationarity"),
        (arms.ArmChoice(arms=("nosuchpreset",)), "or a preset"),
    ],
)
def test_a_plan_refuses_what_it_cannot_run(choice, message):
    with pytest.raises(ValueError, match=message):
        arms.plan_arms(choice, METHODS)


def test_the_listing_shows_every_ablation_and_preset_with_its_overrides():
    listing = arms.arms_listing().splitlines()
    assert listing[0] == "ablation (--ablation)" and "presets (--arm NAME)" in listing
    assert "  full               (the profile as it is)" in listing
    assert any(line.split() == ["no_tv", "-tv"] for line in listing)
    assert len(listing) == 2 + len(arms.ABLATIONS) + len(arms.PRESETS)
