"""The configuration reference, generated from the registries a pipeline file is checked against:
the core tables (:mod:`dsv.config.tables`), the table of every registered stage, the
``[plugins.<name>]`` options classes and the options of every registered plugin (losses, priors,
augmentations, initializers, retrainers, model sources, data sets).

Each key's description is its ``#:`` comment (an attrs table) or its ``:param name:`` line (a
plain factory function's keyword); :func:`undocumented` lists the keys that have none, and the
tests fail on any. The docs build writes :func:`config_markdown` to the reference page."""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable
from typing import Any

import attrs

from dsv.config import PLUGINS_TABLE, keydocs, tables
from dsv.config.keydocs import KeyDoc
from dsv.pipeline.orchestrator import PLUGIN_KEYS
from dsv.plugins import DsvPluginManager

#: the plugin kinds whose entries take options, in the order the reference lists them
OPTION_KINDS = ("losses", "priors", "augmentations", "initializers", "retrainers", "models", "datasets")

#: keywords a plain factory gets from dsv rather than from its options (see dsv.config.build)
CONTEXT_KEYWORDS = {"models": ("request", "target"), "datasets": ("root", "download")}

PARAM = re.compile(r":param (\w+):\s*(.*?)(?=\n\s*:\w|\n\s*\n|\Z)", re.S)


@attrs.frozen
class Section:
    """One table of the reference: its heading, what it is for, and its keys."""

    title: str
    intro: str
    keys: list[KeyDoc]
    level: int = 2


def _first_paragraph(doc: str | None) -> str:
    return " ".join(inspect.cleandoc(doc or "").split("\n\n")[0].split())


def core_tables() -> list[tuple[str, type, Callable[..., Any] | None]]:
    """(name, attrs class, check function) of each core table, from the fields of PipelineConfig."""
    hints = typing.get_type_hints(tables.PipelineConfig)
    out = []
    for name in tables.CORE_TABLES:
        cls = next(t for t in (hints[name], *typing.get_args(hints[name])) if attrs.has(t))
        out.append((name, cls, getattr(tables, f"check_{name}", None)))
    return out


def function_keys(factory: Callable[..., Any], prefix: str, context: tuple[str, ...]) -> list[KeyDoc]:
    """The keyword options of a plain factory, described by its docstring's ``:param:`` lines."""
    params = {name: " ".join(text.split()) for name, text in PARAM.findall(inspect.getdoc(factory) or "")}
    checks = keydocs.message_checks(factory, "")
    out = []
    for i, p in enumerate(inspect.signature(factory).parameters.values()):
        if p.name in context or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or (i == 0 and p.name == "request"):
            continue
        annotation = "" if p.annotation is p.empty else keydocs.type_text(p.annotation)
        default = keydocs.default_text(p.default)
        # a factory's own messages often quote its other arguments ("… halvings of … px"): the plain ones only
        rules = tuple(rule for rule in checks.get(p.name, ()) if "…" not in rule and "the value" not in rule)
        out.append(KeyDoc(f"{prefix}.{p.name}", annotation, default, rules, params.get(p.name, "")))
    return out


def plugin_sections(pm: DsvPluginManager) -> list[Section]:
    """One section per kind and one per registered name with its options."""
    kinds = {kind: [key for key, k in PLUGIN_KEYS.items() if k == kind] for kind in OPTION_KINDS}
    out = []
    for kind in OPTION_KINDS:
        where = ", ".join(f"`{key}`" for key in kinds[kind]) or (
            "`model.source`" if kind == "models" else "`data.name`"
        )
        out.append(Section(kind.capitalize(), f"Named in {where}.", [], 3))
        for entry in pm.registry(kind).entries():
            label = entry.name + "<name>" if entry.name.endswith(":") else entry.name
            factory = entry.factory
            if attrs.has(factory):
                keys = keydocs.table_keys(factory, label)
            else:
                keys = function_keys(factory, label, CONTEXT_KEYWORDS.get(kind, ()))
            doc = _first_paragraph(factory.__doc__ if attrs.has(factory) else inspect.getdoc(factory))
            origin = "" if entry.plugin.endswith("(built-in)") else f" (from {entry.plugin})"
            out.append(Section(f"`{label}`", doc + origin, keys, 4))
    return out


def sections(pm: DsvPluginManager) -> list[Section]:
    """Every table of a pipeline file and every plugin's options, as the registries of ``pm`` have them."""
    out = [
        Section(f"[{name}]", _first_paragraph(cls.__doc__), keydocs.table_keys(cls, name, check))
        for name, cls, check in core_tables()
    ]
    for entry in pm.registry("stages").entries():
        stage = entry.factory
        if stage.table is None:
            continue
        intro = _first_paragraph(stage.table.__doc__) or _first_paragraph(inspect.getmodule(stage.run).__doc__)
        out.append(
            Section(
                f"[{stage.name}]",
                f"{intro} (stage `{stage.name}`)",
                keydocs.table_keys(stage.table, stage.name, stage.check),
            )
        )
    for entry in pm.registry("plugin_options").entries():
        path = f"{PLUGINS_TABLE}.{entry.name}"
        doc = _first_paragraph(entry.factory.__doc__)
        out.append(Section(f"[{path}]", f"{doc} (from {entry.plugin})", keydocs.table_keys(entry.factory, path)))
    return out + plugin_sections(pm)


def undocumented(pm: DsvPluginManager) -> list[str]:
    """The key paths that have no description."""
    return [key.path for section in sections(pm) for key in section.keys if not key.doc]


# ---- markdown -----------------------------------------------------------------------------------


def _md(text: str) -> str:
    """reStructuredText's inline markup as Markdown, safe inside a table cell."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    text = re.sub(r"``(.+?)``", r"`\1`", text)
    # outside code spans, <name> is text, not an HTML tag
    parts = text.split("`")
    parts[::2] = [p.replace("<", "&lt;").replace(">", "&gt;") for p in parts[::2]]
    return "`".join(parts).replace("|", "\\|")


def _row(key: KeyDoc) -> str:
    checks = "; ".join(_md(c) for c in key.checks)
    default = key.default if key.default in ("required", "not set") else f"`{_md(key.default)}`"
    kind = f"`{key.type.replace(' | ', ' or ')}`" if key.type else ""
    return f"| `{key.path}` | {kind} | {default} | {checks} | {_md(key.doc)} |"


def config_markdown(pm: DsvPluginManager) -> str:
    """The reference page: a heading and a table of keys per section."""
    lines = [
        "# Pipeline keys",
        "",
        "Every key `dsv-pipeline run` accepts, generated from the code that checks the file when it",
        "loads (unknown keys, wrong types and failing checks are errors naming the key path). A",
        '`plugin` value is a table naming a registered plugin, `{ name = "tv", weight = 1e-4 }`:',
        "its other keys are that plugin's options, listed under [Built-in plugins](#built-in-plugins).",
        f"`[{PLUGINS_TABLE}.<name>]` tables hold the options of a plugin as a whole.",
        "",
    ]
    in_plugins = False
    for section in sections(pm):
        if section.level > 2 and not in_plugins:
            in_plugins = True
            lines += ["## Built-in plugins", ""]
        heading = "#" * section.level
        lines += [f"{heading} {section.title}", ""]
        if section.intro:
            lines += [_md(section.intro), ""]
        if section.keys:
            lines += ["| key | type | default | checked | description |", "| --- | --- | --- | --- | --- |"]
            lines += [_row(key) for key in section.keys]
            lines.append("")
    return "\n".join(lines)
