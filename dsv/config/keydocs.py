"""What the configuration reference says about each key of a table, read from the code itself:
the ``#:`` comment lines above each field (the convention of :mod:`dsv.config.tables`), the
field's type and default, and its checks: the field's attrs validators and the messages of the
table's check function that name the key. Nothing here is written twice, so it cannot drift.

A check message is read from the source of the check (an f-string such as
``f"synthesis.lr_x: must be positive, got {s.lr_x}"`` gives ``must be positive``); the loop
variables of ``for key in ("a", "b")`` and module constants are filled in."""

from __future__ import annotations

import ast
import functools
import inspect
import re
import textwrap
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from dsv.config.converter import CONVERTER
from dsv.config.names import file_name_problems
from dsv.config.raw import toml_inline

#: a key's comment: ``#:`` at the start of a line, the text after it
DOC_LINE = re.compile(r"^\s*#:\s?(.*)$")

# what a message may compute from module constants ("expected one of 'a', 'b'")
SAFE_BUILTINS = {"map": map, "repr": repr, "str": str, "len": len, "sorted": sorted}

# what a check message ends with after its rule: the offending value, which the reference leaves out
GOT = re.compile(r",? got .*$")


@attrs.frozen
class KeyDoc:
    """One key of a table as the reference lists it."""

    path: str  # e.g. "synthesis.lr_x"
    type: str
    default: str  # TOML text; "required" for a key without a default
    checks: tuple[str, ...]
    doc: str  # "" when the field has no ``#:`` comment


@functools.cache
def _class_comments(cls: type) -> dict[str, str]:
    """name -> ``#:`` text of the fields written in ``cls``'s own body."""
    try:
        lines, _ = inspect.getsourcelines(cls)
    except (OSError, TypeError):  # built in a session, no source: no comments to read
        return {}
    tree = ast.parse(textwrap.dedent("".join(lines)))
    body: list[ast.stmt] = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    out = {}
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above: list[str] = []
        row = node.lineno - 2  # the line above the field, 0-based
        while row >= 0 and (match := DOC_LINE.match(lines[row])):
            above.insert(0, match.group(1).strip())
            row -= 1
        if above:
            out[node.target.id] = " ".join(above)
    return out


def field_doc(cls: type, name: str) -> str:
    """The ``#:`` comment of field ``name``, from ``cls`` or the nearest base class that has one."""
    for klass in cls.__mro__:
        doc = _class_comments(klass).get(name)
        if doc:
            return doc
    return ""


def type_text(annotation: Any) -> str:
    """The annotation as written, without module prefixes; a plugin table reads ``plugin``."""
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    return re.sub(r"\b[A-Za-z_]\w*\.", "", text).replace("PluginSpec", "plugin")


def default_text(default: Any) -> str:
    """A default (an attrs default or factory, or a keyword's) as TOML text; ``required`` for none."""
    if default is attrs.NOTHING or default is inspect.Parameter.empty:
        return "required"
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        default = default.factory()
    if default is None:
        return "not set"
    try:
        return toml_inline(CONVERTER.unstructure(default)).replace("{  }", "{}")
    except TypeError:
        return repr(default)


# ---- checks -------------------------------------------------------------------------------------


def _render(node: ast.expr, names: dict[str, Any]) -> str:
    """An f-string (or plain string) as text: names and constants filled in, the rest as ``…``."""
    if isinstance(node, ast.Constant):
        return str(node.value)
    assert isinstance(node, ast.JoinedStr)
    out = []
    for part in node.values:
        if isinstance(part, ast.Constant):
            out.append(str(part.value))
            continue
        assert isinstance(part, ast.FormattedValue)
        spec = _render(part.format_spec, names) if part.format_spec else ""
        try:
            value = eval(compile(ast.Expression(part.value), "<check>", "eval"), {"__builtins__": SAFE_BUILTINS}, names)
        except Exception:  # the offending value or another runtime name: not known here
            out.append(part.value.attr if isinstance(part.value, ast.Attribute) else "…")
            continue
        out.append(format(repr(value) if part.conversion == ord("r") else value, spec))
    return "".join(out)


def _bindings(target: ast.expr, iterable: ast.expr, names: dict[str, Any]) -> list[dict[str, Any]] | None:
    """One namespace per value of ``for target in iterable`` when the iterable is known here."""
    try:
        values = list(
            eval(compile(ast.Expression(iterable), "<check>", "eval"), {"__builtins__": SAFE_BUILTINS}, names)
        )
    except Exception:
        return None
    out = []
    for value in values:
        if isinstance(target, ast.Name):
            out.append({**names, target.id: value})
        elif isinstance(target, ast.Tuple) and all(isinstance(t, ast.Name) for t in target.elts):
            out.append({**names, **{t.id: v for t, v in zip(target.elts, value)}})  # type: ignore[attr-defined]
        else:
            return None
    return out


