"""The latent generator of ``benchmarks/imagenet_latent.py``: interpolation strips and edits of the
CPU profile (pipelines/imagenet_gen.toml's ``interpolate`` and ``edit`` stages), each arm run as
that pipeline with overrides; the stages themselves score every image with the profile's
[evaluate] verifiers, EfficientNet-Lite1 and Lite2 (:mod:`dsv.evaluation.latent`), and the
benchmark collects what they recorded.

Per strip: what each verifier names the two ends (top-1), its p(to_class) at every step and the
rank correlation of that with the step, and whether both classes are in its top-5 at the middle
steps (1/3 <= d <= 2/3). Per edit: whether Lite0 (the generator), Lite1 and Lite2 name the target
(top-1), SSIM to the photograph, and whether the edit is adversarial (Lite0 names the target,
neither verifier does).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from dsv.bench.imagenet_arms import VERIFIERS, resolve
from dsv.pipeline import Pipeline, load_pipeline
from dsv.store import RunStore

#: five strips between classes of the CPU profile: (from_class, to_class)
STRIPS = [(207, 417), (1, 130), (285, 340), (323, 949), (980, 779)]
#: five of scikit-image's photographs (its ``data`` module) and a target of each:
#: cat -> tiger, espresso -> soup bowl, astronaut -> scuba diver, rocket -> space shuttle,
#: motorcycle -> mountain bike
EDITS = [("chelsea", 292), ("coffee", 809), ("astronaut", 983), ("rocket", 812), ("motorcycle", 671)]
STEPS = 7

#: the arms: pipeline overrides of the profile, and which half they measure. Arms with the same
#: ``store`` share it: the strips' ends are synthesized once and reused by every blend arm
ARMS: dict[str, dict[str, Any]] = {
    "strips": {"part": "strips", "store": "strips", "set": []},
    # the middle as the pixel blend of the ends, not refined
    "strips_blend_only": {"part": "strips", "store": "strips", "set": ["interpolate.refine_iterations=0"]},
    # every step synthesized on its own from one shared noise image (the stage's start before)
    "strips_noise": {"part": "strips", "store": "strips_noise", "set": ['interpolate.start="noise"']},
    "edits": {"part": "edits", "store": "edits", "set": []},
    "edits_no_keep": {"part": "edits", "store": "edits", "set": ["edit.keep=0"]},
    "edits_no_bn_stats": {"part": "edits", "store": "edits", "set": ["-bn_stats"]},
    "edits_no_augmented": {"part": "edits", "store": "edits", "set": ["synthesis.augmented_weight=0"]},
    # the edit before (lr_x 0.02, no keep)
    "edits_before": {"part": "edits", "store": "edits", "set": ["edit.lr_x=0.02", "edit.keep=0"]},
}


def parse_arm(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME=KEY=VALUE[,KEY=VALUE...]``: an extra arm of overrides; a NAME starting ``strips``
    measures the strips, one starting ``edits`` the edits; strip arms share the profile's store
    (and its ends) unless they change the [synthesis] table. ValueError when it is neither."""
    from dsv.bench.imagenet_arms import split_top_level

    name, _, rest = text.partition("=")
    part = next((p for p in ("strips", "edits") if name.startswith(p)), None)
    if part is None or not rest:
        raise ValueError(f"--arm {text!r}: NAME=KEY=VALUE[,KEY=VALUE...] with NAME starting 'strips' or 'edits'")
    overrides = split_top_level(rest)
    shared = part == "edits" or all(o.startswith("interpolate.") for o in overrides)
    return name, {"part": part, "store": part if shared else name, "set": overrides}


QUICK = [  # a smoke run: one strip of 3, one edit, a few iterations at 64 px
    "synthesis.iterations=3",
    "synthesis.resolutions=[[1, 64]]",
    "interpolate.refine_iterations=2",
    "edit.iterations=2",
    "edit.size=64",
]


def photographs(folder: Path, names: list[str]) -> dict[str, Path]:
    """scikit-image's sample photographs ``names`` as PNG files in ``folder`` (they ship with it)."""
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names:
        pixels = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
        out[name] = folder / f"{name}.png"
        Image.fromarray(pixels).save(out[name])
    return out


@attrs.frozen(kw_only=True)
class LatentRun:
    """What one run of the benchmark measures, and where."""

    pipeline: Path
    out: Path
    strips: list[tuple[int, int]] = attrs.field(factory=lambda: list(STRIPS))
    edits: list[tuple[str, int]] = attrs.field(factory=lambda: list(EDITS))
    steps: int = STEPS
    overrides: list[str] = attrs.field(factory=list)


def arm_overrides(run: LatentRun, arm: dict[str, Any], photos: dict[str, Path]) -> list[str]:
    """The ``--set`` overrides of one arm: its stage, the strips or edits, the arm's own."""
    part = arm["part"]
    strips = ", ".join(f"{{ from_class = {a}, to_class = {b} }}" for a, b in run.strips)
    edits = ", ".join(f'{{ image = "{photos[n].as_posix()}", target = {t} }}' for n, t in run.edits)
    table = (
        [f"interpolate.strips=[{strips}]", f"interpolate.steps={run.steps}"]
        if part == "strips"
        else [f"edit.edits=[{edits}]"]
    )
    stage = "interpolate" if part == "strips" else "edit"
    return [f'run.stages=["{stage}"]', *table, *run.overrides, *arm["set"]]


