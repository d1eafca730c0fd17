"""benchmarks/imagenet_latent.py: the arms, their overrides, the summary, and a --quick run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from dsv.bench import imagenet_latent as latent
from dsv.bench.imagenet_arms import resolve
from dsv.pipeline import load_pipeline

PIPELINE = REPO_ROOT / "pipelines" / "imagenet_gen.toml"


def test_an_extra_arm_names_its_half_and_shares_the_strips_store_only_when_it_keeps_the_ends():
    name, arm = latent.parse_arm("strips_refine120=interpolate.refine_iterations=120")
    assert name == "strips_refine120" and arm == {
        "part": "strips",
        "store": "strips",  # the same ends: they are reused
        "set": ["interpolate.refine_iterations=120"],
    }
    _, other = latent.parse_arm('strips_lr=synthesis.lr_x=0.2,interpolate.start="noise"')
    assert other["store"] == "strips_lr"  # other ends: a store of its own
    _, edit = latent.parse_arm("edits_lr=edit.lr_x=0.04,-bn_stats")
    assert edit == {"part": "edits", "store": "edits", "set": ["edit.lr_x=0.04", "-bn_stats"]}
    for bad in ("lr=edit.lr_x=0.04", "edits_x"):
        with pytest.raises(ValueError, match="NAME starting 'strips' or 'edits'"):
            latent.parse_arm(bad)


def test_an_arms_overrides_load_as_the_profile_with_its_strips_or_edits(tmp_path):
    run = latent.LatentRun(pipeline=PIPELINE, out=tmp_path)
    photos = {name: tmp_path / f"{name}.png" for name, _ in latent.EDITS}
    raw = load_pipeline(PIPELINE).raw
    strips = load_pipeline(PIPELINE, overrides=resolve(raw, latent.arm_overrides(run, latent.ARMS["strips"], photos)))
    table = strips.config.table("interpolate")
    assert strips.config.run.stages == ["interpolate"]
    assert table.pairs() == latent.STRIPS and table.steps == 7 and table.start == "blend"
    noise = latent.arm_overrides(run, latent.ARMS["strips_noise"], photos)
    assert load_pipeline(PIPELINE, overrides=resolve(raw, noise)).config.table("interpolate").start == "noise"
    arm = latent.ARMS["edits_no_bn_stats"]
    edits = load_pipeline(PIPELINE, overrides=resolve(raw, latent.arm_overrides(run, arm, photos))).config
    assert edits.run.stages == ["edit"]
    assert [(e.image, e.target) for e in edits.table("edit").edits] == [
        (str(photos[n]), t) for n, t in latent.EDITS
    ]  # fmt: skip
    assert "bn_stats" not in [p.name for p in edits.synthesis.priors]


def test_the_summary_counts_ends_rank_correlations_and_edits():
    strip = {
        "start_named": True,
        "end_named": False,
        "rank_correlation": 0.5,
        "middle_top5_both": 1.0,
    }
    other = {**strip, "end_named": True, "rank_correlation": 1.0, "middle_top5_both": 0.0}
    s = latent.summary({"strips": [{"lite1": strip, "lite2": other}, {"lite1": other, "lite2": other}]})
    assert s["lite1_ends_named"] == 0.75 and s["lite2_ends_named"] == 1.0
    assert s["lite1_rank_corr"] == 0.75 and s["lite1_middle_top5"] == 0.5
    named = lambda v: {"named": v}  # noqa: E731
    edits = [
        {"lite0": named(True), "lite1": named(False), "lite2": named(False), "ssim": 0.5, "adversarial": True},
        {"lite0": named(True), "lite1": named(True), "lite2": named(False), "ssim": 0.7, "adversarial": False},
    ]
    e = latent.summary({"edits": edits})
    assert e == {"lite0_named": 1.0, "lite1_named": 0.5, "lite2_named": 0.0, "ssim": 0.6, "adversarial": 0.5}


@pytest.mark.slow
def test_the_quick_benchmark_scores_a_strip_and_an_edit(tmp_path):
    pytest.importorskip("dsv_bn_prior")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "imagenet_latent.py"), "--quick", "--out", "out"]
    command += ["--arms", "strips", "edits", "--json", "o.json", "--threads", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "o.json").read_text())
    assert not result["partial"] and set(result["arms"]) == {"strips", "edits"}
    (strip,) = result["strips"]
    assert (strip["from"], strip["to"]) == ("golden retriever", "balloon")
    for verifier in ("lite1", "lite2"):
        assert len(strip[verifier]["p_to"]) == 3 and -1 <= strip[verifier]["rank_correlation"] <= 1
        assert set(strip[verifier]) >= {"start_named", "end_named", "middle_top5_both"}
    (edit,) = result["edits"]
    assert edit["photo"] == "chelsea" and edit["target"] == "tiger"
    assert {"lite0", "lite1", "lite2", "ssim", "adversarial"} <= set(edit) and 0 < edit["ssim"] <= 1
    assert all((tmp_path / "out" / f"{arm}.png").read_bytes()[:4] == b"\x89PNG" for arm in ("strips", "edits"))
    assert "lite1_ends_named" in done.stdout and "lite2_named" in done.stdout
