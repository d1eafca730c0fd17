"""The core tables of a pipeline file: ``[run]``, ``[data]``, ``[model]``, ``[synthesis]``,
``[logging]``, with their range checks. Each stage owns its own table (see :mod:`dsv.stages`).

Every key of a table (here, in a stage's table and in a plugin's options class) is documented by
``#:`` comment lines directly above its field, as Sphinx reads them::

    #: the learning rate of x (Adam)
    lr_x: float = 0.05

The configuration reference (``dsv.config.reference``, docs/reference/config.md) is generated
from these comments, and a key without one fails the tests. Plain ``#`` comments stay notes for
the reader of the code only."""

from __future__ import annotations

from typing import Any, Union

import attrs

from dsv.config.plugin_spec import PluginSpec

# how candidates are kept inside the model's input domain, when it is known (see dsv.synthesis.build)
DOMAIN_MODES = ("clamp", "penalty", "none")

# how the augmentations of a step are applied (dsv.synthesis.engine): all chained, or one drawn
AUGMENTATION_SAMPLING = ("all", "one")

# how x and lambda are stepped: Adam, or plain gradient steps (Algorithm 1)
SYNTHESIS_OPTIMIZERS = ("adam", "sgd")

# how the learning rate of x changes over each resolution stage (dsv.synthesis.engine)
LR_SCHEDULES = ("constant", "cosine")

# stages that a pipeline runs when [run] names none
DEFAULT_STAGES = ("train", "synthesize", "export")


Target = Union[int, dict[str, float]]  # noqa: UP007 (cattrs keys its structure hook on this object)


@attrs.define(kw_only=True)
class RunConfig:
    #: the run's name; the default store is ``stores/<name>.zarr``
    name: str = "run"
    #: seed of every random draw (torch, numpy, Python); each group's is derived from it
    seed: int = 0
    #: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:<n>``
    device: str = "auto"
    #: the run store's path; empty: ``stores/<name>.zarr``
    store: str = ""
    #: the stages to run, in order (``train``, ``synthesize``, ``select``, ``retrain``,
    #: ``evaluate``, ``analyse``, ``interpolate``, ``edit``, ``export``, ``report``, or a plugin's)
    stages: list[str] = attrs.field(factory=lambda: list(DEFAULT_STAGES))


@attrs.define(kw_only=True)
class DataConfig:
    #: the data set (``fashion-mnist``, ``digits``, ``cifar10``, ``cifar100``, ``svhn``,
    #: ``imagefolder``, or a plugin's; ``dsv-pipeline plugins`` lists them)
    name: str
    #: where the data set's files are; empty: the data set's default place
    root: str = ""
    #: let torchvision download the data set when it is not found
    download: bool = False
    #: options of the data set (see its entry under "Built-in plugins")
    options: dict[str, Any] = attrs.field(factory=dict)


@attrs.define(kw_only=True)
class ModelConfig:
    #: the model source (``convnet``, ``mlp``, ``efficientnet-lite0``, ``efficientnet-lite2``,
    #: ``torchvision:<name>``, ``timm:<name>``, ``module:package.module:factory``, or a plugin's)
    source: str
    #: a local weights file (``.safetensors``, or a torch state dict loaded with
    #: ``weights_only=True``); empty: the source's own weights, or the train stage's
    weights_path: str = ""
    #: options of the model source (e.g. ``width`` and ``depth`` of ``mlp``)
    options: dict[str, Any] = attrs.field(factory=dict)
    #: the input domain in model input units, ``[low, high]`` (numbers, or one list per side with a
    #: value per channel); empty: the model source's (derived from its data's pixel range)
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
    #: optimization steps over the candidates and their multipliers
    iterations: int = 300
    #: candidates synthesized for each target
    candidates_per_class: int = 1
    #: the target classes; empty: every class of the model
    classes: list[int] = attrs.field(factory=list)
    #: explicit targets, each a class index or a mixture ``{ 207 = 0.4, 417 = 0.6 }`` (soft
    #: label); overrides ``classes``
    targets: list[Target] = attrs.field(factory=list)
    #: the learning rate of x (Adam)
    lr_x: float = 0.05
    #: the learning rate of x over each stage of ``resolutions`` (the whole run without one):
    #: ``constant``, or ``cosine`` decay to 0 (DeepInversion), after ``lr_warmup`` iterations of
    #: linear warm-up
    lr_schedule: str = "constant"
    #: iterations of linear warm-up of the learning rate at the start of each stage
    lr_warmup: int = 0
    #: Adam's betas for x (DeepInversion: 0.5, 0.9)
    betas_x: list[float] = attrs.field(factory=lambda: [0.9, 0.999])
    #: the learning rate of the multipliers lambda
    lr_lambda: float = 0.01
    #: every candidate's lambda at the start
    lambda_init: float = 1.0
    #: iterations lambda is held while x leaves the noise (else lambda is pruned at once)
    lambda_warmup: int = 100
    #: dual feasibility: drop (freeze) a candidate once its lambda goes below 0; ``false`` keeps
    #: every candidate on and projects its lambda back to 0 instead, for a loss that floors lambda
    #: itself (stationarity's ``lambda_floor``, Haim et al.'s reconstruction)
    prune: bool = True
    #: eta of Algorithm 1: the weight of the KKT terms on the augmented copies A(x)
    augmented_weight: float = 1.0
    #: the augmentations of a step: ``"all"`` chained (each one every step), or ``"one"`` drawn at
    #: random per step (Algorithm 1's "sample f_A in A"; seeded, and resumed where it stopped)
    augmentation_sampling: str = "all"
    #: how x and lambda are stepped: ``"adam"`` (lr_x, betas_x, lr_lambda), or ``"sgd"``: plain
    #: gradient steps of size lr_x and lr_lambda, as in Algorithm 1 (the arXiv version: 1e-3 and 0.1)
    optimizer: str = "adam"
    #: the loss terms (``primal``, ``stationarity``, ``cross_entropy``, ``boundary``, or a
    #: plugin's), each ``{ name = ..., <options> }``
    losses: list[PluginSpec] = attrs.field(factory=_default_losses)
    #: the image priors (``tv``, ``norm``, ``range``, or a plugin's such as ``bn_stats``), each
    #: ``{ name = ..., weight = ..., <options> }``
    priors: list[PluginSpec] = attrs.field(factory=list)
    #: the augmentations A(x) the KKT terms are taken on again (``[]``: none, one forward per step)
    augmentations: list[PluginSpec] = attrs.field(factory=_default_augmentations)
    #: how the candidates start (``noise``, ``real``, ``other``, ``image``, or a plugin's)
    init: PluginSpec = attrs.field(factory=lambda: PluginSpec(name="noise"))
    #: the resolution schedule, ``[[from_iteration, size], ...]`` by increasing iteration;
    #: empty: the model's input size throughout
    resolutions: list[list[int]] = attrs.field(factory=list)
    #: the model sees candidates of a resolution stage below its input size upsampled (bilinear) to
    #: it, instead of at their own size: coarse-to-fine synthesis for a model of one input size (a
    #: ConvNet with a fixed head); the last stage must then be the model's input size
    upsample: bool = False
    #: a history row every this many iterations
    record_every: int = 1
    #: a checkpoint every this many iterations; 0: only at the end and on SIGINT/SIGTERM
    checkpoint_every: int = 50
    #: candidates split into this many groups, optimized apart (dsv.synthesis.groups); the
    #: processes of a run share the groups
    groups: int = 1
    #: keep the candidates inside the model's input domain (when known): ``clamp`` projects them
    #: after every step, ``penalty`` adds ``domain_weight`` times the mean squared excess, ``none``
    #: lets them roam
    domain: str = "clamp"
    #: the weight of the domain penalty (with ``domain = "penalty"``)
    domain_weight: float = 10.0
    #: candidate pools: of the ``candidates_per_class`` candidates of each class, the
    #: ``keep_per_class`` with the largest lambda (alive first) are the DSVs the retrain stage and
    #: benchmarks use (0: all)
    keep_per_class: int = 0
    #: the model's convolution weights in channels_last memory format: faster convolutions on CPU
    #: (benchmarks/imagenet_gen.py --speed); the numerics change slightly, so it counts in the config
    channels_last: bool = False