def run_arm(run: LatentRun, name: str, arm: dict[str, Any], photos: dict[str, Path]) -> dict[str, Any]:
    """Run one arm's pipeline (resumed if its store holds a killed run) and read what its stage
    measured (the stages score their images with the pipeline's [evaluate] verifiers)."""
    overrides = resolve(load_pipeline(run.pipeline).raw, arm_overrides(run, arm, photos))
    store_path = run.out / f"{arm['store']}.zarr"
    pipeline = Pipeline.from_toml(run.pipeline, overrides=overrides, store=str(store_path), progress=False)
    start = time.perf_counter()
    result = pipeline.run()
    seconds = time.perf_counter() - start
    assert result is not None
    png = run.out / f"{name}.png"
    shutil.copyfile(result.exports[0], png)
    results = RunStore.open(store_path).results
    out: dict[str, Any] = {"arm": name, "set": arm["set"], "seconds": round(seconds, 1), "files": [str(png)]}
    if arm["part"] == "strips":
        strips, scored = results["interpolation"]["strips"], results["interpolation"]["verifiers"]
        out["strips"] = [
            {"from": a, "to": b, **{k: scored[source][i] for k, source in VERIFIERS.items()}}
            for i, (a, b) in enumerate(strips)
        ]
    else:
        out["edits"] = [
            {
                "photo": Path(e["image"]).stem,
                "target": e["target"],
                "lite0": e["generator"],
                **{k: e["verifiers"][source] for k, source in VERIFIERS.items()},
                "ssim": e["ssim"],
                "adversarial": e["adversarial"],
            }
            for e in results["edits"]
        ]
    return out


def summary(arm: dict[str, Any]) -> dict[str, float]:
    """The done-means figures of an arm (strips: ends named, mean rank correlation, middle top-5;
    edits: named by each model, mean SSIM, adversarial)."""
    if "strips" in arm:
        s = arm["strips"]
        out = {}
        for k in VERIFIERS:
            out[f"{k}_ends_named"] = float(np.mean([x[k][e] for x in s for e in ("start_named", "end_named")]))
            out[f"{k}_rank_corr"] = float(np.mean([x[k]["rank_correlation"] for x in s]))
            out[f"{k}_middle_top5"] = float(np.mean([x[k]["middle_top5_both"] for x in s]))
        return out
    e = arm["edits"]
    out = {f"{k}_named": float(np.mean([x[k]["named"] for x in e])) for k in ("lite0", *VERIFIERS)}
    out["ssim"] = float(np.mean([x["ssim"] for x in e]))
    out["adversarial"] = float(np.mean([x["adversarial"] for x in e]))
    return out


def run_benchmark(
    run: LatentRun,
    arms: dict[str, dict[str, Any]],
    *,
    json_path: Path | None,
    say: Callable = print,
) -> dict[str, Any]:
    """Every arm in turn (name -> an entry like those of :data:`ARMS`), the JSON rewritten after
    each (``partial`` until the end)."""
    photos = photographs(run.out / "photos", [n for n, _ in run.edits])
    result: dict[str, Any] = {
        "strips": [],
        "edits": [],
        "arms": {},
        "partial": True,
        "threads": torch.get_num_threads(),
        "protocol": {
            "pipeline": run.pipeline.name,
            "strips": run.strips,
            "steps": run.steps,
            "edits": run.edits,
            "overrides": run.overrides,
        },
    }
    for arm, spec in arms.items():
        say(f"arm {arm} ...")
        measured = run_arm(run, arm, spec, photos)
        measured["summary"] = summary(measured)
        result["arms"][arm] = measured
        if arm in ("strips", "edits"):  # the profile's own figures, as the JSON keys
            result[arm] = measured[arm]
        say(f"  {measured['seconds']:.0f} s: " + ", ".join(f"{k} {v:.2f}" for k, v in measured["summary"].items()))
        if json_path:
            json_path.write_text(json.dumps(result, indent=1))
    result["partial"] = False
    if json_path:
        json_path.write_text(json.dumps(result, indent=1))
    return result


def table(result: dict[str, Any]) -> str:
    """Each arm's summary as a text table."""
    lines = []
    for part in ("strips", "edits"):
        arms = {n: a for n, a in result["arms"].items() if part in a}
        if not arms:
            continue
        keys = list(next(iter(arms.values()))["summary"])
        lines.append(f"{'arm':<26}{'s':>6} " + " ".join(f"{k:>17}" for k in keys))
        for name, a in arms.items():
            lines.append(f"{name:<26}{a['seconds']:>6.0f} " + " ".join(f"{a['summary'][k]:>17.2f}" for k in keys))
        lines.append("")
    return "\n".join(lines)
