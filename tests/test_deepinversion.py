"""DeepInversion's recipe as dsv options: jitter, cross entropy, tv l2 and l2 priors, cosine
learning rate with warm-up, Adam betas, priors on the augmented copy, one forward per step."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, image_classifier
from torch import nn

from dsv import kkt
from dsv.builtin.augmentations import Jitter
from dsv.builtin.losses import CrossEntropy, Primal
from dsv.builtin.priors import Norm, TotalVariation
from dsv.config import SynthesisConfig, check_synthesis
from dsv.pipeline import load_pipeline

# ---- the terms ------------------------------------------------------------------------------------


def test_jitter_rolls_the_whole_batch_by_one_offset_within_the_limit():
    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).view(2, 3, 16, 16)
    jitter = Jitter(pixels=4, reference_size=16)
    seen = set()
    for seed in range(40):
        torch.manual_seed(seed)
        out = jitter(x)
        # find the offset: the roll that maps x onto out, the same for every image and channel
        matches = [
            (dy, dx)
            for dy in range(-4, 5)
            for dx in range(-4, 5)
            if torch.equal(torch.roll(x, shifts=(dy, dx), dims=(-2, -1)), out)
        ]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 10  # offsets vary, within [-4, 4] in both directions
    torch.manual_seed(7)
    first = jitter(x)
    torch.manual_seed(7)
    assert torch.equal(jitter(x), first)  # drawn from torch's seeded generator


def test_blur_smooths_a_real_image_and_passes_gradients():
    from dsv.builtin.augmentations import Blur
    from dsv.synthesis.initializers import read_image

    photo = read_image(REPO_ROOT / "pipelines" / "images" / "chelsea.jpg", 3, 64)[None].requires_grad_(True)
    torch.manual_seed(0)
    blurred = Blur(sigma=2.0, p=1.0)(photo)
    detail = lambda x: (x[..., 1:, :] - x[..., :-1, :]).abs().mean()  # noqa: E731
    assert blurred.shape == photo.shape and detail(blurred) < 0.8 * detail(photo)
    blurred.sum().backward()
    assert photo.grad is not None and photo.grad.abs().sum() > 0
    assert torch.equal(Blur(sigma=2.0, p=0.0)(photo), photo)
    with pytest.raises(ValueError, match="sigma must be >= 0.1"):
        Blur(sigma=0.0)


def test_jitter_limit_scales_with_the_candidates_size():
    assert Jitter(pixels=30).limit(224) == 30
    assert Jitter(pixels=30).limit(112) == 15
    assert Jitter(pixels=30, reference_size=0).limit(112) == 30
    x = torch.randn(1, 1, 8, 8)
    torch.manual_seed(0)
    rolled = Jitter(pixels=30)(x)  # limit int(30 * 8 / 224) = 1 at 8 px
    assert any(
        torch.equal(torch.roll(x, shifts=(dy, dx), dims=(-2, -1)), rolled) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
    )
    assert torch.equal(Jitter(pixels=0)(x), x)
    with pytest.raises(ValueError):
        Jitter(pixels=-1)


def test_total_variation_l2_is_deepinversions_sum_of_four_norms_by_hand():
    x = torch.tensor([[0.0, 1.0], [3.0, 7.0]]).view(1, 1, 2, 2)
    # right: (0-1, 3-7) -> sqrt(17); down: (0-3, 1-7) -> sqrt(45); x[1,0]-x[0,1] = 2; x[0,0]-x[1,1] = -7
    expected = math.sqrt(17) + math.sqrt(45) + 2.0 + 7.0
    assert kkt.total_variation_l2(x).item() == pytest.approx(expected)
    assert TotalVariation(distance="l2")(x).item() == pytest.approx(expected)
    assert TotalVariation()(x).item() == pytest.approx(kkt.total_variation(x).item())
    assert kkt.total_variation_l2(torch.ones(2, 3, 5, 5)).item() == 0.0
    with pytest.raises(ValueError):
        TotalVariation(distance="l3")


def test_l2_norm_prior_is_the_norm_of_the_whole_batch():
    x = torch.tensor([3.0, 4.0, 0.0, 12.0]).view(2, 1, 1, 2)
    assert kkt.l2_norm(x).item() == pytest.approx(13.0)
    assert Norm(distance="l2")(x).item() == pytest.approx(13.0)
    assert Norm()(x).item() == pytest.approx(169 / 4)  # the mean square stays the default


def test_cross_entropy_counts_every_alive_candidate_right_or_wrong():
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 1.0, 3.0], [2.0, 0.0, 0.0]])
    targets = torch.eye(3)  # candidate 0 is right, 1 and 2 are wrong
    alive = torch.tensor([True, True, False])
    batch = kkt.KKTBatch(nn.Identity(), logits, logits, targets, torch.ones(3), alive)
    ce = kkt.soft_cross_entropy(logits, targets)
    assert CrossEntropy()(batch).item() == pytest.approx(float(ce[:2].mean()))
    assert Primal()(batch).item() == pytest.approx(float(ce[1] / 2))  # primal drops the right one


# ---- the schedule and the optimizer --------------------------------------------------------------


def test_cosine_schedule_warms_up_and_decays_within_each_resolution_stage(make_run):
    run = make_run(lr_x=0.2, lr_schedule="cosine", lr_warmup=2, iterations=21, resolutions=[(1, 8), (12, 16)])
    assert run.stage_bounds(1) == (1, 11) and run.stage_bounds(11) == (1, 11) and run.stage_bounds(12) == (12, 21)
    assert run.lr_x_at(1) == pytest.approx(0.1) and run.lr_x_at(2) == pytest.approx(0.2)  # warm-up
    assert run.lr_x_at(3) == pytest.approx(0.2)  # the cosine starts at the full rate
    # DeepInversion's lr_cosine_policy: 0.5 (1 + cos(pi e / es)), e after warm-up, es the stage less warm-up
    assert run.lr_x_at(7) == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 4 / 9)))
    assert run.lr_x_at(11) < 0.01
    assert run.lr_x_at(12) == pytest.approx(0.1)  # a new stage warms up again
    assert run.lr_x_at(21) < 0.01
    constant = make_run(lr_x=0.2)
    assert {constant.lr_x_at(i) for i in (1, 5, 10)} == {0.2}


def test_the_step_uses_the_scheduled_rate_and_the_configured_betas(make_run):
    run = make_run(lr_x=0.2, lr_schedule="cosine", lr_warmup=4, betas_x=(0.5, 0.9))
    group = run.optimizer.param_groups[0]
    assert group["betas"] == (0.5, 0.9)
    assert run.optimizer.param_groups[1]["betas"] == (0.9, 0.999)  # lambda keeps Adam's defaults
    x0 = run.x.detach().clone()
    run.step(1)
    assert group["lr"] == pytest.approx(0.05)
    # Adam's first step moves each pixel by lr (sign of the gradient), here 0.05 at most
    assert (run.x.detach() - x0).abs().max().item() == pytest.approx(0.05, rel=1e-3)


def test_a_restored_run_with_jitter_and_cosine_takes_the_same_steps(make_run):
    kwargs = dict(
        augmentations=[Jitter(pixels=2, reference_size=0)],
        lr_schedule="cosine",
        lr_warmup=2,
        betas_x=(0.5, 0.9),
        iterations=8,
    )
    torch.manual_seed(0)
    straight = make_run(**kwargs)
    for i in range(1, 9):
        straight.step(i)
    torch.manual_seed(0)
    first = make_run(**kwargs)
    for i in range(1, 5):
        first.step(i)
    arrays, scalars = first.state()
    torch.manual_seed(123)  # whatever ran in between
    second = make_run(**kwargs)
    second.restore(arrays, scalars, 4)
    for i in range(5, 9):
        second.step(i)
    assert torch.equal(second.x.detach(), straight.x.detach())


def test_synthesis_table_checks_the_new_keys():
    problems = check_synthesis(SynthesisConfig(lr_schedule="step", lr_warmup=-1, betas_x=[0.5, 1.0]))
    assert any(p.startswith("synthesis.lr_schedule: expected one of 'constant', 'cosine'") for p in problems)
    assert any(p.startswith("synthesis.lr_warmup:") for p in problems)
    assert any(p.startswith("synthesis.betas_x:") for p in problems)
    assert check_synthesis(SynthesisConfig(lr_schedule="cosine", lr_warmup=100, betas_x=[0.5, 0.9])) == []


# ---- one forward per step, priors on the augmented copy ------------------------------------------


class Counting(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.inputs = inner, []

    def forward(self, x):
        self.inputs.append(x)
        return self.inner(x)


def test_without_a_clean_loss_the_step_makes_one_forward_on_the_augmented_copy(make_run):
    model = Counting(image_classifier())
    seen = []

    def tv_seen(x):
        seen.append(x)
        return kkt.total_variation(x)

    tv_seen.weight = 1.0  # type: ignore[attr-defined]
    tv_seen.augmented = True  # type: ignore[attr-defined]
    run = make_run(
        model=model,
        losses=[("cross_entropy", CrossEntropy(clean=False))],
        augmentations=[lambda x: x.flip(-1)],
        priors=[("tv", tv_seen), ("norm", Norm(weight=0.1))],
    )
    x0 = run.x.detach().clone()
    metrics = run.step(1)
    assert len(model.inputs) == 1 and model.inputs[0] is seen[0]  # tv saw what the model saw
    assert torch.equal(seen[0].detach(), x0.flip(-1))
    assert "cross_entropy" not in metrics and "cross_entropy_aug" in metrics
    assert {"entropy", "accuracy", "norm", "tv"} <= set(metrics)
    # with a clean loss the step makes both passes, as before
    model.inputs.clear()
    make_run(model=model, augmentations=[lambda x: x.flip(-1)]).step(1)
    assert len(model.inputs) == 2


def test_the_deepinversion_pipeline_file_loads_and_follows_the_recipe():
    loaded = load_pipeline(Path(REPO_ROOT) / "pipelines" / "imagenet_deepinversion.toml")
    s = loaded.config.synthesis
    assert s.lr_schedule == "cosine" and s.betas_x == [0.5, 0.9]
    assert [a.name for a in s.augmentations] == ["jitter", "flip"]
    assert [loss.name for loss in s.losses] == ["cross_entropy"]
    assert {p.name for p in s.priors} == {"tv", "norm", "bn_stats"}
    gen = load_pipeline(Path(REPO_ROOT) / "pipelines" / "imagenet_gen.toml").config
    assert s.classes == gen.synthesis.classes and loaded.config.model.source == gen.model.source
