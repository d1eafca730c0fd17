"""The plugin manager: built-ins, entry point group ``dsv``, and the named registries."""

from __future__ import annotations

import difflib
import importlib.metadata
from typing import Any, Callable, Iterable

import attrs
import pluggy

from dsv import hookspecs
from dsv.errors import DsvError

ENTRY_POINT_GROUP = "dsv"

#: registry kind -> registration hook name
KINDS = {
    "losses": "dsv_register_losses",
    "priors": "dsv_register_priors",
    "augmentations": "dsv_register_augmentations",
    "initializers": "dsv_register_initializers",
    "retrainers": "dsv_register_retrainers",
    "models": "dsv_register_models",
    "datasets": "dsv_register_datasets",
}

BUILTIN_MODULES = (
    "dsv.builtin.losses",
    "dsv.builtin.priors",
    "dsv.builtin.augmentations",
    "dsv.builtin.initializers",
    "dsv.builtin.retrainers",
    "dsv.builtin.models",
    "dsv.builtin.datasets",
)


class PluginError(DsvError):
    """A plugin failed to load, registered a clashing name, or raised in a hook."""


class UnknownNameError(DsvError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


@attrs.define(frozen=True)
class Entry:
    name: str
    factory: Callable[..., Any]
    plugin: str  # the plugin (distribution or module) that registered it


@attrs.define
class Registry:
    """Named factories of one kind. Duplicate names fail; unknown names list the known ones.

    A name ending in ``:`` is a prefix: ``get("torchvision:resnet50")`` returns the ``torchvision:``
    entry, and :meth:`split` gives the rest of the name (``resnet50``).
    """

    kind: str
    _entries: dict[str, Entry] = attrs.field(factory=dict)
    _current_plugin: str = "?"

    def add(self, name: str, factory: Callable[..., Any]) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"{self._current_plugin}: {self.kind} names must be non-empty strings")
        if name in self._entries:
            first = self._entries[name].plugin
            raise PluginError(
                f"{self.kind} name {name!r} registered twice: by {first} and by {self._current_plugin}"
            )
        self._entries[name] = Entry(name, factory, self._current_plugin)

    def split(self, name: str) -> tuple[Entry, str | None]:
        if name in self._entries:
            return self._entries[name], None
        if ":" in name:
            prefix, rest = name.split(":", 1)
            entry = self._entries.get(prefix + ":")
            if entry is not None:
                return entry, rest
        known = sorted(self._entries)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise UnknownNameError(
            f"unknown {self.kind[:-1] if self.kind.endswith('s') else self.kind} {name!r}{hint} "
            f"(known: {', '.join(known) or 'none'})"
        )

    def get(self, name: str) -> Callable[..., Any]:
        return self.split(name)[0].factory

    def __contains__(self, name: str) -> bool:
        try:
            self.split(name)
        except UnknownNameError:
            return False
        return True

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]


@attrs.define
class PluginInfo:
    name: str  # name the plugin is registered under (for --disable-plugin)
    distribution: str  # "dsv" for built-ins
    version: str
    hooks: list[str]


class DsvPluginManager:
    """pluggy's PluginManager plus the registries the registration hooks fill."""

    def __init__(self, disabled: Iterable[str] = (), load_entry_points: bool = True):
        self.pm = pluggy.PluginManager("dsv")
        self.pm.add_hookspecs(hookspecs)
        self.disabled = set(disabled)
        self._dist_of: dict[str, tuple[str, str]] = {}
        version = importlib.metadata.version("dsv") if _installed("dsv") else "dev"
        for modname in BUILTIN_MODULES:
            if modname in self.disabled:
                continue
            module = importlib.import_module(modname)
            self.pm.register(module, name=modname)
            self._dist_of[modname] = ("dsv", version)
        if load_entry_points:
            self._load_entry_points()
        self.registries = self._build_registries()

    def register(
        self, plugin: object, name: str, distribution: tuple[str, str] = ("local", "?")
    ) -> None:
        """Add a plugin object after construction (an application embedding dsv, a test), with the
        ``(name, version)`` of the distribution it comes from, for messages and :meth:`plugins`.

        All registries are rebuilt from every plugin, so a clashing name raises PluginError naming
        both plugins, as at construction; the manager is then left as it was before the call.
        """
        self.pm.register(plugin, name=name)
        self._dist_of[name] = distribution
        try:
            self.registries = self._build_registries()
        except PluginError:
            self.pm.unregister(name=name)
            del self._dist_of[name]
            raise

    def _load_entry_points(self) -> None:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in self.disabled:
                continue
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else "?"
            try:
                plugin = ep.load()
                self.pm.register(plugin, name=ep.name)
            except Exception as exc:  # a broken plugin must be named, not crash the CLI
                raise PluginError(
                    f"plugin {ep.name!r} from distribution {dist} {version} failed to load: "
                    f"{type(exc).__name__}: {exc} (skip it with --disable-plugin {ep.name})"
                ) from exc
            self._dist_of[ep.name] = (dist, version)

    def _build_registries(self) -> dict[str, Registry]:
        # built aside and swapped in by the caller: a failing plugin leaves the old ones intact
        registries = {kind: Registry(kind) for kind in KINDS}
        for kind, hook_name in KINDS.items():
            self._fill(registries[kind], hook_name)
        return registries

    def _fill(self, registry: Registry, hook_name: str) -> None:
        hook = getattr(self.pm.hook, hook_name)
        # registration order (pluggy lists impls oldest first): built-ins register first, so a
        # clash names the built-in as the first owner and the later plugin as the second
        for impl in hook.get_hookimpls():
            label = self._label(impl.plugin_name)
            registry._current_plugin = label
            try:
                impl.function(registry=registry)
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(
                    f"{label} raised in {hook_name}: {type(exc).__name__}: {exc} "
                    f"(skip it with --disable-plugin {impl.plugin_name})"
                ) from exc
        registry._current_plugin = "?"

    def _label(self, plugin_name: str) -> str:
        dist, version = self._dist_of.get(plugin_name, ("?", "?"))
        if dist == "dsv":
            return f"{plugin_name} (built-in)"
        return f"plugin {plugin_name!r} ({dist} {version})"

    def registry(self, kind: str) -> Registry:
        return self.registries[kind]

    def plugins(self) -> list[PluginInfo]:
        out = []
        for name, plugin in self.pm.list_name_plugin():
            dist, version = self._dist_of.get(name, ("?", "?"))
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            out.append(PluginInfo(name, dist, version, hooks))
        return out

    def call_lifecycle(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """Call a lifecycle hook; an exception names the plugin that raised it."""
        hook = getattr(self.pm.hook, hook_name)
        results = []
        for impl in reversed(hook.get_hookimpls()):
            try:
                results.append(impl.function(**{k: kwargs[k] for k in impl.argnames}))
            except Exception as exc:
                raise PluginError(
                    f"{self._label(impl.plugin_name)} raised in {hook_name}: "
                    f"{type(exc).__name__}: {exc} (skip it with --disable-plugin {impl.plugin_name})"
                ) from exc
        return results


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


_DEFAULT: dict[frozenset, DsvPluginManager] = {}


def get_plugin_manager(disabled: Iterable[str] = ()) -> DsvPluginManager:
    """The process-wide plugin manager for a given set of disabled plugins (built once)."""
    key = frozenset(disabled)
    if key not in _DEFAULT:
        _DEFAULT[key] = DsvPluginManager(disabled=key)
    return _DEFAULT[key]