@attrs.define(kw_only=True)
class LoggingConfig:
    """Where a synthesis is logged besides the store (``pip install dsv[tensorboard]``)."""

    #: TensorBoard log directory; empty for none
    tensorboard: str = ""
    #: every loss term, entropy, accuracy, alive count and mean lambda every this many iterations
    scalars_every: int = 1
    #: a grid of the candidates every this many iterations; 0 for none
    images_every: int = 50


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


def with_iterations(s: SynthesisConfig, iterations: int) -> SynthesisConfig:
    """``s`` run for ``iterations`` steps with its schedules scaled to them: each resolution stage
    starts at the same fraction of the run, and the warm-ups of lambda and of the learning rate
    last the same fraction (a lambda held for the whole run stays held). A stage of the pipeline
    that runs fewer iterations than [synthesis] (the ends of a strip) still ends at the last size."""
    if iterations == s.iterations or s.iterations == 0:
        return attrs.evolve(s, iterations=iterations)
    factor = iterations / s.iterations
    return attrs.evolve(
        s,
        iterations=iterations,
        resolutions=[[max(1, round(start * factor)) if start > 1 else start, size] for start, size in s.resolutions],
        lambda_warmup=iterations if s.lambda_warmup >= s.iterations else round(s.lambda_warmup * factor),
        lr_warmup=round(s.lr_warmup * factor),
    )


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
    if s.augmentation_sampling not in AUGMENTATION_SAMPLING:
        problems.append(
            f"synthesis.augmentation_sampling: expected one of {', '.join(map(repr, AUGMENTATION_SAMPLING))}, "
            f"got {s.augmentation_sampling!r}"
        )
    if s.optimizer not in SYNTHESIS_OPTIMIZERS:
        problems.append(
            f"synthesis.optimizer: expected one of {', '.join(map(repr, SYNTHESIS_OPTIMIZERS))}, got {s.optimizer!r}"
        )
    if s.domain not in DOMAIN_MODES:
        problems.append(f"synthesis.domain: expected one of {', '.join(map(repr, DOMAIN_MODES))}, got {s.domain!r}")
    if s.domain_weight <= 0:
        problems.append(f"synthesis.domain_weight: must be positive, got {s.domain_weight}")
    return problems


def check_run(r: RunConfig) -> list[str]:
    """Range checks of a [run] table."""
    if r.seed < 0:
        return [f"run.seed: must be at least 0, got {r.seed}"]
    return []


def check_targets(raw_synthesis: Any) -> list[str]:
    """A [synthesis] table that lists both ``targets`` and ``classes`` as empty lists asks for a run
    without a candidate (leaving both keys out means every class of the model)."""
    if not isinstance(raw_synthesis, dict):
        return []
    if raw_synthesis.get("targets") == [] and raw_synthesis.get("classes") == []:
        return [
            "synthesis.targets: empty, and synthesis.classes is empty too: no candidate to synthesize; "
            "name the target classes (or leave both keys out for every class of the model)"
        ]
    return []


def check_logging(c: LoggingConfig) -> list[str]:
    return [
        f"logging.{key}: must be at least {low}, got {getattr(c, key)}"
        for key, low in (("scalars_every", 1), ("images_every", 0))
        if getattr(c, key) < low
    ]
