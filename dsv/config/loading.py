"""Loading a pipeline file: TOML -> :class:`PipelineConfig`, overrides applied, every problem
reported at once with the file and the key path.

The stages' tables are not known here: the caller passes them (``tables``: table name -> attrs
class, ``resumable``: the tables a resumed run may change, ``check``: the cross-table checks),
which :func:`dsv.pipeline.load_pipeline` takes from the stage registry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import tomllib

from dsv.config.converter import describe_value, structure
from dsv.config.plugin_options import PLUGINS_TABLE, structure_plugin_options
from dsv.config.raw import apply_overrides, config_hash
from dsv.config.tables import CORE_TABLES, PipelineConfig, check_logging, check_run, check_synthesis, check_targets
from dsv.errors import ConfigError

#: ``check(config, unreadable) -> problems``: the checks across tables; ``unreadable`` names the
#: stage tables that failed to structure (absent from ``config.tables``, their problems reported)
Check = Callable[[PipelineConfig, frozenset[str]], list[str]]


@attrs.define
class LoadedPipeline:
    config: PipelineConfig
    raw: dict[str, Any]  # the table after overrides: what the hash covers and the store keeps
    source: str  # file name (for messages)
    text: str = ""  # the file as written (kept in the store next to ``raw``)
    overrides: list[str] = attrs.field(factory=list)
    resumable: tuple[str, ...] = ()  # stage tables a resumed run may change (left out of the hash)

    @property
    def config_hash(self) -> str:
        return config_hash(self.raw, self.resumable)

    @property
    def store_path(self) -> Path:
        return Path(self.config.run.store or f"stores/{self.config.run.name}.zarr")


def load_text(
    text: str,
    *,
    source: str,
    overrides: Sequence[str] = (),
    store: str | None = None,
    tables: Mapping[str, type | None] | None = None,
    resumable: Sequence[str] = (),
    check: Check | None = None,
    plugin_options: Any = None,
) -> LoadedPipeline:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    loaded = from_dict(
        raw,
        source=source,
        overrides=overrides,
        store=store,
        tables=tables,
        resumable=resumable,
        check=check,
        plugin_options=plugin_options,
    )
    loaded.text = text
    return loaded


def from_dict(
    raw: dict[str, Any],
    *,
    source: str,
    overrides: Sequence[str] = (),
    store: str | None = None,
    tables: Mapping[str, type | None] | None = None,
    resumable: Sequence[str] = (),
    check: Check | None = None,
    plugin_options: Any = None,
) -> LoadedPipeline:
    """``raw`` (a parsed TOML document) as a checked pipeline. ``tables`` maps each stage that has
    a table to its attrs class (None: the stage takes no table). ``plugin_options`` is the registry
    of the plugins' options classes (``plugin_options`` kind), against which the ``[plugins.<name>]``
    tables are checked; None: a ``[plugins]`` table is an error."""
    tables = dict(tables or {})
    raw = apply_overrides(raw, list(overrides))
    if store:
        _set_store(raw, store, source)
    stage_tables = {name: cls for name, cls in tables.items() if cls is not None}
    known = sorted({*CORE_TABLES, *stage_tables, *([PLUGINS_TABLE] if plugin_options is not None else [])})
    unknown = [key for key in raw if key not in known]
    problems = [f"{key}: unknown key (known: {', '.join(known)})" for key in sorted(unknown)]
    core = {key: value for key, value in raw.items() if key in CORE_TABLES}
    config = None
    try:
        config = structure(core, PipelineConfig, source=source)
    except ConfigError as exc:
        problems += _lines(exc, source)
    structured = {}
    for name, cls in stage_tables.items():
        if name in raw:
            try:
                structured[name] = structure(raw[name], cls, source=source, path=name)
            except ConfigError as exc:
                problems += _lines(exc, source)
    options: dict[str, Any] = {}
    if plugin_options is not None:
        options, option_problems = structure_plugin_options(raw.get(PLUGINS_TABLE), plugin_options, source=source)
        problems += option_problems
    if config is not None:
        config.plugin_options = options
        # every check that can run does, so that a file's problems are all reported at once
        config.tables = structured
        problems += check_run(config.run) + check_targets(raw.get("synthesis"))
        problems += check_synthesis(config.synthesis) + check_logging(config.logging)
        if check is not None:
            problems += check(config, frozenset(stage_tables) & set(raw) - set(structured))
    if problems:
        raise ConfigError("\n".join(f"{source}: {p}" for p in problems))
    assert config is not None
    return LoadedPipeline(config=config, raw=raw, source=source, overrides=list(overrides), resumable=tuple(resumable))


def _lines(exc: ConfigError, source: str) -> list[str]:
    """The problems of one ConfigError without their ``source: `` prefix (added back once)."""
    prefix = f"{source}: "
    return [line[len(prefix) :] if line.startswith(prefix) else line for line in str(exc).splitlines()]


def _set_store(raw: dict[str, Any], store: str, source: str) -> None:
    run = raw.setdefault("run", {})
    if not isinstance(run, dict):  # checked here: the structuring that would report it comes later
        raise ConfigError(f"{source}: run: expected a table, got {describe_value(run)}")
    run["store"] = str(store)


def read_pipeline_text(path: str | Path) -> str:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read pipeline file: {exc.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); save the file as UTF-8"
        ) from None


def load(path: str | Path, overrides: Sequence[str] = (), store: str | None = None, **stages: Any) -> LoadedPipeline:
    """A pipeline file; ``stages`` are the keyword arguments of :func:`from_dict` about stage tables."""
    return load_text(read_pipeline_text(path), source=str(path), overrides=overrides, store=store, **stages)
