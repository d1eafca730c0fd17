"""Pipeline files: TOML -> attrs classes, with errors that name the file and the key path.

Every table is an attrs class structured by cattrs with unknown keys forbidden and strict scalar
types (a string is never silently read as a number). Plugin tables (``{ name = "tv", weight = 1 }``)
are checked a second time against the options class of the named plugin, see :func:`build`.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import tomllib
from pathlib import Path
from typing import Any, Union, get_origin

import attrs
import cattrs
from cattrs.cols import list_structure_factory
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from dsv.distill_config import AnalyseConfig, RetrainConfig, SelectConfig, check_distill
from dsv.errors import ConfigError
from dsv.generate_config import EditConfig, EvaluateConfig, InterpolateConfig, check_generate, export_names
from dsv.plugin_spec import PluginSpec
from dsv.rawconfig import RESUMABLE_KEYS, apply_overrides, changed_keys, config_hash, parse_override  # noqa: F401

# Every stage in the order a pipeline runs them (a file lists the ones it wants, in any order);
# dsv.stages maps the names after synthesize to their functions.
STAGES = ("train", "synthesize", "select", "retrain", "evaluate", "analyse", "interpolate", "edit", "export")
DEFAULT_STAGES = ("train", "synthesize", "export")


Target = Union[int, dict[str, float]]


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


@attrs.define(kw_only=True)
class TrainConfig:
    retrainer: PluginSpec = attrs.field(factory=lambda: PluginSpec(name="adam"))
    cache_dir: str = "stores/models"


def _default_losses() -> list[PluginSpec]:
    return [PluginSpec(name="primal"), PluginSpec(name="stationarity")]


@attrs.define(kw_only=True)
class SynthesisConfig:
    iterations: int = 300
    candidates_per_class: int = 1
    classes: list[int] = attrs.field(factory=list)  # empty: every class of the model
    targets: list[Target] = attrs.field(factory=list)  # explicit targets; overrides classes
    lr_x: float = 0.05
    lr_lambda: float = 0.01
    lambda_init: float = 1.0
    lambda_warmup: int = 100  # hold lambda while x leaves the noise (else lambda is pruned at once)
    augmented_weight: float = 1.0  # eta of Algorithm 1: weight of the KKT terms on A(x)
    losses: list[PluginSpec] = attrs.field(factory=_default_losses)
    priors: list[PluginSpec] = attrs.field(factory=list)
    augmentations: list[PluginSpec] = attrs.field(factory=list)
    init: PluginSpec = attrs.field(factory=lambda: PluginSpec(name="noise"))
    resolutions: list[list[int]] = attrs.field(factory=list)  # [[from_iteration, size], ...]
    record_every: int = 1
    checkpoint_every: int = 50  # 0: only at the end and on SIGINT/SIGTERM
    groups: int = 1  # candidates split into this many groups, optimized apart (dsv.groups); ranks share groups


@attrs.define(kw_only=True)
class ExportConfig:
    png: str = "grid.png"  # written inside the run store; "" for none
    npz: str = ""


@attrs.define(kw_only=True)
class LoggingConfig:
    """Where a synthesis is logged besides the store (``pip install dsv[tensorboard]``)."""

    tensorboard: str = ""  # log directory; "" for none
    scalars_every: int = 1  # every loss term, entropy, accuracy, alive count, mean lambda
    images_every: int = 50  # grid of the candidates; 0 for none


@attrs.define(kw_only=True)
class PipelineConfig:
    run: RunConfig = attrs.field(factory=RunConfig)
    data: DataConfig | None = None
    model: ModelConfig
    train: TrainConfig | None = None
    synthesis: SynthesisConfig = attrs.field(factory=SynthesisConfig)
    export: ExportConfig = attrs.field(factory=ExportConfig)
    logging: LoggingConfig = attrs.field(factory=LoggingConfig)
    select: SelectConfig | None = None
    retrain: RetrainConfig | None = None
    analyse: AnalyseConfig | None = None
    evaluate: EvaluateConfig | None = None
    interpolate: InterpolateConfig | None = None
    edit: EditConfig | None = None


# --------------------------------------------------------------------------------------------------
# strict converter
# --------------------------------------------------------------------------------------------------


class _TypeMismatch(TypeError):
    pass


def _describe(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return "a table" if isinstance(value, dict) else "a list"
    return json.dumps(value) if isinstance(value, (str, bool, int, float)) else repr(value)


def _strict(kind: str, accept):
    def hook(value, _type):
        if not accept(value):
            raise _TypeMismatch(f"expected {kind}, got {_describe(value)}")
        return _type(value) if _type is float else value

    return hook


def _structure_plugin(value, _type) -> PluginSpec:
    if isinstance(value, str):
        return PluginSpec(name=value)
    if not isinstance(value, dict):
        raise _TypeMismatch(f"expected a table with a 'name' key, got {_describe(value)}")
    if "name" not in value or not isinstance(value["name"], str):
        raise _TypeMismatch("expected a table with a 'name' key naming a registered plugin")
    options = {k: v for k, v in value.items() if k != "name"}
    return PluginSpec(name=value["name"], options=options)


def _structure_target(value, _type):
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, dict) and value and all(
        re.fullmatch(r"\d+", str(k)) and _is_number(v) and math.isfinite(v) and v >= 0
        for k, v in value.items()
    ):
        return {str(k): float(v) for k, v in value.items()}
    raise _TypeMismatch(
        f"expected a class index or a table of class index = weight (e.g. {{ 207 = 0.4, 417 = 0.6 }}), "
        f"got {_describe(value)}"
    )


def _structure_names(value, _type):
    if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return value
    raise _TypeMismatch(f"expected a string or a list of strings, got {_describe(value)}")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_table(v: Any) -> bool:
    return isinstance(v, dict)


def _is_list(v: Any) -> bool:
    return isinstance(v, list)


def _structure_float(value, _type) -> float:
    number = _strict("a number", _is_number)(value, float)
    if not math.isfinite(number):
        # TOML allows nan and inf; nan passes every range check in _check (nan <= 0 is false)
        raise _TypeMismatch(f"expected a finite number, got {number}")
    return number


def _requiring(kind: str, accept, structure):
    """Check the shape before cattrs' own hook sees the value: it would iterate a string as a
    list of characters, or fail on a scalar given for a table with an AttributeError."""
    check = _strict(kind, accept)

    def hook(value, _type):
        return structure(check(value, _type), _type)

    return hook


def make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook(float, _structure_float)
    conv.register_structure_hook(int, _strict("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)))
    conv.register_structure_hook(str, _strict("a string", lambda v: isinstance(v, str)))
    conv.register_structure_hook(bool, _strict("true or false", lambda v: isinstance(v, bool)))
    conv.register_structure_hook(PluginSpec, _structure_plugin)
    conv.register_structure_hook(Target, _structure_target)
    conv.register_structure_hook_func(lambda t: t == dict[str, Any], _strict("a table", _is_table))
    conv.register_structure_hook_func(lambda t: t == (str | list[str]), _structure_names)
    # factories, not plain hooks: the wrapped cattrs hook is generated once per type
    conv.register_structure_hook_factory(
        lambda t: get_origin(t) is list,
        lambda t: _requiring("a list", _is_list, list_structure_factory(t, conv)),
    )
    conv.register_structure_hook_factory(
        attrs.has, lambda t: _requiring("a table", _is_table, conv.gen_structure_attrs_fromdict(t))
    )
    conv.register_unstructure_hook(
        PluginSpec, lambda spec: {"name": spec.name, **conv.unstructure(spec.options)}
    )
    return conv


CONVERTER = make_converter()


def _key_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _plain_message(exc: TypeError | ValueError, path: str) -> str:
    """``key.path: message`` for an error raised by a hook or a validator. attrs validators raise
    (message, attribute, ...) whose str() is the repr of that whole tuple: keep the message, and
    name the attribute in the key path instead."""
    args = exc.args
    if len(args) > 1 and isinstance(args[1], attrs.Attribute):
        path = _key_path(path, args[1].name)
    message = args[0] if args and isinstance(args[0], str) else str(exc)
    return f"{path}: {message}"


def _messages(exc: BaseException, path: str) -> list[str]:
    """Flatten cattrs' exception groups into ``key.path: message`` lines."""
    out: list[str] = []
    if isinstance(exc, (ClassValidationError, IterableValidationError)):
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            if isinstance(exc, IterableValidationError):
                sub_path = f"{path}[{note.index}]"
            else:
                sub_path = _key_path(path, note.name)
            if isinstance(sub, KeyError) and not isinstance(
                sub, (ClassValidationError, IterableValidationError)
            ):
                out.append(f"{sub_path}: required key missing")
            else:
                out.extend(_messages(sub, sub_path))
        for sub in without:
            out.extend(_messages(sub, path))
    elif isinstance(exc, ForbiddenExtraKeysError):
        known = sorted(a.name for a in attrs.fields(exc.cl)) if attrs.has(exc.cl) else []
        for key in sorted(exc.extra_fields):
            out.append(f"{_key_path(path, key)}: unknown key (known: {', '.join(known)})")
    elif isinstance(exc, (TypeError, ValueError)):  # _TypeMismatch included
        out.append(_plain_message(exc, path))
    else:
        out.append(f"{path}: {type(exc).__name__}: {exc}")
    return out


