"""Reconstruction scoring by Haim et al.'s protocol (dsv.evaluation.reconstruction) and the
``reconstruction`` stage, on scikit-learn's digits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import dsv
from dsv import cli
from dsv.builtin.datasets import digits
from dsv.evaluation.reconstruction import match, ncc_distance, ssim
from dsv.store import RunStore


@pytest.fixture(scope="module")
def train():
    images, labels = digits(per_class=5).tensors("train")
    return images.double(), labels


def noise_like(x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    return torch.rand((n, *x.shape[1:]), generator=torch.Generator().manual_seed(seed), dtype=x.dtype)


def test_copies_among_noise_are_all_found(train):
    images, labels = train
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    # the copies in model input space (an affine change), shuffled, with noise-only extras
    candidates = torch.cat([noise_like(images, 7, 1), (images[perm] - 0.3) / 0.2, noise_like(images, 5, 2)])
    cand_labels = torch.cat([torch.full((7,), -1), labels[perm], torch.full((5,), -1)])
    score = dsv.evaluate_reconstruction(images, labels, candidates, candidate_labels=cand_labels)
    assert isinstance(score, dsv.ReconstructionScore) and score.n == len(images) == 50
    expected = 7 + torch.argsort(perm).numpy()
    assert (score.candidate == expected).all()
    assert np.allclose(score.ncc, 1.0) and np.allclose(score.ssim, 1.0, atol=1e-4)
    assert score.count_06 == score.count_04 == score.n and score.top10_ssim == pytest.approx(1.0, abs=1e-4)
    assert score.same_label.all() and score.summary()["same_label"] == 50


def test_noise_candidates_reconstruct_nothing(train):
    images, labels = train
    score = dsv.evaluate_reconstruction(images, labels, noise_like(images, 200, 3))
    assert score.count_04 == 0 and score.count_06 == 0
    assert score.top10_ssim < 0.4 and score.ncc.max() < 0.9


def test_ssim_falls_with_the_noise_level(train):
    images, labels = train
    means = []
    for level in (0.0, 0.05, 0.1, 0.2, 0.4):
        g = torch.Generator().manual_seed(4)
        noisy = images + level * torch.randn(images.shape, generator=g, dtype=images.dtype)
        score = dsv.evaluate_reconstruction(images, labels, noisy)
        if level <= 0.1:  # each still finds its own copy (at 0.4 on 8x8 digits some do not)
            assert (score.candidate == np.arange(len(images))).all()
        means.append(float(score.ssim.mean()))
    assert means[0] == pytest.approx(1.0, abs=1e-4)
    assert all(a > b + 0.02 for a, b in zip(means, means[1:])), means


def test_ncc_is_invariant_to_affine_brightness(train):
    images, _ = train
    candidates = noise_like(images, 30, 5) * 0.5 + images[:30] * 0.5
    index, ncc = match(images, candidates)
    for a, b in ((3.0, -1.0), (0.01, 7.0)):
        index2, ncc2 = match(a * images + b, candidates)
        index3, ncc3 = match(images, a * candidates + b)
        assert torch.equal(index, index2) and torch.equal(index, index3)
        assert torch.allclose(ncc, ncc2) and torch.allclose(ncc, ncc3)
    flipped, _ = match(-images, candidates)  # a < 0 is not the same image
    assert not torch.equal(index, flipped)


def test_haims_ncc_distance_by_hand():
    # one 1x2x2 image each: x = [0, 1, 2, 3], y = [0, 2, 1, 3]. Both have mean 1.5 and unbiased
    # variance 5/3, so a - b = (x - y) / sqrt(5/3) = [0, -1, 1, 0] / sqrt(5/3): sum (a - b)^2 =
    # 2 / (5/3) = 1.2, over C*H*W = 4 values: 0.3. The correlation: sum (x - 1.5)(y - 1.5) =
    # 2.25 - 0.25 - 0.25 + 2.25 = 4, over (P - 1) * variance = 3 * 5/3: 0.8
    x = torch.tensor([0.0, 1.0, 2.0, 3.0]).reshape(1, 1, 2, 2)
    y = torch.tensor([0.0, 2.0, 1.0, 3.0]).reshape(1, 1, 2, 2)
    assert ncc_distance(x, y).item() == pytest.approx(0.3)
    assert match(x, y)[1].item() == pytest.approx(0.8)
    assert np.corrcoef(x.flatten(), y.flatten())[0, 1] == pytest.approx(0.8)
    # 2 (P - 1) / P * (1 - ncc) is the distance, for every pair
    a, b = torch.rand(6, 1, 5, 5), torch.rand(9, 1, 5, 5)
    d = ncc_distance(a, b)
    _, best = match(a, b)
    assert torch.allclose(d.min(dim=1).values, 2 * 24 / 25 * (1 - best))


def test_ssim_is_kornias_window_3_and_bounded(train):
    images, _ = train
    assert torch.allclose(ssim(images[:4], images[:4]), torch.ones(4, dtype=torch.float64))
    assert (ssim(images[:4], 1 - images[:4]) < 0).all()  # anti-correlated structure
    with pytest.raises(ValueError, match="same shape"):
        ssim(images[:4], images[:3])


@pytest.fixture(scope="module")
def reconstruction_run(tmp_path_factory, write_pipeline):
    root = tmp_path_factory.mktemp("reconstruction")
    path = write_pipeline(
        root / "reconstruction.toml",
        name="reconstruction",
        stages=("train", "synthesize", "reconstruction", "report"),
        store=root / "run.zarr",
        models=root / "models",
        synthesis={"iterations": 3, "candidates_per_class": 2},
        tables={
            "data": {"options": {"per_class": 4}},
            "reconstruction": {"best": 6, "premise": True, "premise_samples": 12, "premise_params": "head"},
        },
    )
    assert cli.main(["run", str(path), "--no-progress"]) == 0
    return RunStore.open(root / "run.zarr")


def test_the_stage_scores_the_training_images_and_draws_them(reconstruction_run, capsys):
    store = reconstruction_run
    r = store.results["reconstruction"]
    assert r["n"] == 40 and r["candidates"] == 20 and r["candidate_set"] == "all"
    assert len(r["ssim"]) == len(r["ncc"]) == len(r["candidate"]) == len(r["margins"]) == 40
    assert all(0 <= i < 20 for i in r["candidate"]) and all(-1 <= s <= 1 for s in r["ssim"])
    assert r["count_04"] == sum(s > 0.4 for s in r["ssim"]) and r["count_06"] <= r["count_04"]
    assert r["top10_ssim"] == pytest.approx(float(np.mean(sorted(r["ssim"])[-10:])))
    assert sum(m is not None for m in r["margins"]) == 12 == r["premise"]["n"]
    png = store.export_path(r["png"])
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["show", str(store.path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["reconstruction"]["count_04"] == r["count_04"]
    page = (store.path / "exports" / "report.html").read_text()
    section = page[page.index("Reconstruction of the training images") :]
    assert f"{r['count_04']} of 40" in section and "data:image/png;base64," in section


def test_the_table_is_checked(tmp_path, write_pipeline, capsys):
    path = write_pipeline(
        tmp_path / "bad.toml",
        stages=("synthesize", "reconstruction"),
        store=tmp_path / "run.zarr",
        synthesis={"iterations": 1},
        tables={"reconstruction": {"candidates": "dead", "samples": -1, "png": "../x.png"}},
    )
    assert cli.main(["run", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "reconstruction.candidates: expected 'all' or 'alive'" in err
    assert "reconstruction.samples: must be at least 0" in err and "reconstruction.png" in err
