"""The plugin manager: built-ins, entry point group ``dsv``, the named registries, and every hook
called through pluggy (``pm.hook.<name>``), so wrappers, ``firstresult`` and argument matching
behave as pluggy documents them."""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import traceback
import types
from collections.abc import Iterable
from typing import Any

import attrs
import pluggy

from dsv.plugins import spec
from dsv.plugins.registry import DuplicateNameError, PluginError, Registry

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
    "stages": "dsv_register_stages",
    "plugin_options": "dsv_register_plugin_options",
}

BUILTIN_MODULES = (
    "dsv.builtin.losses",
    "dsv.builtin.priors",
    "dsv.builtin.augmentations",
    "dsv.builtin.initializers",
    "dsv.builtin.retrainers",
    "dsv.builtin.models",
    "dsv.builtin.datasets",
    "dsv.builtin.stages",
)


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

    def __init__(self, disabled: Iterable[str] = (), load_entry_points: bool = True, keep_broken: bool = False):
        """``disabled``: plugins (entry point names or built-in modules) not to load.
        ``keep_broken``: a third-party plugin that fails to import is left out and listed in
        :attr:`broken` (name -> message) instead of raising PluginError (``dsv-pipeline plugins``)."""
        self.pm = pluggy.PluginManager("dsv")
        self.pm.add_hookspecs(spec)
        self.disabled = set(disabled)
        self.keep_broken = keep_broken
        self.broken: dict[str, str] = {}
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
            self.pm.register(importlib.import_module(modname), name=modname)
            self._dist_of[modname] = ("dsv", version)
        self._disabled_sources = [  # what a disabled plugin would have loaded, for unknown-name hints
            *(m for m in BUILTIN_MODULES if m in self.disabled),
            *(ep for ep in entry_points if ep.name in self.disabled),
        ]
        self._load_entry_points(entry_points)
        self._check_pending()
        self.registries = self._build_registries()

    def register(self, plugin: object, name: str, distribution: tuple[str, str] = ("local", "?")) -> None:
        """Add a plugin object after construction (an application embedding dsv, a test), with the
        ``(name, version)`` of the distribution it comes from, for messages and :meth:`plugins`.

        All registries are rebuilt from every plugin, so a clashing name raises PluginError naming
        both plugins, as at construction; the manager is then left as it was before the call. A
        hook implementation whose name no hook spec has (``dsv_register_prior``) is refused too.
        """
        self.pm.register(plugin, name=name)
        self._dist_of[name] = distribution
        try:
            self._check_pending()
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
                message = (
                    f"plugin {ep.name!r} from distribution {dist} {version} failed to load{_where(exc)}: "
                    f"{type(exc).__name__}: {exc} (skip it with --disable-plugin {ep.name}, or from Python "
                    f"with plugins=DsvPluginManager(disabled=[{ep.name!r}]))"
                )
                if self.keep_broken:
                    self.broken[ep.name] = message
                    continue
                raise PluginError(message) from exc
            self._dist_of[ep.name] = (dist, version)

    def _check_pending(self) -> None:
        """pluggy's ``check_pending``, with a message naming the plugin and the hooks it meant:
        a misspelt hook would otherwise register nothing, silently."""
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError:
            problems = []
            for name, caller in sorted(vars(self.pm.hook).items()):
                if not isinstance(caller, pluggy.HookCaller) or caller.has_spec():
                    continue
                for impl in caller.get_hookimpls():
                    close = _close_hooks(name)
                    hint = f"; did you mean {' or '.join(close)}?" if close else ""
                    problems.append(
                        f"{self._label(impl.plugin_name)} implements {name!r}, which is no dsv hook"
                        f"{hint} (skip it with --disable-plugin {impl.plugin_name})"
                    )
            raise PluginError("\n".join(problems)) from None

    def _build_registries(self) -> dict[str, Registry[Any]]:
        # built aside and swapped in by the caller: a failing plugin leaves the old ones intact
        registries: dict[str, Registry[Any]] = {}
        for kind, hook_name in KINDS.items():
            current = ["?", ""]  # (label, plugin name) of the plugin whose hook runs now
            owner = lambda current=current: (current[0], current[1])  # bound to this kind's list
            registry: Registry[Any] = Registry(kind, owner=owner)
            plugins = [impl.plugin for impl in getattr(self.pm.hook, hook_name).get_hookimpls()]
            # through pluggy, one plugin at a time and in registration order (built-ins first), so
            # that each name is attributed to its plugin and a clash names the built-in first
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                current[:] = [self._label(impl.plugin_name), impl.plugin_name]
                caller = self.pm.subset_hook_caller(
                    hook_name, remove_plugins=[p for p in plugins if p is not impl.plugin]
                )
                try:
                    caller(registry=registry)
                except DuplicateNameError:
                    raise
                except PluginError as exc:  # e.g. an empty name: the registry's own message
                    raise PluginError(f"{exc} (skip it with --disable-plugin {impl.plugin_name})") from None
                except Exception as exc:
                    raise PluginError(
                        f"{current[0]} raised in {hook_name}: {type(exc).__name__}: {exc} "
                        f"(skip it with --disable-plugin {impl.plugin_name})"
                    ) from exc
            registry.missing = functools.partial(self._disabled_provider, kind)
            registries[kind] = registry
        return registries

    def _disabled_provider(self, kind: str, name: str) -> str | None:
        """The disabled plugin that registers ``name`` of ``kind``, found by loading it into a
        scratch manager (only when a name is missing); None when none does or it fails to load."""
        for source in getattr(self, "_disabled_sources", []):
            plugin_name = source if isinstance(source, str) else source.name
            try:
                plugin = importlib.import_module(source) if isinstance(source, str) else source.load()
                scratch = pluggy.PluginManager("dsv")
                scratch.add_hookspecs(spec)
                scratch.register(plugin, name=plugin_name)
                registry: Registry[Any] = Registry(kind)
                getattr(scratch.hook, KINDS[kind])(registry=registry)
            except Exception:  # a hint only: a plugin that cannot even load provides nothing here
                continue
            if name in registry or (":" in name and name.split(":", 1)[0] + ":" in registry):
                return plugin_name
        return None

    def _label(self, plugin_name: str) -> str:
        dist, version = self._dist_of.get(plugin_name, ("?", "?"))
        if dist == "dsv":
            return f"{plugin_name} (built-in)"
        return f"plugin {plugin_name!r} ({dist} {version})"

    def registry(self, kind: str) -> Registry[Any]:
        return self.registries[kind]

    def plugins(self) -> list[PluginInfo]:
        """Every registered plugin in registration order (built-ins first): its distribution and
        version, the hooks it implements and the names it registered, by kind."""
        out = []
        for name, plugin in self.pm.list_name_plugin():
            dist, version = self._dist_of.get(name, ("?", "?"))
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            names = {
                kind: [e.name for e in reg.entries() if e.plugin_name == name] for kind, reg in self.registries.items()
            }
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
        """Call a lifecycle hook through pluggy (``pm.hook.<name>``: wrappers and argument matching
        as pluggy defines them); the non-None results, newest plugin first. An exception names the
        plugin that raised it."""
        hook = getattr(self.pm.hook, hook_name)
        try:
            return list(hook(**kwargs))
        except Exception as exc:
            codes = {impl.function.__code__: impl.plugin_name for impl in hook.get_hookimpls()}
            name = _raising_plugin(exc, codes)
            raise PluginError(
                f"{self._label(name)} raised in {hook_name}: "
                f"{type(exc).__name__}: {exc} (skip it with --disable-plugin {name})"
            ) from exc


def _raising_plugin(exc: BaseException, codes: dict[Any, str]) -> str:
    """The plugin whose hook implementation is the innermost one in ``exc``'s traceback."""
    for frame, _ in reversed(list(traceback.walk_tb(exc.__traceback__))):
        if frame.f_code in codes:
            return codes[frame.f_code]
    return "?"


def _close_hooks(name: str) -> list[str]:
    import difflib

    known = [n for n in dir(spec) if n.startswith("dsv_")]
    return difflib.get_close_matches(name, known, n=2, cutoff=0.6)


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


_DEFAULT: dict[frozenset[str], DsvPluginManager] = {}


def _where(exc: BaseException) -> str:
    """`` at file:line`` of the innermost frame of an import failure (the plugin's own line), or of
    the file a SyntaxError names; empty when there is none."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" at {exc.filename}:{exc.lineno}"
    frames = traceback.extract_tb(exc.__traceback__)
    outside = [f for f in frames if "importlib" not in f.filename and not f.filename.startswith("<frozen")]
    if not outside:
        return ""
    return f" at {outside[-1].filename}:{outside[-1].lineno}"


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