def structure(data: Any, cls: type, *, source: str, path: str = "") -> Any:
    """Structure ``data`` into ``cls``; any problem becomes one ConfigError naming each key path."""
    try:
        return CONVERTER.structure(data, cls)
    except Exception as exc:  # cattrs raises exception groups; flatten them
        lines = _messages(exc, path)
        raise ConfigError("\n".join(f"{source}: {line}" for line in lines)) from None


# --------------------------------------------------------------------------------------------------
# loading, overrides, hashing
# --------------------------------------------------------------------------------------------------


@attrs.define
class LoadedPipeline:
    config: PipelineConfig
    raw: dict[str, Any]  # the table after overrides: what the hash covers and the store keeps
    source: str  # file name (for messages)
    text: str = ""  # the file as written (kept in the store next to ``raw``)
    overrides: list[str] = attrs.field(factory=list)

    @property
    def config_hash(self) -> str:
        return config_hash(self.raw)

    @property
    def store_path(self) -> Path:
        return Path(self.config.run.store or f"stores/{self.config.run.name}.zarr")


def load_text(
    text: str, *, source: str, overrides: list[str] = (), store: str | None = None
) -> LoadedPipeline:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    loaded = from_dict(raw, source=source, overrides=overrides, store=store)
    loaded.text = text
    return loaded


