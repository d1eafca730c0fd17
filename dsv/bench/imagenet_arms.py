"""The arms of ``benchmarks/imagenet_gen.py``: the methods compared (pipeline files), dsv's ImageNet
profile without each of its terms (``--ablation``), named variants of its stationarity term and
``--arm`` overrides, and :func:`plan_arms`, which turns a command line's choice into the arms of one run.

An arm is a list of ``--set`` overrides of a pipeline file. Besides dotted pipeline keys
(``synthesis.lambda_init=100``), an override may name an entry of the [synthesis] table's
``losses``, ``priors`` or ``augmentations`` by its plugin name: ``stationarity.params="all"``
sets that option of the entry, ``-bn_stats`` removes the entry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs

from dsv import config as cfg
from dsv.pipeline import load_pipeline

#: the methods compared, each a pipeline file of the repository's ``pipelines/``: ``dsv`` (DeepKKT
#: terms with DeepInversion's BatchNorm prior), ``dsv_paper`` (the paper's DeepKKT-only recipe) and
#: ``deepinversion`` (DeepInversion's recipe rebuilt from dsv's plugins)
METHOD_FILES = {
    "dsv": "imagenet_gen.toml",
    "dsv_paper": "imagenet_paper.toml",
    "deepinversion": "imagenet_deepinversion.toml",
}
GENERATOR = "efficientnet-lite0"
#: the two independent classifiers that name the images (neither is the generator)
VERIFIERS = {"lite1": "efficientnet-lite1", "lite2": "efficientnet-lite2"}
# 20 classes spread over ImageNet (those of pipelines/imagenet_gen_gpu.toml): fish, birds, dogs,
# cats, insects, objects, animals, fruit, landscapes, vehicles, flowers
CLASSES = [1, 130, 207, 285, 323, 417, 340, 949, 980, 779, 11, 31, 301, 292, 145, 951, 953, 607, 437, 985]
QUICK_CLASSES = [1, 207, 323, 417, 340, 949]

ENTRY_LISTS = ("losses", "priors", "augmentations")

#: the ablation of dsv's profile (pipelines/imagenet_gen.toml): the full profile and the profile
#: without each of its parts, every arm at the full profile's wall-clock
ABLATIONS: dict[str, list[str]] = {
    "full": [],
    "no_stationarity": ["-stationarity"],
    "no_bn_stats": ["-bn_stats"],
    "no_tv": ["-tv"],
    "no_norm": ["-norm"],
    "no_augmented": ["synthesis.augmentations=[]"],  # no augmented copy: one forward per step
    "no_schedule": ["synthesis.resolutions=[[1, 224]]"],  # 224 px from the first step
}

# lambda's scale from the data (tests/test_kkt_reading.py: a model trained with weight decay wd on n
# samples is stationary with lambda_i = 1/(n wd) on each): a candidate standing for its class's n/K
# training images carries their multipliers, lambda = (n/K) / (n wd) = 1/(K wd); EfficientNet-Lite
# was trained on ImageNet (K = 1000 classes) with weight decay 1e-5
IMAGENET_CLASSES, LITE_WEIGHT_DECAY = 1000, 1e-5
LAMBDA_FROM_DATA = 1.0 / (IMAGENET_CLASSES * LITE_WEIGHT_DECAY)

#: stationarity that may carry information: variants of the full profile, picked by name with
#: ``--arm NAME`` (each a switch to measure, not a measured choice)
PRESETS: dict[str, list[str]] = {
    # every row of the head, not only the target classes'
    "stat_all_rows": ['stationarity.rows="all"'],
    # the BatchNorm scale and shift beside the head (not scale-invariant, unlike the conv weights)
    "stat_norm_affine": ['stationarity.params=["head", "norm_affine"]'],
    # the last MBConv block, the head convolution and its BatchNorm beside the head
    "stat_last_block": ['stationarity.params=["head", "last_block"]'],
    # every parameter, the mixed derivative by finite differences (the fast mode)
    "stat_all_fast": ['stationarity.params="all"', 'stationarity.mode="finite_difference"'],
    # lambda learned after a warm-up of a third of the run (dual feasibility prunes below 0)
    "lambda_learned": ["synthesis.lambda_warmup=100"],
    # lambda's scale set from the data, held
    "lambda_data": [f"synthesis.lambda_init={LAMBDA_FROM_DATA}"],
    # stationarity on the augmented copy too, with the paper's eta = 5
    "stat_augmented": ["stationarity.augmented=true", "synthesis.augmented_weight=5.0"],
}


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """``text`` split at each ``sep`` outside brackets, braces and quotes (TOML values keep theirs)."""
    parts: list[str] = []
    current: list[str] = []
    depth, quote = 0, ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


def parse_arm(text: str) -> tuple[str, list[str]]:
    """``NAME=KEY=VALUE[,KEY=VALUE...]`` (overrides, see the module doc) or a preset's ``NAME``
    -> (name, overrides). ValueError with the presets named when neither."""
    name, _, rest = text.partition("=")
    name = name.strip()
    if not rest:
        if name in PRESETS:
            return name, list(PRESETS[name])
        raise ValueError(f"--arm {text!r}: expected NAME=KEY=VALUE[,KEY=VALUE...] or a preset: {', '.join(PRESETS)}")
    items = split_top_level(rest)
    if not name or not items or not all("=" in item or item.startswith("-") for item in items):
        raise ValueError(f"--arm {text!r}: expected NAME=KEY=VALUE[,KEY=VALUE...] (or -ENTRY to remove one)")
    return name, items


def _entry(synthesis: dict[str, Any], name: str) -> tuple[str, int] | None:
    for kind in ENTRY_LISTS:
        for i, entry in enumerate(synthesis.get(kind, [])):
            if entry.get("name") == name:
                return kind, i
    return None


def resolve(raw: dict[str, Any], items: list[str]) -> list[str]:
    """Pipeline ``--set`` overrides of ``items`` against a pipeline's raw tables: entry edits and
    removals become overrides of the whole list, other items pass through. ValueError names an
    entry the pipeline does not have."""
    synthesis = json.loads(json.dumps(raw.get("synthesis", {})))  # a copy
    touched: set[str] = set()
    passed: list[str] = []
    for item in items:
        if item.startswith("-"):
            found = _entry(synthesis, item[1:].strip())
            if found is None:
                raise ValueError(f"{item}: the pipeline's [synthesis] has no entry {item[1:]!r} in {ENTRY_LISTS}")
            kind, i = found
            del synthesis[kind][i]
            touched.add(kind)
            continue
        keys, value = cfg.parse_override(item)
        found = _entry(synthesis, keys[0]) if len(keys) == 2 else None
        if found is None:
            passed.append(item)
            continue
        kind, i = found
        synthesis[kind][i][keys[1]] = value
        touched.add(kind)
    return [f"synthesis.{kind}={cfg.toml_inline(synthesis[kind])}" for kind in ENTRY_LISTS if kind in touched] + passed


def method_paths(pipelines: Path) -> dict[str, Path]:
    """Each method's pipeline file in the folder ``pipelines``."""
    return {name: pipelines / file for name, file in METHOD_FILES.items()}


