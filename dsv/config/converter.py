"""TOML values -> attrs classes: a strict cattrs converter whose errors name the file and the key path.

Every table is an attrs class structured with unknown keys forbidden and strict scalar types (a
string is never silently read as a number). Plugin tables (``{ name = "tv", weight = 1 }``) are
checked a second time against the options class of the named plugin, see :func:`build`.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from typing import Any, get_origin

import attrs
import cattrs
from cattrs.cols import list_structure_factory
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
)

from dsv.config.plugin_spec import PluginSpec
from dsv.config.tables import Target
from dsv.errors import ConfigError


class _TypeMismatch(TypeError):
    pass


def describe_value(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return "a table" if isinstance(value, dict) else "a list"
    return json.dumps(value) if isinstance(value, (str, bool, int, float)) else repr(value)


def _strict(kind: str, accept):
    def hook(value, _type):
        if not accept(value):
            raise _TypeMismatch(f"expected {kind}, got {describe_value(value)}")
        return _type(value) if _type is float else value

    return hook


def _structure_plugin(value, _type) -> PluginSpec:
    if isinstance(value, str):
        return PluginSpec(name=value)
    if not isinstance(value, dict):
        raise _TypeMismatch(f"expected a table with a 'name' key, got {describe_value(value)}")
    if "name" not in value or not isinstance(value["name"], str):
        raise _TypeMismatch("expected a table with a 'name' key naming a registered plugin")
    options = {k: v for k, v in value.items() if k != "name"}
    return PluginSpec(name=value["name"], options=options)


def _structure_target(value, _type):
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if (
        isinstance(value, dict)
        and value
        and all(
            re.fullmatch(r"\d+", str(k)) and _is_number(v) and math.isfinite(v) and v >= 0 for k, v in value.items()
        )
    ):
        return {str(k): float(v) for k, v in value.items()}
    raise _TypeMismatch(
        f"expected a class index or a table of class index = weight (e.g. {{ 207 = 0.4, 417 = 0.6 }}), "
        f"got {describe_value(value)}"
    )


def _structure_names(value, _type):
    if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return value
    raise _TypeMismatch(f"expected a string or a list of strings, got {describe_value(value)}")


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
    conv.register_unstructure_hook(PluginSpec, lambda spec: {"name": spec.name, **conv.unstructure(spec.options)})
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
    # attrs' comparison validators (ge, gt, le, lt, ...): "'top' must be >= 1: 0"
    compared = _ATTRS_COMPARISON.fullmatch(message)
    if compared is not None:
        name, rule, value = compared.groups()
        path = path if path.endswith(f".{name}") or path == name else _key_path(path, name)
        message = f"must be {rule}, got {value}"
    elif len(args) <= 1:  # a plugin's own check, e.g. in __attrs_post_init__: "strength must be >= 0, got -1"
        named = _NAMED_RULE.fullmatch(message)
        if named is not None:
            name = named.group(1)
            path = path if path.endswith(f".{name}") or path == name else _key_path(path, name)
            message = f"must {named.group(2)}"
    return f"{path}: {message}"


_NAMED_RULE = re.compile(r"([a-z_][a-z0-9_]*) must (.*)", re.S)
_ATTRS_COMPARISON = re.compile(r"'([A-Za-z_]\w*)' must be ([^:]+): (.*)", re.S)


def _messages(exc: BaseException, path: str) -> list[str]:
    """Flatten cattrs' exception groups into ``key.path: message`` lines."""
    out: list[str] = []
    if isinstance(exc, (ClassValidationError, IterableValidationError)):
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            if isinstance(note, AttributeValidationNote):  # the notes of a ClassValidationError
                sub_path = _key_path(path, note.name)
            else:
                sub_path = f"{path}[{note.index}]"
            if isinstance(sub, KeyError) and not isinstance(sub, (ClassValidationError, IterableValidationError)):
                out.append(f"{sub_path}: required key missing")
            else:
                out.extend(_messages(sub, sub_path))
        for sub in without:
            out.extend(_messages(sub, path))
    elif isinstance(exc, ForbiddenExtraKeysError):
        # the keys a table takes: the init aliases (attrs' private fields ``_x`` are not keys)
        known = sorted(a.alias for a in attrs.fields(exc.cl) if a.init) if attrs.has(exc.cl) else []
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


def _unknown_options(factory: Any, spec: PluginSpec, path: str, context: dict[str, Any]) -> list[str]:
    """``path.key: unknown option`` for each option a plain (non-attrs) factory does not take."""
    params = inspect.signature(factory).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return []
    known = ", ".join(k for k in params if k not in context)
    return [
        f"{path}.{key}: unknown option of {spec.name!r} (known: {known})" for key in spec.options if key not in params
    ]


def plugin_problems(spec: PluginSpec, registry: Any, *, path: str, **context: Any) -> list[str]:
    """Every problem of a plugin table, as ``key.path: message`` lines, without running the plugin:
    an unknown name, unknown options, wrong types and failing validators (an attrs factory is
    structured, which runs its validators; a plain factory has its keyword names checked).
    ``context`` holds the keywords the caller will pass besides the options."""
    try:
        entry, rest = registry.split(spec.name)
    except KeyError as exc:  # the registry's UnknownNameError, whose message lists the known names
        return [f"{path}.name: {exc}"]
    if rest is not None:
        context["target"] = rest
    factory = entry.factory
    if not attrs.has(factory):
        return _unknown_options(factory, spec, path, context)
    names = {a.alias for a in attrs.fields(factory) if a.init}
    extra = {k: v for k, v in context.items() if k in names}
    try:
        CONVERTER.structure({**spec.options, **extra}, factory)
    except Exception as exc:  # cattrs raises exception groups; flatten them
        return _messages(exc, path)
    return []


def build(
    spec: PluginSpec,
    registry: Any,
    *,
    source: str,
    path: str,
    name_key: str = "name",
    options_key: str = "",
    **context: Any,
) -> Any:
    """Instantiate a plugin from its table: look the name up, type-check its options.

    attrs factories are structured by the strict converter (unknown option -> error naming the
    key path); other callables have their keyword names checked against the signature. The
    name is at ``path.name_key``, the options at ``path.options_key`` (``model.source`` and
    ``model.options.width``; a plugin table such as ``synthesis.priors[0]`` holds both).
    """
    try:
        entry, rest = registry.split(spec.name)
    except KeyError as exc:  # the registry's UnknownNameError, whose message lists the known names
        raise ConfigError(f"{source}: {path}.{name_key}: {exc}") from None
    options_path = f"{path}.{options_key}" if options_key else path
    factory = entry.factory
    options = dict(spec.options)
    if rest is not None:
        context["target"] = rest
    if attrs.has(factory):
        names = {a.alias for a in attrs.fields(factory) if a.init}
        extra = {k: v for k, v in context.items() if k in names}
        return structure({**options, **extra}, factory, source=source, path=options_path)
    unknown = _unknown_options(factory, spec, options_path, context)
    if unknown:
        raise ConfigError("\n".join(f"{source}: {line}" for line in unknown))
    params = inspect.signature(factory).parameters
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in context.items() if takes_kwargs or k in params}
    try:
        return factory(**options, **kwargs)
    except (TypeError, ValueError) as exc:
        message = " ".join(str(exc).split())
        key = message.split(":", 1)[0]
        if key in options or (key in params and key not in context):  # "width: must be ...": an option
            raise ConfigError(f"{source}: {options_path}.{message}") from None
        if key in context:  # a key of the table itself, e.g. data.root
            raise ConfigError(f"{source}: {path}.{message}") from None
        raise ConfigError(f"{source}: {path}: {message}") from None