def from_dict(
    raw: dict[str, Any], *, source: str, overrides: list[str] = (), store: str | None = None
) -> LoadedPipeline:
    raw = apply_overrides(raw, list(overrides))
    if store:
        _set_store(raw, store, source)
    config = structure(raw, PipelineConfig, source=source)
    _check(config, source)
    return LoadedPipeline(config=config, raw=raw, source=source, overrides=list(overrides))


def _set_store(raw: dict[str, Any], store: str, source: str) -> None:
    run = raw.setdefault("run", {})
    if not isinstance(run, dict):  # checked here: the structuring that would report it comes later
        raise ConfigError(f"{source}: run: expected a table, got {_describe(run)}")
    run["store"] = str(store)


def load(path: str | Path, overrides: list[str] = (), store: str | None = None) -> LoadedPipeline:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read pipeline file: {exc.strerror}") from None
    return load_text(text, source=str(path), overrides=overrides, store=store)


def _check(config: PipelineConfig, source: str) -> None:
    """Checks no type can express: ranges and cross-table requirements."""
    problems = []
    for i, stage in enumerate(config.run.stages):
        if stage not in STAGES:
            problems.append(f"run.stages[{i}]: unknown stage {stage!r} (known: {', '.join(STAGES)})")
    if "train" in config.run.stages and config.train is not None and config.data is None:
        problems.append("train: the train stage needs a [data] table")
    problems += check_synthesis(config.synthesis) + check_logging(config.logging)
    problems += check_distill(config.select, config.retrain, config.analyse)
    problems += check_generate(config.evaluate, config.interpolate, config.edit)
    # evaluate needs [data] only for retrained models, which the retrain stage (checked here) makes
    for stage in ("select", "retrain", "analyse"):
        if stage in config.run.stages and config.data is None:
            problems.append(f"run.stages: the {stage} stage needs a [data] table")
    for stage in ("interpolate", "edit"):
        if stage in config.run.stages and getattr(config, stage) is None:
            problems.append(f"run.stages: the {stage} stage needs an [{stage}] table")
    names = {f"export.{key}": getattr(config.export, key) for key in ("png", "npz")}
    for key, name in {**names, **export_names(config.interpolate, config.edit)}.items():
        if name and not _is_plain_file_name(name):
            problems.append(f"{key}: a file name inside the run store, not a path, got {name!r}")
    if problems:
        raise ConfigError("\n".join(f"{source}: {p}" for p in problems))


