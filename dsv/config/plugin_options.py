"""The ``[plugins.<name>]`` tables: options of a plugin as a whole (a lifecycle hook's, for
example), each structured into the attrs class the plugin registered through
``dsv_register_plugin_options`` and checked like every other table (unknown keys, wrong types and
failing validators name the key path, ``plugins.<name>.<key>``).

A plugin that registered an options class gets an instance even when the file has no table for
it (its defaults), unless the class has a required field; the hooks then find no entry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from dsv.config.converter import CONVERTER, describe_value, structure
from dsv.errors import ConfigError

#: the top-level key of the plugins' own tables
PLUGINS_TABLE = "plugins"


def default_plugin_options(registry: Any) -> dict[str, Any]:
    """name -> options object of every registered options class that has defaults for all fields."""
    out = {}
    for entry in registry.entries():
        if not attrs.has(entry.factory):
            continue
        try:
            out[entry.name] = CONVERTER.structure({}, entry.factory)
        except Exception:  # a required option: the plugin is configured only by its table
            continue
    return out


def structure_plugin_options(tables: Any, registry: Any, *, source: str) -> tuple[dict[str, Any], list[str]]:
    """The ``[plugins]`` table as name -> options object (defaults for the plugins it leaves out),
    and every problem as ``plugins.<name>...: message`` lines. A value may be a table or (from the
    Python API) an instance of the registered class, used as it is."""
    if tables is None:
        tables = {}
    if not isinstance(tables, Mapping):
        got = describe_value(tables)
        return {}, [f"{PLUGINS_TABLE}: expected a table of [{PLUGINS_TABLE}.<name>] tables, got {got}"]
    out = default_plugin_options(registry)
    problems = []
    for name, value in tables.items():
        path = f"{PLUGINS_TABLE}.{name}"
        try:
            entry, rest = registry.split(name)
        except KeyError as exc:  # the registry's UnknownNameError: the known names, a disabled provider
            problems.append(f"{path}: {exc}")
            continue
        if rest is not None or not attrs.has(entry.factory):
            problems.append(f"{path}: {entry.plugin} registered options that are not an attrs class")
            continue
        if isinstance(value, entry.factory):
            out[name] = value
            continue
        try:
            out[name] = structure(value, entry.factory, source=source, path=path)
        except ConfigError as exc:
            prefix = f"{source}: "
            problems += [line.removeprefix(prefix) for line in str(exc).splitlines()]
    return out, problems


def unstructure_plugin_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options objects as TOML-like tables (what a store records)."""
    return {name: CONVERTER.unstructure(value) for name, value in options.items()}
