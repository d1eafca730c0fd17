"""The evaluate stage with two verifiers (EfficientNet-Lite1 and Lite2, packaged) on candidates
of the packaged Lite0, at a tiny resolution and two iterations, and the [evaluate] table's keys."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dsv import cli
from dsv.errors import ConfigError
from dsv.pipeline import load_pipeline, load_pipeline_text
from dsv.stages.evaluate import verifier_names

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "synthesis.classes=[1, 207]",
    "synthesis.iterations=2",
    "synthesis.resolutions=[[1, 32]]",
    'synthesis.priors=[{ name = "tv", weight = 0.05 }]',  # no bn_stats: the plugin is not needed here
    "synthesis.augmentations=[]",
    "synthesis.checkpoint_every=0",
    'run.stages=["synthesize", "evaluate"]',
]


def test_two_verifiers_score_the_candidates_each_on_its_own(tmp_path, capsys):
    store = tmp_path / "gen.zarr"
    sets = [a for s in TINY for a in ("--set", s)]
    pipeline = str(REPO_ROOT / "pipelines" / "imagenet_gen.toml")
    assert cli.main(["run", pipeline, *sets, "--store", str(store), "--no-progress"]) == 0
    capsys.readouterr()
    assert cli.main(["show", str(store), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    both = shown["verifiers"]
    assert list(both) == ["efficientnet-lite1", "efficientnet-lite2"]
    for name, result in both.items():
        assert result["model"] == name and result["n"] == 2
        assert 0 <= result["top1"] <= result["top5"] <= 1 and set(result["per_class"]) == {
            "goldfish",
            "golden retriever",
        }
    # the first verifier is also the result the report shows
    assert shown["verifier"] == both["efficientnet-lite1"]
    # two models of another size and training: not the same probabilities
    assert both["efficientnet-lite1"]["top3"] != both["efficientnet-lite2"]["top3"]


def test_the_models_key_replaces_model_and_the_old_key_still_works():
    base = '[model]\nsource = "convnet"\n'
    old = load_pipeline_text(base + '[evaluate]\nmodel = "efficientnet-lite0"\n', source="t.toml")
    assert verifier_names(old.config.table("evaluate")) == ["efficientnet-lite0"]
    new = load_pipeline_text(
        base + '[evaluate]\nmodels = ["efficientnet-lite1", "efficientnet-lite2"]\n', source="t.toml"
    )
    assert verifier_names(new.config.table("evaluate")) == ["efficientnet-lite1", "efficientnet-lite2"]
    for name in ("imagenet_gen.toml", "imagenet_gen_gpu.toml", "imagenet_deepinversion.toml", "imagenet_paper.toml"):
        e = load_pipeline(REPO_ROOT / "pipelines" / name).config.table("evaluate")
        assert verifier_names(e) == ["efficientnet-lite1", "efficientnet-lite2"], name


@pytest.mark.parametrize(
    "table, message",
    [
        ('models = ["efficientnet-lite1", "efficientnet-lite1"]', "evaluate.models: a verifier is named twice"),
        ('models = ["convnet", "mlp"]\nweights_path = "w.pt"', "evaluate.weights_path: one weights file cannot fit"),
    ],
)
def test_bad_verifier_lists_name_the_key(table, message):
    with pytest.raises(ConfigError, match=re.escape(f"t.toml: {message}")):
        load_pipeline_text('[model]\nsource = "convnet"\n[evaluate]\n' + table + "\n", source="t.toml")