def check_synthesis(s: SynthesisConfig) -> list[str]:
    """Range checks of a [synthesis] table (the pipeline's and ``dsv.synthesize``'s)."""
    problems = []
    for key in ("iterations", "candidates_per_class", "record_every", "groups"):
        if getattr(s, key) < 1:
            problems.append(f"synthesis.{key}: must be at least 1, got {getattr(s, key)}")
    if s.checkpoint_every < 0:
        problems.append(f"synthesis.checkpoint_every: must be at least 0 (0: only at the end), got {s.checkpoint_every}")
    for key in ("lr_x", "lr_lambda"):
        if getattr(s, key) <= 0:
            problems.append(f"synthesis.{key}: must be positive, got {getattr(s, key)}")
    for i, pair in enumerate(s.resolutions):
        if len(pair) != 2 or pair[0] < 0 or pair[1] < 8:
            problems.append(f"synthesis.resolutions[{i}]: expected [from_iteration, size >= 8], got {pair}")
    if s.lambda_init <= 0:
        problems.append(f"synthesis.lambda_init: must be positive (dual feasibility), got {s.lambda_init}")
    if s.augmented_weight < 0:
        problems.append(f"synthesis.augmented_weight: must be at least 0, got {s.augmented_weight}")
    return problems


def check_logging(c: LoggingConfig) -> list[str]:
    return [f"logging.{key}: must be at least {low}, got {getattr(c, key)}"
            for key, low in (("scalars_every", 1), ("images_every", 0)) if getattr(c, key) < low]


def _is_plain_file_name(name: str) -> bool:
    # checked at load: the store refuses anything else only at export, after the whole synthesis.
    # "." and ".." are their own Path.name but name the store or its parent, not a file in it;
    # a backslash is a separator on Windows only, so Path on POSIX would not see it.
    return name not in (".", "..") and "\\" not in name and Path(name).name == name


def build(spec: PluginSpec, registry, *, source: str, path: str, **context: Any) -> Any:
    """Instantiate a plugin from its table: look the name up, type-check its options.

    attrs factories are structured by the strict converter (unknown option -> error naming the
    key path); other callables have their keyword names checked against the signature.
    """
    from dsv.plugins import UnknownNameError

    try:
        entry, rest = registry.split(spec.name)
    except UnknownNameError as exc:
        raise ConfigError(f"{source}: {path}.name: {exc}") from None
    factory = entry.factory
    options = dict(spec.options)
    if rest is not None:
        context["target"] = rest
    if attrs.has(factory):
        names = {a.alias for a in attrs.fields(factory) if a.init}
        extra = {k: v for k, v in context.items() if k in names}
        plugin_options = {k: v for k, v in options.items()}
        obj = structure({**plugin_options, **extra}, factory, source=source, path=path)
        return obj
    params = inspect.signature(factory).parameters
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    if not takes_kwargs:
        for key in options:
            if key not in params:
                known = ", ".join(k for k in params if k not in context)
                raise ConfigError(f"{source}: {path}.{key}: unknown option of {spec.name!r} (known: {known})")
    kwargs = {k: v for k, v in context.items() if takes_kwargs or k in params}
    try:
        return factory(**options, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {path}: {exc}") from None