def _messages(node: ast.AST, names: dict[str, Any], raised: bool = False) -> Iterator[str]:
    """Every message string in ``node``, once for each value of the loops around it (``raised``:
    only the strings of ``raise`` statements, as a validator reports)."""
    if isinstance(node, ast.Raise):
        raised = False
    if isinstance(node, ast.For):
        spaces = _bindings(node.target, node.iter, names)
        if spaces is not None:
            for space in spaces:
                for statement in node.body:
                    yield from _messages(statement, space, raised)
            return
    if isinstance(node, (ast.ListComp, ast.GeneratorExp)) and len(node.generators) == 1:
        spaces = _bindings(node.generators[0].target, node.generators[0].iter, names)
        if spaces is not None:
            for space in spaces:
                yield from _messages(node.elt, space, raised)
            return
    if isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str)):
        if not raised:
            yield _render(node, names)
        return
    if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "file_name_problems":
        # the shared file-name check: ask it what it says of a path
        if len(node.args) == 2 and isinstance(node.args[1], ast.Dict):
            table = _render(node.args[0], names) if isinstance(node.args[0], ast.Constant) else "?"
            for key in node.args[1].keys:
                if isinstance(key, ast.Constant):
                    yield from file_name_problems(table, {str(key.value): "a/b"})
        return
    for child in ast.iter_child_nodes(node):
        yield from _messages(child, names, raised)


def _function_messages(function: Callable[..., Any], raised: bool = False) -> list[str]:
    try:
        source = textwrap.dedent(inspect.getsource(function))
    except (OSError, TypeError):
        return []
    names = dict(getattr(function, "__globals__", {}))
    names.update(inspect.getclosurevars(function).nonlocals)
    return list(_messages(ast.parse(source), names, raised))


@functools.cache
def message_checks(check: Callable[..., Any], table: str) -> dict[str, tuple[str, ...]]:
    """key -> the rules the messages of ``check`` state about ``table.key`` (in order, once each);
    ``table = ""``: about ``key`` (a plugin factory's ``ValueError("width: must be ...")``)."""
    head = rf"{re.escape(table)}\." if table else ""
    pattern = re.compile(rf"^{head}([A-Za-z_]\w*)((?:\[[^\]]*\])?(?:\.\w+)?)?: (.+)$", re.S)
    out: dict[str, list[str]] = defaultdict(list)
    for message in _function_messages(check):
        match = pattern.match(message)
        if match is None:
            continue
        key, sub, rule = match.groups()
        rule = GOT.sub("", " ".join(rule.split()))
        rule = re.sub(r"^… ", "refused: the value ", rule)
        if sub and "." in sub:
            rule = f"{sub.rpartition('.')[2]}: {rule}"
        if rule not in out[key]:
            out[key].append(rule)
    return {key: tuple(rules) for key, rules in out.items()}


def validator_checks(validator: Any) -> list[str]:
    """The rules an attrs validator states: ``>= 0``, ``one of ...``, or a function's messages."""
    if validator is None:
        return []
    inner = getattr(validator, "_validators", None)  # attrs.validators.and_
    if inner is not None:
        return [rule for v in inner for rule in validator_checks(v)]
    if hasattr(validator, "compare_op"):
        return [f"{validator.compare_op} {validator.bound}"]
    if hasattr(validator, "options"):
        return ["one of " + ", ".join(map(repr, validator.options))]
    if hasattr(validator, "max_length"):
        return [f"at most {validator.max_length} long"]
    rules = [GOT.sub("", " ".join(m.split())) for m in _function_messages(validator, raised=True)]
    return [r for r in rules if r]


def table_keys(cls: type, prefix: str, check: Callable[..., Any] | None = None) -> list[KeyDoc]:
    """The keys of the attrs table ``cls`` (``prefix.key`` each), in the order of its fields."""
    by_message = message_checks(check, prefix) if check is not None else {}
    out = []
    for field in attrs.fields(cls):
        if not field.init:
            continue
        name = field.alias or field.name
        checks = validator_checks(field.validator)
        checks += by_message.get(name, ())
        out.append(
            KeyDoc(
                path=f"{prefix}.{name}",
                type=type_text(field.type),
                default=default_text(field.default),
                checks=tuple(checks),
                doc=field_doc(cls, field.name),
            )
        )
    return out