def check_ablations(names: list[str]) -> None:
    """ValueError naming the ablations of ``names`` that do not exist, with the known ones."""
    unknown = sorted(set(names) - set(ABLATIONS))
    if unknown:
        raise ValueError(f"--ablation: no ablation {', '.join(unknown)} (known: {', '.join(ABLATIONS)})")


@attrs.frozen(kw_only=True)
class ArmChoice:
    """Which arms a run has: the command line's ``--ablation [NAME ...]``, ``--methods``, ``--arm``,
    ``--variant`` and each method's ``--set-*`` overrides."""

    #: the ablation of dsv's profile instead of the comparison of methods
    ablation: bool = False
    #: the ablations run beside the full arm (empty: all of them)
    ablation_arms: tuple[str, ...] = ()
    #: the methods run (empty: all of them)
    methods: tuple[str, ...] = ()
    #: ``NAME=KEY=VALUE[,KEY=VALUE...]`` or a preset's name: arms of dsv's profile
    arms: tuple[str, ...] = ()
    #: ``LABEL:KEY=VALUE[;KEY=VALUE...]``: arms ``dsv+LABEL`` at dsv's iteration count
    variants: tuple[str, ...] = ()
    #: each method's pipeline overrides
    overrides: dict[str, list[str]] = attrs.field(factory=dict)


@attrs.frozen
class Arm:
    """One arm: a pipeline file, its overrides, and the section of the table it is shown in
    (``ablation``, ``methods`` or ``variants``)."""

    path: Path
    overrides: list[str]
    section: str


def plan_arms(choice: ArmChoice, methods: dict[str, Path]) -> dict[str, Arm]:
    """The arms of a run, by name. The reference (``full`` in an ablation, else ``dsv``)
    runs the run's iterations, the others at its wall-clock (``variants``: its iteration count).
    ValueError on an unknown preset, entry or ablation, or a comparison without ``dsv``."""
    extra = {name: list(choice.overrides.get(name, [])) for name in methods}
    raw = load_pipeline(methods["dsv"], overrides=extra["dsv"]).raw
    check_ablations(list(choice.ablation_arms))
    arms: dict[str, Arm] = {}
    if choice.ablation:
        for name, items in ABLATIONS.items():
            if choice.ablation_arms and name != "full" and name not in choice.ablation_arms:
                continue  # the full arm is the reference, always run
            arms[name] = Arm(methods["dsv"], [*extra["dsv"], *resolve(raw, items)], "ablation")
    for name in choice.methods or list(methods):
        if not (choice.ablation and name == "dsv"):  # in an ablation, dsv is the full arm
            arms[name] = Arm(methods[name], extra[name], "methods")
    for text in choice.arms:
        name, items = parse_arm(text)
        arms[name] = Arm(
            methods["dsv"], [*extra["dsv"], *resolve(raw, items)], "ablation" if choice.ablation else "variants"
        )
    for variant in choice.variants:
        label, more = cfg.split_variant(variant)
        arms[f"dsv+{label}"] = Arm(methods["dsv"], [*extra["dsv"], *more], "variants")
    if not choice.ablation and "dsv" not in arms:
        raise ValueError("--methods: dsv is the reference of the comparison; name it too")
    return arms


def arms_listing() -> str:
    """The ablation arms and the presets with their overrides (what --ablation and --arm NAME run)."""
    lines = []
    for title, arms in (("ablation (--ablation)", ABLATIONS), ("presets (--arm NAME)", PRESETS)):
        lines.append(title)
        lines += [f"  {name:<18} {' '.join(items) or '(the profile as it is)'}" for name, items in arms.items()]
    return "\n".join(lines)
