"""Operations on the raw pipeline dict (the TOML as parsed): ``--set`` overrides, the config
hash that decides whether a store can be resumed, and the list of keys two configs differ in."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from typing import Any

import tomllib

from dsv.errors import ConfigError

# core keys that do not change what a synthesis computes: a run may resume with other values.
# Stages add their own table when it is ``resumable`` (see dsv.pipeline.Stage). The plugins'
# own tables ([plugins.<name>]) configure lifecycle hooks, which observe a run (and may stop it,
# as SIGINT does); they compute none of its tensors, so they are left out as [logging] is.
RESUMABLE_KEYS = (
    "run.store",
    "run.stages",
    "synthesis.checkpoint_every",
    "synthesis.keep_per_class",
    "logging",
    "plugins",
)
# what stores written before the stages registered their own tables (no "config_resumable" in
# their metadata) left out of the hash besides RESUMABLE_KEYS
LEGACY_RESUMABLE = ("export", "select", "retrain", "analyse", "evaluate", "interpolate", "edit")


def _without(raw: dict[str, Any], dotted: tuple[str, ...]) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    for key in dotted:
        *parents, last = key.split(".")
        node: Any = raw  # a table, until a key leads elsewhere
        for k in parents:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return raw


def config_hash(raw: dict[str, Any], resumable: tuple[str, ...] = ()) -> str:
    """Hash of the config as it affects the synthesis (without :data:`RESUMABLE_KEYS` and the
    ``resumable`` keys, e.g. the tables of the stages after synthesis)."""
    text = json.dumps(_without(raw, RESUMABLE_KEYS + tuple(resumable)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        out = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: node}


def changed_keys(old: dict[str, Any], new: dict[str, Any], resumable: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys whose values differ between two raw configs (ignoring :data:`RESUMABLE_KEYS`
    and ``resumable``), each as ``key: old -> new``."""
    ignored = RESUMABLE_KEYS + tuple(resumable)
    a, b = _flatten(_without(old, ignored)), _flatten(_without(new, ignored))
    missing = object()
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb:
            show = lambda v: "(unset)" if v is missing else json.dumps(v)  # noqa: E731
            out.append(f"{key}: {show(va)} -> {show(vb)}")
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``synthesis.iterations=50`` -> (["synthesis", "iterations"], 50); values are TOML values,
    and anything that is not valid TOML is taken as a string (``run.device=cpu``)."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected KEY=VALUE, e.g. synthesis.iterations=50")
    key, value_text = text.split("=", 1)
    keys = key.strip().split(".")
    if not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", k) for k in keys):
        raise ConfigError(f"--set {text}: {key.strip()!r} is not a dotted key path")
    try:
        value = tomllib.loads(f"v = {value_text}")["v"]
    except tomllib.TOMLDecodeError:
        value = value_text.strip()
    return keys, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for i, k in enumerate(keys[:-1]):
            nxt = node.setdefault(k, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {text}: {'.'.join(keys[: i + 1])} is not a table")
            node = nxt
        node[keys[-1]] = value
    return raw


def split_variant(variant: str) -> tuple[str, list[str]]:
    """``LABEL:KEY=VALUE[;KEY=VALUE...]`` (a benchmark's ``--variant``) as the label and its
    ``--set`` overrides; ValueError when either is missing."""
    label, _, sets = variant.partition(":")
    overrides = [item.strip() for item in sets.split(";") if item.strip()]
    if not label or not overrides or not all("=" in item for item in overrides):
        raise ValueError(f"--variant {variant!r}: expected LABEL:KEY=VALUE[;KEY=VALUE...]")
    return label, overrides


def toml_inline(value: Any) -> str:
    """A value as TOML inline text, the right-hand side of a ``--set KEY=VALUE`` override (the
    inverse of :func:`parse_override` for tables, lists, bools, numbers and strings)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_inline(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_inline(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return json.dumps(value)
    raise TypeError(f"cannot write {value!r} as TOML")
