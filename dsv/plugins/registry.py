"""Registries: the named factories of one plugin kind, filled by the registration hooks.

As in tox's ``tox.plugin``: a registration hook receives a registry and adds named factories
(``registry.add("tv", TotalVariation)``). A duplicate name fails naming both plugins; an unknown
name is answered with the known ones ("did you mean ...").
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

import attrs

from dsv.errors import DsvError

T = TypeVar("T")

#: how an error names one entry of a kind ("unknown loss 'x'")
SINGULAR = {"losses": "loss", "plugin_options": "plugin options"}


class PluginError(DsvError):
    """A plugin failed to load, registered a clashing name, or raised in a hook."""


class DuplicateNameError(PluginError):
    """Two plugins registered the same name of one kind."""


class UnknownNameError(DsvError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@attrs.define(frozen=True)
class Entry(Generic[T]):
    name: str
    factory: T
    plugin: str  # the plugin (distribution or module) that registered it, for messages
    plugin_name: str = ""  # the name that plugin is registered under (--disable-plugin NAME)


def _nobody() -> tuple[str, str]:
    return "?", ""


@attrs.define
class Registry(Generic[T]):
    """Named factories of one kind. Duplicate names fail; unknown names list the known ones.

    ``owner()`` tells which plugin is adding right now, as ``(label for messages, plugin name)``;
    the plugin manager supplies it (it knows which hook implementation is running).

    A name ending in ``:`` is a prefix: ``get("torchvision:resnet50")`` returns the ``torchvision:``
    entry, and :meth:`split` gives the rest of the name (``resnet50``).
    """

    kind: str
    owner: Callable[[], tuple[str, str]] = _nobody
    _entries: dict[str, Entry[T]] = attrs.field(factory=dict)
    #: ``missing(name)``: which disabled plugin would provide an unknown name (or None); the
    #: plugin manager sets it, so that the message says why the name is missing
    missing: Callable[[str], str | None] = attrs.field(default=lambda name: None)

    def add(self, name: str, factory: T) -> None:
        """Register ``factory`` under ``name`` (a plugin calls this from its registration hook)."""
        label, plugin_name = self.owner()
        if not isinstance(name, str) or not name:
            raise PluginError(f"{label}: {self.kind} names must be non-empty strings")
        if name in self._entries:
            first = self._entries[name]
            owners = [n for n in (first.plugin_name, plugin_name) if n]
            hint = f" (disable one of them: {' or '.join(f'--disable-plugin {n}' for n in owners)})" if owners else ""
            raise DuplicateNameError(
                f"{self.kind} name {name!r} registered twice: by {first.plugin} and by {label}{hint}"
            )
        self._entries[name] = Entry(name, factory, label, plugin_name)

    def split(self, name: str) -> tuple[Entry[T], str | None]:
        """The entry of ``name`` and, for a prefix entry (``torchvision:``), the rest of the name."""
        if name in self._entries:
            return self._entries[name], None
        if ":" in name:
            prefix, rest = name.split(":", 1)
            entry = self._entries.get(prefix + ":")
            if entry is not None:
                return entry, rest
        known = sorted(self._entries)
        disabled = self.missing(name)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        if disabled:
            hint = (
                f"; the disabled plugin {disabled!r} provides it (drop --disable-plugin {disabled}, or from "
                f"Python leave {disabled!r} out of DsvPluginManager(disabled=[...]))"
            )
        raise UnknownNameError(
            f"unknown {SINGULAR.get(self.kind, self.kind.rstrip('s'))} {name!r}{hint} "
            f"(known: {', '.join(known) or 'none'})"
        )

    def get(self, name: str) -> T:
        return self.split(name)[0].factory

    def __contains__(self, name: str) -> bool:
        try:
            self.split(name)
        except UnknownNameError:
            return False
        return True

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names()]
