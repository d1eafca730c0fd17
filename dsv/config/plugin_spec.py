"""The table that names a plugin (``{ name = "tv", weight = 1e-4 }``), shared by every config table."""

from __future__ import annotations

from typing import Any

import attrs


@attrs.define(kw_only=True)
class PluginSpec:
    """A table naming a registered plugin; every other key is an option of that plugin."""

    name: str
    options: dict[str, Any] = attrs.field(factory=dict)
