"""The plugin manager: built-ins, entry point group ``dsv``, and the named registries."""

from __future__ import annotations

import difflib
import importlib.metadata
import traceback
import types
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

#: how an error names one entry of a kind ("unknown loss 'x'")
SINGULAR = {"losses": "loss"}

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


class DuplicateNameError(PluginError):
    """Two plugins registered the same name of one kind."""


class UnknownNameError(DsvError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


@attrs.define(frozen=True)
class Entry:
    name: str
    factory: Callable[..., Any]
    plugin: str  # the plugin (distribution or module) that registered it, for messages
    plugin_name: str = ""  # the name that plugin is registered under (--disable-plugin NAME)


@attrs.define
class Registry:
    """Named factories of one kind. Duplicate names fail; unknown names list the known ones.

    A name ending in ``:`` is a prefix: ``get("torchvision:resnet50")`` returns the ``torchvision:``
    entry, and :meth:`split` gives the rest of the name (``resnet50``).
    """

    kind: str
    _entries: dict[str, Entry] = attrs.field(factory=dict)
    _current_plugin: str = "?"
    _current_name: str = ""

    def add(self, name: str, factory: Callable[..., Any]) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"{self._current_plugin}: {self.kind} names must be non-empty strings")
        if name in self._entries:
            first = self._entries[name]
            owners = [n for n in (first.plugin_name, self._current_name) if n]
            hint = f" (disable one of them: {' or '.join(f'--disable-plugin {n}' for n in owners)})" if owners else ""
            raise DuplicateNameError(
                f"{self.kind} name {name!r} registered twice: by {first.plugin} and by {self._current_plugin}{hint}"
            )
        self._entries[name] = Entry(name, factory, self._current_plugin, self._current_name)

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
            f"unknown {SINGULAR.get(self.kind, self.kind.rstrip('s'))} {name!r}{hint} "
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
    names: dict[str, list[str]] = attrs.field(factory=dict)  # kind -> names it registered

    @property
    def builtin(self) -> bool:
        return self.distribution == "dsv"


class DsvPluginManager:
    """pluggy's PluginManager plus the registries the registration hooks fill."""

    def __init__(self, disabled: Iterable[str] = (), load_entry_points: bool = True):
        self.pm = pluggy.PluginManager("dsv")
        self.pm.add_hookspecs(hookspecs)
        self.disabled = set(disabled)
        self._dist_of: dict[str, tuple[str, str]] = {}
        version = importlib.metadata.version("dsv") if _installed("dsv") else "dev"
        entry_points = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)) if load_entry_points else []
        known = [*BUILTIN_MODULES, *(ep.name for ep in entry_points)]
        unknown = sorted(self.disabled - set(known))
        if unknown:
            raise PluginError(
                f"--disable-plugin {', '.join(unknown)}: no plugin of that name (plugins: {', '.join(known)})"
            )
        for modname in BUILTIN_MODULES:
            if modname in self.disabled:
                continue
            module = importlib.import_module(modname)
            self.pm.register(module, name=modname)
            self._dist_of[modname] = ("dsv", version)
        self._load_entry_points(entry_points)
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

    def _load_entry_points(self, entry_points: list[importlib.metadata.EntryPoint]) -> None:
        for ep in entry_points:
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
            registry._current_plugin, registry._current_name = label, impl.plugin_name
            try:
                impl.function(registry=registry)
            except DuplicateNameError:
                raise
            except PluginError as exc:  # e.g. an empty name
                raise PluginError(f"{exc} (skip it with --disable-plugin {impl.plugin_name})") from None
            except Exception as exc:
                raise PluginError(
                    f"{label} raised in {hook_name}: {type(exc).__name__}: {exc} "
                    f"(skip it with --disable-plugin {impl.plugin_name})"
                ) from exc
        registry._current_plugin, registry._current_name = "?", ""

    def _label(self, plugin_name: str) -> str:
        dist, version = self._dist_of.get(plugin_name, ("?", "?"))
        if dist == "dsv":
            return f"{plugin_name} (built-in)"
        return f"plugin {plugin_name!r} ({dist} {version})"

    def registry(self, kind: str) -> Registry:
        return self.registries[kind]

    def plugins(self) -> list[PluginInfo]:
        """Every registered plugin in registration order (built-ins first): its distribution and
        version, the hooks it implements and the names it registered, by kind."""
        out = []
        for name, plugin in self.pm.list_name_plugin():
            dist, version = self._dist_of.get(name, ("?", "?"))
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            names = {kind: [e.name for e in reg.entries() if e.plugin_name == name]
                     for kind, reg in self.registries.items()}
            out.append(PluginInfo(name, dist, version, hooks, {k: v for k, v in names.items() if v}))
        return out

    def blame(self, exc: BaseException) -> str | None:
        """If ``exc`` was raised in the code of a third-party plugin (a prior's ``__call__``, a
        model source...), a message naming the plugin, its distribution and the plugin's line;
        else None. The innermost plugin frame of the traceback decides."""
        owners: dict[str, str] = {}  # top-level package of the plugin's module -> plugin name
        for name, plugin in self.pm.list_name_plugin():
            if self._dist_of.get(name, ("?", "?"))[0] == "dsv":
                continue
            module = plugin.__name__ if isinstance(plugin, types.ModuleType) else type(plugin).__module__
            owners.setdefault(str(module).split(".")[0], name)
        for not_a_plugin in ("", "dsv", "builtins", "__main__"):
            owners.pop(not_a_plugin, None)
        for frame, line in reversed(list(traceback.walk_tb(exc.__traceback__))):
            top = str(frame.f_globals.get("__name__", "")).split(".")[0]
            if top in owners:
                name = owners[top]
                return (
                    f"{self._label(name)} raised {type(exc).__name__}: {exc} "
                    f"(at {frame.f_code.co_filename}:{line}, in {frame.f_code.co_name}; "
                    f"skip it with --disable-plugin {name})"
                )
        return None

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


def describe_plugin_failure(exc: BaseException) -> str | None:
    """A message naming the third-party plugin whose code raised ``exc`` (see
    :meth:`DsvPluginManager.blame`), looked up in the managers built so far; None if none did."""
    for pm in _DEFAULT.values():
        message = pm.blame(exc)
        if message is not None:
            return message
    return None


def get_plugin_manager(disabled: Iterable[str] = ()) -> DsvPluginManager:
    """The process-wide plugin manager for a given set of disabled plugins (built once)."""
    key = frozenset(disabled)
    if key not in _DEFAULT:
        _DEFAULT[key] = DsvPluginManager(disabled=key)
    return _DEFAULT[key]
