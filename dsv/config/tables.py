"""The core tables of a pipeline file: ``[run]``, ``[data]``, ``[model]``, ``[synthesis]``,
``[logging]``, with their range checks. Each stage owns its own table (see :mod:`dsv.stages`)."""

from __future__ import annotations

from typing import Any, Union

import attrs

from dsv.config.plugin_spec import PluginSpec

# how candidates are kept inside the model's input domain, when it is known (see dsv.synthesis.build)
DOMAIN_MODES = ("clamp", "penalty", "none")

# how the learning rate of x changes over each resolution stage (dsv.synthesis.engine)
LR_SCHEDULES = ("constant", "cosine")

# stages that a pipeline runs when [run] names none
DEFAULT_STAGES = ("train", "synthesize", "export")


Target = Union[int, dict[str, float]]  # noqa: UP007 (cattrs keys its structure hook on this object)


@attrs.define(kw_only=True)
class RunConfig:
    name: str = "run"
    seed: int = 0
    device: str = "auto"
    store: str = ""  # default: stores/<name>.zarr
    stages: list[str] = attrs.field(factory=lambda: list(DEFAULT_STAGES))


@attrs.define(kw_only=True)
class DataConfig:
    name: str
    root: str = ""
    download: bool = False
    options: dict[str, Any] = attrs.field(factory=dict)


@attrs.define(kw_only=True)
class ModelConfig:
    source: str
    weights_path: str = ""
    options: dict[str, Any] = attrs.field(factory=dict)
    # the input domain in model input units, [low, high] (numbers, or one list per side with a
    # value per channel); empty: the model source's (derived from its data's pixel range)
    input_range: list[Any] = attrs.field(factory=list)


def _default_losses() -> list[PluginSpec]:
    return [PluginSpec(name="primal"), PluginSpec(name="stationarity")]


def _default_augmentations() -> list[PluginSpec]:
    # the KKT terms again on shifted, noised copies (Algorithm 1's A(x)): better DSVs for
    # retraining on 5 of 6 model families x data sets measured (docs/measurements.md)
    return [
        PluginSpec(name="translate", options={"strength": 0.125}),
        PluginSpec(name="noise", options={"strength": 0.05}),
    ]


@attrs.define(kw_only=True)
class SynthesisConfig:
    iterations: int = 300
    candidates_per_class: int = 1
    classes: list[int] = attrs.field(factory=list)  # empty: every class of the model
    targets: list[Target] = attrs.field(factory=list)  # explicit targets; overrides classes
    lr_x: float = 0.05
    # the learning rate of x over each stage of `resolutions` (the whole run without one):
    # "constant", or "cosine" decay to 0 (DeepInversion), after lr_warmup iterations of linear warm-up
    lr_schedule: str = "constant"
    lr_warmup: int = 0
    betas_x: list[float] = attrs.field(factory=lambda: [0.9, 0.999])  # Adam's betas for x (DeepInversion: 0.5, 0.9)
    lr_lambda: float = 0.01
    lambda_init: float = 1.0
    lambda_warmup: int = 100  # hold lambda while x leaves the noise (else lambda is pruned at once)
    augmented_weight: float = 1.0  # eta of Algorithm 1: weight of the KKT terms on A(x)
    losses: list[PluginSpec] = attrs.field(factory=_default_losses)
    priors: list[PluginSpec] = attrs.field(factory=list)
    augmentations: list[PluginSpec] = attrs.field(factory=_default_augmentations)
    init: PluginSpec = attrs.field(factory=lambda: PluginSpec(name="noise"))
    resolutions: list[list[int]] = attrs.field(factory=list)  # [[from_iteration, size], ...]
    # the model sees candidates of a resolution stage below its input size upsampled (bilinear) to
    # it, instead of at their own size: coarse-to-fine synthesis for a model of one input size (a
    # ConvNet with a fixed head); the last stage must then be the model's input size
    upsample: bool = False
    record_every: int = 1
    checkpoint_every: int = 50  # 0: only at the end and on SIGINT/SIGTERM
    # candidates split into this many groups, optimized apart (dsv.synthesis.groups); ranks share groups
    groups: int = 1
    # keep the candidates inside the model's input domain (when known): "clamp" projects them after
    # every step, "penalty" adds domain_weight * the mean squared excess, "none" lets them roam
    domain: str = "clamp"
    domain_weight: float = 10.0
    # candidate pools: of the candidates_per_class candidates of each class, the keep_per_class with
    # the largest lambda (alive first) are the DSVs the retrain stage and benchmarks use (0: all)
    keep_per_class: int = 0
    # the model's convolution weights in channels_last memory format: faster convolutions on CPU
    # (benchmarks/imagenet_gen.py --speed); the numerics change slightly, so it counts in the config
    channels_last: bool = False


@attrs.define(kw_only=True)
class LoggingConfig:
    """Where a synthesis is logged besides the store (``pip install dsv[tensorboard]``)."""

    tensorboard: str = ""  # log directory; "" for none
    scalars_every: int = 1  # every loss term, entropy, accuracy, alive count, mean lambda
    images_every: int = 50  # grid of the candidates; 0 for none


