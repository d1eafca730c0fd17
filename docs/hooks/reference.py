"""MkDocs hook: the reference pages generated from the code at build time, so they cannot drift.

``reference/config.md``: every pipeline key, from the attrs tables the file is checked against
(:func:`dsv.pipeline.reference.config_markdown`). ``reference/cli.md``: every ``dsv-pipeline``
subcommand and option, from its argparse parser (:func:`cli_markdown`). Built-in plugins only, so
the pages do not depend on what else is installed where the docs are built."""

from __future__ import annotations

import argparse
from typing import Any

#: the generated pages, by their path under docs/
PAGES = ("reference/config.md", "reference/cli.md")


def config_page() -> str:
    from dsv.pipeline.reference import config_markdown
    from dsv.plugins import DsvPluginManager

    return config_markdown(DsvPluginManager(load_entry_points=False))


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each subcommand, in the order they were added."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return []


def escape(text: str) -> str:
    """Plain text for a Markdown table cell: ``<name>`` stays text, ``|`` does not split the cell."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def _argument_row(action: argparse.Action) -> str:
    if action.option_strings:
        name = ", ".join(f"`{s}`" for s in action.option_strings)
        if action.nargs != 0:
            name += f" `{action.metavar or action.dest.upper()}`"
    else:
        name = f"`{action.metavar or action.dest}`"
    choices = f" (one of {', '.join(f'`{c}`' for c in action.choices)})" if action.choices else ""
    default = ""
    if action.default not in (None, False, [], argparse.SUPPRESS) and action.option_strings:
        default = f" Default: `{action.default}`."
    text = escape(action.help or "")
    if text and not text.endswith("."):
        text += "."
    return f"| {name} | {text}{choices}{default} |"


def cli_markdown(parser: argparse.ArgumentParser) -> str:
    """One section per subcommand: its usage and a table of its arguments."""
    prog = parser.prog
    lines = [
        "# Command line",
        "",
        f"`{prog}`: {parser.description or ''} Every subcommand and option below is read from the",
        "parser itself.",
        "",
        "| subcommand | what it does |",
        "| --- | --- |",
    ]
    subcommands = _subcommands(parser)
    lines += [f"| [`{name}`](#{name}) | {text} |" for name, text, _ in subcommands]
    for name, text, sub in subcommands:
        usage = " ".join(sub.format_usage().removeprefix("usage:").split())
        lines += [
            "",
            f"## {name}",
            "",
            f"{text[0].upper()}{text[1:]}." if text else "",
            "",
            "```text",
            usage,
            "```",
            "",
        ]
        actions = [a for a in sub._actions if not isinstance(a, argparse._HelpAction)]
        if actions:
            lines += ["| argument | meaning |", "| --- | --- |", *(_argument_row(a) for a in actions)]
    return "\n".join(lines) + "\n"


def cli_page() -> str:
    from dsv.cli import parser

    return cli_markdown(parser())


def on_files(files: Any, config: Any) -> Any:
    # imported here: the tests read the pages without MkDocs installed
    from mkdocs.structure.files import File

    for path, content in zip(PAGES, (config_page(), cli_page())):
        files.append(File.generated(config, path, content=content))
    return files
