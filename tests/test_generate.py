"""Generation stages on digits: evaluate (verifier), interpolate (mixture targets), edit (from an image file)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import tomllib
import torch
from conftest import REPO_ROOT
from PIL import Image

from dsv import cli
from dsv import config as cfg
from dsv.builtin.datasets import digits as load_digits_bundle
from dsv.builtin.models import ModelRequest, load_state_dict
from dsv.errors import ConfigError, DsvError
from dsv.evaluation.latent import edit_ssim, pixels, rank_correlation
from dsv.pipeline import Pipeline, load_pipeline, load_pipeline_text
from dsv.stages.edit import start_images
from dsv.stages.interpolate import mixture_targets
from dsv.store import RunStore
from dsv.store.export import to_images
from dsv.synthesis.build import target_matrix

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# 3 candidates, 12 iterations, growing from 8x8 to 16x16 at iteration 6
GEN_SYNTHESIS = {
    "classes": [0, 3, 7],
    "iterations": 12,
    "checkpoint_every": 0,
    "resolutions": [[1, 8], [6, 16]],
    "losses": [{"name": "primal"}, {"name": "stationarity", "distance": "l1", "params": "head"}],
    "priors": [{"name": "tv", "weight": 1e-2}],
}


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory):
    """A real digit (a 3 of the digits data set) as an 8 wide, 12 tall grey PNG: the 8x8 digit
    between two white bars of 2 rows, which a center crop to a square removes."""
    bundle = load_digits_bundle()
    images, labels = bundle.tensors("test")
    three = images[(labels == 3).nonzero()[0, 0], 0].numpy()
    framed = np.ones((12, 8), dtype=np.float32)
    framed[2:10] = three
    path = tmp_path_factory.mktemp("img") / "three.png"
    Image.fromarray(np.round(framed * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def generated(tmp_path_factory, digit_png, write_pipeline):
    """One run of every generation stage (train cached, 12 iterations each; a few seconds)."""
    root = tmp_path_factory.mktemp("gen")
    store, cache = root / "run.zarr", root / "models"
    gen = dict(name="gen", store=store, models=cache, synthesis=GEN_SYNTHESIS)
    first = write_pipeline(root / "train.toml", **gen, stages=("train", "synthesize"))
    assert cli.main(["run", str(first), "--no-progress"]) == 0  # trains and caches the generator's weights
    weights = next(cache.glob("*.pt"))
    tables = {
        "evaluate": {"model": "convnet", "weights_path": weights, "options": {"width": 8, "depth": 2}},
        "interpolate": {
            "from_class": 0,
            "to_class": 7,
            "steps": 4,
            "iterations": 8,
            "refine_iterations": 3,
            "png": "strip.png",
        },
        "edit": {"edits": [{"image": digit_png, "target": 8}], "iterations": 10, "png": "edits.png"},
    }
    stages = ("train", "synthesize", "evaluate", "interpolate", "edit", "export")
    pipeline = write_pipeline(root / "gen.toml", **gen, stages=stages, tables=tables)
    assert cli.main(["run", str(pipeline), "--no-progress"]) == 0
    return {"root": root, "store": store, "weights": weights, "pipeline": pipeline}


# ---- mixture targets ---------------------------------------------------------------------------


def test_a_mixture_target_parses_and_becomes_a_normalized_row():
    loaded = load_pipeline_text(
        '[model]\nsource = "convnet"\n[synthesis]\ntargets = [{ 2 = 0.4, 5 = 0.6 }, 1, { 3 = 2, 4 = 2 }]\n',
        source="t.toml",
    )
    rows = target_matrix(loaded.config.synthesis.targets, [], 2, 10, "t.toml")
    assert rows.shape == (6, 10)
    assert torch.allclose(rows.sum(1), torch.ones(6))
    assert rows[0, 2] == pytest.approx(0.4) and rows[1, 5] == pytest.approx(0.6)
    assert rows[2, 1] == 1 and rows[4, 3] == pytest.approx(0.5)


def test_a_mixture_with_a_class_out_of_range_names_the_key():
    with pytest.raises(ConfigError, match=r"synthesis\.targets\[0\]: class 12 is out of range"):
        target_matrix([{"1": 0.5, "12": 0.5}], [], 1, 10, "t.toml")


def test_mixture_targets_go_from_one_class_to_the_other():
    strip = mixture_targets(2, 5, 5)
    assert strip[0] == {"2": 1.0} and strip[-1] == {"5": 1.0}
    assert [row.get("5", 0.0) for row in strip] == pytest.approx([0, 0.25, 0.5, 0.75, 1])
    assert all(sum(row.values()) == pytest.approx(1) for row in strip)


def test_interpolate_synthesizes_the_ends_then_refines_their_blends(generated):
    ends = RunStore.open(generated["store"] / "generated" / "interpolate")
    np.testing.assert_array_equal(ends.candidates()["targets"].argmax(1), [0, 7])  # the ends, once each
    assert ends.meta["committed_iteration"] == 8
    middle = RunStore.open(generated["store"] / "generated" / "interpolate_blend")
    targets = middle.candidates()["targets"]
    np.testing.assert_allclose(targets[:, 7], [1 / 3, 2 / 3], atol=1e-6)  # the two middle steps of 4
    np.testing.assert_allclose(targets[:, 0] + targets[:, 7], 1, atol=1e-6)
    assert middle.meta["committed_iteration"] == 3
    assert (generated["store"] / "exports" / "strip.png").read_bytes()[:8] == PNG_MAGIC
    assert RunStore.open(generated["store"]).meta["results"]["interpolation"]["start"] == "blend"


def test_the_middle_starts_from_the_pixel_blend_of_the_ends(generated, tmp_path):
    """With no refinement the middle of the strip is exactly the blend (1 - d) x_a + d x_b."""
    pipeline = Pipeline.from_toml(
        generated["pipeline"],
        overrides=['run.stages=["train", "interpolate"]', "interpolate.refine_iterations=0"],
        progress=False,
    )
    store = pipeline.run()
    assert store is not None
    from dsv.stages.interpolate import strip_images

    (strip,) = strip_images(pipeline.context, RunStore.open(store.store))
    ends = RunStore.open(generated["store"] / "generated" / "interpolate").candidates()["x"]
    assert strip.shape[0] == 4
    np.testing.assert_array_equal(strip[0], ends[0])
    np.testing.assert_array_equal(strip[-1], ends[1])
    np.testing.assert_allclose(strip[1], (2 / 3) * ends[0] + (1 / 3) * ends[1], atol=1e-6)
    np.testing.assert_allclose(strip[2], (1 / 3) * ends[0] + (2 / 3) * ends[1], atol=1e-6)


def test_noise_start_runs_each_step_from_one_shared_noise_image(generated, tmp_path):
    pipeline = Pipeline.from_toml(
        generated["pipeline"],
        overrides=[
            'run.stages=["train", "interpolate"]',
            'interpolate.start="noise"',
            "interpolate.iterations=1",
        ],
        store=str(tmp_path / "noise.zarr"),
        progress=False,
    )
    pipeline.run()
    sub = RunStore.open(tmp_path / "noise.zarr" / "generated" / "interpolate")
    x, targets = sub.candidates()["x"], sub.candidates()["targets"]
    np.testing.assert_allclose(targets[:, 7], [0, 1 / 3, 2 / 3, 1], atol=1e-6)
    assert sub.meta["committed_iteration"] == 1
    assert np.corrcoef(x[0].ravel(), x[3].ravel())[0, 1] > 0.9  # one step from the one shared start


def test_several_strips_are_rows_of_one_export(generated, tmp_path):
    pipeline = Pipeline.from_toml(
        generated["pipeline"],
        overrides=[
            'run.stages=["train", "interpolate"]',
            "interpolate.strips=[{ from_class = 3, to_class = 0 }]",
            "interpolate.steps=3",
            "interpolate.refine_iterations=1",
        ],
        store=str(tmp_path / "two.zarr"),
        progress=False,
    )
    pipeline.run()
    store = RunStore.open(tmp_path / "two.zarr")
    assert store.meta["results"]["interpolation"]["strips"] == [["0", "7"], ["3", "0"]]
    ends = RunStore.open(tmp_path / "two.zarr" / "generated" / "interpolate").candidates()["targets"]
    np.testing.assert_array_equal(ends.argmax(1), [0, 7, 3])  # class 0 ends two strips: made once
    middle = RunStore.open(tmp_path / "two.zarr" / "generated" / "interpolate_blend").candidates()["targets"]
    np.testing.assert_allclose(middle[:, [0, 3, 7]], [[0.5, 0, 0.5], [0.5, 0.5, 0]], atol=1e-6)


# ---- the resolution schedule -------------------------------------------------------------------


def test_the_schedule_ends_at_the_last_size(generated):
    x = RunStore.open(generated["store"]).candidates()["x"]
    assert x.shape == (3, 1, 16, 16)  # started at 8x8 (resolutions = [[1, 8], [6, 16]])
    sub = RunStore.open(generated["store"] / "generated" / "interpolate").candidates()["x"]
    assert sub.shape[-1] == 16  # the strip runs the same schedule


def test_fewer_iterations_scale_the_schedule_so_it_still_ends_at_the_last_size():
    s = load_pipeline(REPO_ROOT / "pipelines" / "imagenet_gen.toml").config.synthesis
    short = cfg.with_iterations(s, 100)
    assert short.iterations == 100 and s.iterations == 300
    assert [size for _, size in short.resolutions] == [64, 128, 224]
    assert [start for start, _ in short.resolutions] == [1, 25, 50]  # 1, 76, 151 of 300
    assert short.lambda_warmup == 100  # held for the whole run, as in the profile
    assert cfg.with_iterations(s, 300) == s


def test_imagenet_gen_starts_small_and_ends_at_the_model_size():
    for name in ("imagenet_gen.toml", "imagenet_gen_gpu.toml"):
        loaded = load_pipeline(REPO_ROOT / "pipelines" / name)
        schedule = loaded.config.synthesis.resolutions
        sizes = [size for _, size in schedule]
        starts = [start for start, _ in schedule]
        assert sizes == sorted(sizes) and sizes[0] < 224 and sizes[-1] == 224, name
        assert starts == sorted(starts) and starts[-1] < loaded.config.synthesis.iterations, name


# ---- editing from an image file ----------------------------------------------------------------


def test_edit_starts_from_the_image_file_and_exports_before_after(generated, digit_png):
    store = RunStore.open(generated["store"])
    edits = store.results["edits"]
    assert [e["target"] for e in edits] == ["8"]
    sub = RunStore.open(generated["store"] / "generated" / "edit")
    assert sub.candidates()["x"].shape == (1, 1, 8, 8)  # the model's size, no schedule
    assert sub.meta["committed_iteration"] == 10
    png = generated["store"] / "exports" / "edits.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert Image.open(png).size[0] > Image.open(png).size[1]  # before and after side by side


def test_the_edit_is_scored_by_the_verifier_and_against_the_image(generated):
    """With an [evaluate] table each edit records what the verifier names it, its SSIM to the
    start image and whether only the generator names the target (adversarial)."""
    (edit,) = RunStore.open(generated["store"]).results["edits"]
    (scored,) = edit["verifiers"].values()
    assert set(scored) == {"named", "top1", "p_target"} and 0 <= scored["p_target"] <= 1
    assert scored["named"] == (scored["top1"] == "8")
    assert edit["generator"]["named"] == (edit["after"] == "8")
    assert edit["adversarial"] == (edit["generator"]["named"] and not scored["named"])
    sub = RunStore.open(generated["store"] / "generated" / "edit")
    context = Pipeline.from_toml(generated["pipeline"], progress=False).context
    x = sub.candidates()["x"]
    before = pixels(start_images(context, x.shape), sub.meta["mean"], sub.meta["std"])
    after = pixels(x, sub.meta["mean"], sub.meta["std"])
    assert edit["ssim"] == pytest.approx(edit_ssim(before[0], after[0]), abs=1e-4)
    assert edit["ssim"] < 1.0  # the edit changed the image


def test_edit_priors_replace_the_synthesis_priors_for_the_edits_only(generated):
    from dsv.stages.edit import edit_synthesis

    overrides = ['edit.priors=[{ name = "norm", weight = 0.5 }]']
    context = Pipeline.from_toml(generated["pipeline"], overrides=overrides, progress=False).context
    assert [(p.name, p.options) for p in edit_synthesis(context).priors] == [("norm", {"weight": 0.5})]
    assert [p.name for p in context.config.synthesis.priors] == ["tv"]  # the strips keep theirs
    plain = Pipeline.from_toml(generated["pipeline"], progress=False).context
    assert edit_synthesis(plain).priors == plain.config.synthesis.priors


def test_keep_holds_the_edit_closer_to_its_image(generated, tmp_path):
    """edit.keep weighs 1 - SSIM to the start image: the same strong edit stays closer to it."""
    ssim = {}
    for keep in (0.0, 50.0):
        overrides = ['run.stages=["train", "edit"]', "edit.lr_x=0.3", f"edit.keep={keep}"]
        store = tmp_path / f"keep{keep}.zarr"
        Pipeline.from_toml(generated["pipeline"], overrides=overrides, store=str(store), progress=False).run()
        ssim[keep] = RunStore.open(store).results["edits"][0]["ssim"]
        assert RunStore.open(store / "generated" / "edit").meta["config"].get("extra") == (
            {"keep": keep} if keep else None
        )
    assert ssim[50.0] > ssim[0.0] + 0.05, ssim


def test_the_strip_is_scored_by_the_verifier(generated):
    result = RunStore.open(generated["store"]).results["interpolation"]
    assert result["strips"] == [["0", "7"]] and result["d"] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    ((strip,),) = result["verifiers"].values()
    assert len(strip["p_to"]) == 4 and all(0 <= p <= 1 for p in strip["p_to"])
    assert strip["end_named"] == (strip["end_top1"] == "7") and strip["start_named"] == (strip["start_top1"] == "0")
    assert strip["rank_correlation"] == pytest.approx(rank_correlation(strip["p_to"]), abs=0.05)
    assert strip["middle_top5_both"] in (0.0, 0.5, 1.0)  # two middle steps of four


def test_rank_correlation_and_ssim_of_real_images():
    assert rank_correlation([0.01, 0.02, 0.3, 0.9]) == pytest.approx(1.0)
    assert rank_correlation([0.9, 0.3, 0.02, 0.01]) == pytest.approx(-1.0)
    assert rank_correlation([0.01, 0.3, 0.02, 0.9]) == pytest.approx(0.8)  # one swap of four: 1 - 6 * 2 / 60
    assert rank_correlation([0.5, 0.5, 0.5]) == 0.0
    from dsv.synthesis.initializers import read_image

    a, b = (read_image(REPO_ROOT / "pipelines" / "images" / f, 3, 64).numpy() for f in ("chelsea.jpg", "coffee.jpg"))
    assert edit_ssim(a, a) == pytest.approx(1.0, abs=1e-5)
    assert edit_ssim(a, b) < 0.3  # two photographs
    noisy = np.clip(a + np.random.default_rng(0).normal(0, 0.05, a.shape), 0, 1).astype(np.float32)
    assert edit_ssim(a, b) < edit_ssim(a, noisy) < 1.0


def test_the_image_initializer_reads_the_file_into_model_space(digit_png):
    from dsv.builtin.initializers import ImageInit, InitContext
    from dsv.builtin.models import InputSpec

    spec = InputSpec(1, 8, (0.5,), (0.25,), [str(i) for i in range(10)])
    x = ImageInit(paths=[str(digit_png)])((1, 1, 8, 8), torch.zeros(1), InitContext(torch.Generator(), spec))
    pixels = to_images(x.numpy(), spec.mean, spec.std)[0, ..., 0]
    original = np.asarray(Image.open(digit_png).convert("L"), dtype=np.float32) / 255
    np.testing.assert_allclose(pixels, original[2:10], atol=1e-5)  # the center square, bars cropped
    x16 = ImageInit(paths=[str(digit_png)])((1, 1, 16, 16), torch.zeros(1), InitContext(torch.Generator(), spec))
    assert x16.shape == (1, 1, 16, 16)  # resized to the size asked for


def test_a_missing_image_file_is_named(generated, tmp_path, write_pipeline):
    write_pipeline(
        tmp_path / "bad.toml",
        name="gen",
        stages=("train", "synthesize", "edit"),
        store=tmp_path / "s.zarr",
        models=generated["root"] / "models",
        synthesis={**GEN_SYNTHESIS, "iterations": 2},
        tables={"edit": {"edits": [{"image": tmp_path / "nope.png", "target": 1}]}},
    )
    with pytest.raises(DsvError, match=r"nope\.png: image file not found"):
        Pipeline.from_toml(tmp_path / "bad.toml", progress=False).run()


def test_the_edit_stage_without_a_table_is_a_config_error():
    with pytest.raises(ConfigError, match=r"t\.toml: run\.stages: the edit stage needs an \[edit\] table"):
        load_pipeline_text('[run]\nstages = ["synthesize", "edit"]\n[model]\nsource = "convnet"\n', source="t.toml")


# ---- the verifier --------------------------------------------------------------------------------


def test_the_verifier_scores_the_candidates_overall_and_per_class(generated, capsys):
    assert cli.main(["show", str(generated["store"]), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["verifier"]
    assert result["model"] == "convnet" and result["n"] == 3
    assert set(result["per_class"]) == {"0", "3", "7"}
    # the verifier here is the generator itself: recompute its top-1 on the clamped pixel images
    store = RunStore.open(generated["store"])
    c, meta = store.candidates(), store.meta
    from dsv.builtin.models import convnet

    model = convnet(
        ModelRequest(data=load_digits_bundle(), weights_path=str(generated["weights"])), width=8, depth=2
    ).module
    pixels = torch.from_numpy(to_images(c["x"], meta["mean"], meta["std"]).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        # the candidates ended at 16x16 (the schedule); the verifier takes them at its own 8x8
        pixels = torch.nn.functional.interpolate(pixels, size=(8, 8), mode="bilinear", antialias=True)
        predicted = model((pixels - meta["mean"][0]) / meta["std"][0]).argmax(1).numpy()
    right = predicted == c["labels"]
    assert result["top1"] == pytest.approx(right.mean())
    for name, row in result["per_class"].items():
        assert row["top1"] == pytest.approx(float(right[c["labels"] == int(name)].mean()))
        assert row["top5"] >= row["top1"] and row["n"] == 1


def test_the_verifier_leaves_mixtures_out():
    from dsv.evaluation.verifier import score

    targets = np.zeros((3, 4), dtype=np.float32)
    targets[0, 1] = targets[1, 2] = 1
    targets[2, [1, 3]] = 0.5
    probs = torch.tensor([[0.1, 0.7, 0.1, 0.1], [0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7]])
    result = score(probs, targets, ["a", "b", "c", "d"])
    assert result["n"] == 2 and result["mixtures_skipped"] == 1
    assert result["top1"] == pytest.approx(0.5) and result["top5"] == 1.0  # 4 classes: top-5 holds all
    assert result["per_class"]["b"]["top1"] == 1.0 and result["per_class"]["c"]["top1"] == 0.0
    assert result["per_class"]["c"]["predicted"] == ["a"]


def test_the_evaluate_table_is_resumable():
    base = '[model]\nsource = "convnet"\n'
    with_table = base + '[evaluate]\nmodel = "efficientnet-lite0"\n'
    changed = base + "[synthesis]\niterations = 7\n"
    hashes = [load_pipeline_text(text, source="t.toml").config_hash for text in (base, with_table, changed)]
    assert hashes[0] == hashes[1] != hashes[2]


# ---- torchvision models from a weights file ----------------------------------------------------


def test_a_torchvision_resnet50_loads_from_a_weights_file(tmp_path):
    import torchvision

    from dsv.plugins import get_plugin_manager

    torch.manual_seed(0)
    reference = torchvision.models.resnet50(weights=None).eval()
    path = tmp_path / "resnet50.pt"
    torch.save(reference.state_dict(), path)
    source = get_plugin_manager().registry("models").get("torchvision:resnet50")
    loaded = cfg.build(
        cfg.PluginSpec(name="torchvision:resnet50"),
        get_plugin_manager().registry("models"),
        source="t.toml",
        path="model",
        request=ModelRequest(weights_path=str(path)),
    )
    assert source is not None and loaded.spec.num_classes == 1000 and loaded.spec.size == 224
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), reference(x))


def test_torchvision_weights_of_another_model_name_the_file(tmp_path):
    import torchvision

    from dsv.builtin.models import torchvision_model
    from dsv.errors import WeightsError

    path = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=10).state_dict(), path)
    with pytest.raises(WeightsError, match=r"r18\.pt: weights do not fit the model"):
        torchvision_model(ModelRequest(weights_path=str(path)), "resnet18")  # 1000 classes, file has 10
    loaded = torchvision_model(ModelRequest(weights_path=str(path)), "resnet18", num_classes=10)
    assert set(load_state_dict(path)) == set(loaded.module.state_dict())
    with pytest.raises(WeightsError, match=r"weights file not found: .*missing\.pt"):
        torchvision_model(ModelRequest(weights_path=str(tmp_path / "missing.pt")), "resnet18")


def test_the_pipeline_files_parse():
    for path in sorted((REPO_ROOT / "pipelines").glob("imagenet*.toml")):
        loaded = load_pipeline(path)
        assert loaded.config.table("evaluate") is not None, path
        assert tomllib.loads(path.read_text())["model"]["source"] == "efficientnet-lite0"


@pytest.mark.parametrize(
    "table, message",
    [
        ("[interpolate]\nfrom_class = 1\nto_class = 2\nsteps = 1\n", "interpolate.steps: must be at least 2"),
        (
            '[interpolate]\nfrom_class = 1\nto_class = 2\npng = "../x.png"\n',
            "interpolate.png: a file name inside the run store",
        ),
        ("[interpolate]\nfrom_class = 1\n", "interpolate: give both from_class and to_class"),
        ("[interpolate]\nsteps = 3\n", "interpolate: no strip"),
        (
            "[interpolate]\nstrips = [{ from_class = 1, to_class = -2 }]\n",
            "interpolate.strips[0].to_class: a class index",
        ),
        (
            "[interpolate]\nfrom_class = 1\nto_class = 2\nrefine_iterations = -1\n",
            "interpolate.refine_iterations: must",
        ),
        ('[interpolate]\nfrom_class = 1\nto_class = 2\nstart = "mix"\n', "interpolate.start"),
        ("[edit]\nedits = []\n", "edit.edits: give at least one"),
        ('[edit]\nedits = [{ image = "a.png", target = 1 }]\nkeep = -1\n', "edit.keep: must be at least 0"),
        ('[edit]\nedits = [{ image = "a.png", target = 1 }]\npriors = [{ name = "tvv" }]\n', "edit.priors[0].name"),
        (
            '[edit]\nedits = [{ image = "a.png", target = "cat" }]\n',
            'edit.edits[0].target: expected an integer, got "cat"',
        ),
        ("[evaluate]\nbatch_size = 0\n", "evaluate.batch_size: must be at least 1"),
    ],
)
def test_bad_generation_tables_name_the_key(table, message):
    with pytest.raises(ConfigError, match=re.escape(f"t.toml: {message}")):
        load_pipeline_text('[model]\nsource = "convnet"\n' + table, source="t.toml")


def test_the_strip_starts_every_candidate_from_the_same_noise():
    from dsv.builtin.initializers import NoiseInit
    from dsv.plugins import InitContext

    context = InitContext(torch.Generator().manual_seed(0), None)
    x = NoiseInit(shared=True)((3, 1, 4, 4), torch.zeros(3), context)
    assert torch.equal(x[0], x[2]) and x[0].std() > 0.5
    y = NoiseInit()((3, 1, 4, 4), torch.zeros(3), InitContext(torch.Generator().manual_seed(0), None))
    assert not torch.equal(y[0], y[2])


def test_a_changed_interpolate_table_replaces_only_the_strip(generated):
    store_path = generated["store"]
    main_before = RunStore.open(store_path).candidates()["x"].copy()
    args = [
        "run",
        str(generated["pipeline"]),
        "--no-progress",
        "--set",
        'run.stages=["train", "interpolate"]',
    ]  # train: the cached weights
    assert cli.main([*args, "--set", "interpolate.iterations=5"]) == 0
    sub = RunStore.open(store_path / "generated" / "interpolate")
    assert sub.meta["committed_iteration"] == 5 and sub.history_length == 5
    np.testing.assert_array_equal(RunStore.open(store_path).candidates()["x"], main_before)
    assert cli.main([*args, "--set", "interpolate.iterations=5"]) == 0  # complete: reused as it is
    assert RunStore.open(store_path / "generated" / "interpolate").history_length == 5


def test_a_class_the_model_lacks_is_named_with_its_key(generated, tmp_path):
    overrides = [
        'run.stages=["train", "synthesize", "interpolate"]',
        "synthesis.iterations=1",
        "interpolate.to_class=10",
    ]
    pipeline = Pipeline.from_toml(
        generated["pipeline"], overrides=overrides, store=str(tmp_path / "s.zarr"), progress=False
    )
    with pytest.raises(
        ConfigError, match=r"interpolate\.to_class: class 10 is out of range \(the model has 10 classes\)"
    ):
        pipeline.run()