@attrs.define(kw_only=True)
class PipelineConfig:
    """A pipeline file: the core tables, and the table of each stage that has one (by stage name,
    structured into the attrs class the stage registered; absent tables are missing)."""

    run: RunConfig = attrs.field(factory=RunConfig)
    data: DataConfig | None = None
    model: ModelConfig
    synthesis: SynthesisConfig = attrs.field(factory=SynthesisConfig)
    logging: LoggingConfig = attrs.field(factory=LoggingConfig)
    tables: dict[str, Any] = attrs.field(factory=dict)
    #: the ``[plugins.<name>]`` tables, structured into the options class each plugin registered
    #: (defaults for a plugin without a table); see :mod:`dsv.config.plugin_options`
    plugin_options: dict[str, Any] = attrs.field(factory=dict)

    def table(self, name: str) -> Any:
        """The structured ``[name]`` table of a stage, or None when the file has none."""
        return self.tables.get(name)


# sane bounds, checked before anything is allocated (the message gives the bound)
MAX_ITERATIONS = 10_000_000
MAX_CANDIDATES = 1_000_000  # candidates of one run (candidates_per_class x targets)
MAX_RESOLUTION = 4096  # pixels per side

#: the top-level tables every pipeline may have besides the stages' own
CORE_TABLES = ("run", "data", "model", "synthesis", "logging")


def check_synthesis(s: SynthesisConfig) -> list[str]:
    """Range checks of a [synthesis] table (the pipeline's and ``dsv.synthesize``'s)."""
    problems = []
    for key in ("iterations", "candidates_per_class", "record_every", "groups"):
        if getattr(s, key) < 1:
            problems.append(f"synthesis.{key}: must be at least 1, got {getattr(s, key)}")
    for key, bound in (("iterations", MAX_ITERATIONS), ("candidates_per_class", MAX_CANDIDATES)):
        if getattr(s, key) > bound:
            problems.append(f"synthesis.{key}: {getattr(s, key)} is beyond the limit of {bound:_}")
    if s.checkpoint_every < 0:
        problems.append(
            f"synthesis.checkpoint_every: must be at least 0 (0: only at the end), got {s.checkpoint_every}"
        )
    for key in ("lr_x", "lr_lambda"):
        if getattr(s, key) <= 0:
            problems.append(f"synthesis.{key}: must be positive, got {getattr(s, key)}")
    previous = None
    if s.lr_schedule not in LR_SCHEDULES:
        problems.append(
            f"synthesis.lr_schedule: expected one of {', '.join(map(repr, LR_SCHEDULES))}, got {s.lr_schedule!r}"
        )
    if s.lr_warmup < 0:
        problems.append(f"synthesis.lr_warmup: must be at least 0, got {s.lr_warmup}")
    if len(s.betas_x) != 2 or not all(0 <= b < 1 for b in s.betas_x):
        problems.append(f"synthesis.betas_x: expected two numbers in [0, 1), got {s.betas_x}")
    for i, pair in enumerate(s.resolutions):
        if len(pair) != 2 or pair[0] < 0 or not 8 <= pair[1] <= MAX_RESOLUTION:
            problems.append(
                f"synthesis.resolutions[{i}]: expected [from_iteration >= 0, size in 8..{MAX_RESOLUTION}], got {pair}"
            )
        elif previous is not None and pair[0] <= previous:
            problems.append(
                f"synthesis.resolutions[{i}]: from_iteration {pair[0]} does not come after {previous} of the "
                "entry before; list the entries by increasing from_iteration"
            )
        else:
            previous = pair[0]
    if s.upsample and not s.resolutions:
        problems.append("synthesis.upsample: needs synthesis.resolutions (coarse stages to upsample)")
    if s.keep_per_class < 0 or s.keep_per_class > s.candidates_per_class:
        problems.append(
            f"synthesis.keep_per_class: must be from 0 (all) to candidates_per_class ({s.candidates_per_class}), "
            f"got {s.keep_per_class}"
        )
    if s.lambda_init <= 0:
        problems.append(f"synthesis.lambda_init: must be positive (dual feasibility), got {s.lambda_init}")
    if s.augmented_weight < 0:
        problems.append(f"synthesis.augmented_weight: must be at least 0, got {s.augmented_weight}")
    if s.domain not in DOMAIN_MODES:
        problems.append(f"synthesis.domain: expected one of {', '.join(map(repr, DOMAIN_MODES))}, got {s.domain!r}")
    if s.domain_weight <= 0:
        problems.append(f"synthesis.domain_weight: must be positive, got {s.domain_weight}")
    return problems


def check_logging(c: LoggingConfig) -> list[str]:
    return [
        f"logging.{key}: must be at least {low}, got {getattr(c, key)}"
        for key, low in (("scalars_every", 1), ("images_every", 0))
        if getattr(c, key) < low
    ]
