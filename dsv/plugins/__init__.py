"""Plugins: hook specifications (:mod:`dsv.plugins.spec`), the manager that loads built-ins and the
entry point group ``dsv`` (:mod:`dsv.plugins.manager`), the registries the registration hooks fill
(:mod:`dsv.plugins.registry`), the types hooks exchange (:mod:`dsv.plugins.contracts`) and
:func:`print_line`, which prints without breaking a progress bar (:mod:`dsv.plugins.output`).

A plugin module writes ``from dsv.plugins import hookimpl`` and implements ``dsv_*`` hooks."""

from dsv.plugins.contracts import (
    DatasetBundle,
    InitContext,
    InputSpec,
    LoadedModel,
    ModelRequest,
    normalize,
    per_channel,
    per_channel_range,
    pixel_domain,
)
from dsv.plugins.manager import (
    BUILTIN_MODULES,
    ENTRY_POINT_GROUP,
    KINDS,
    DsvPluginManager,
    PluginInfo,
    describe_plugin_failure,
    get_plugin_manager,
)
from dsv.plugins.output import print_line
from dsv.plugins.registry import DuplicateNameError, Entry, PluginError, Registry, UnknownNameError
from dsv.plugins.spec import hookimpl, hookspec

__all__ = [
    "BUILTIN_MODULES",
    "ENTRY_POINT_GROUP",
    "KINDS",
    "DatasetBundle",
    "DsvPluginManager",
    "DuplicateNameError",
    "Entry",
    "InitContext",
    "InputSpec",
    "LoadedModel",
    "ModelRequest",
    "PluginError",
    "PluginInfo",
    "Registry",
    "UnknownNameError",
    "describe_plugin_failure",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "normalize",
    "per_channel",
    "per_channel_range",
    "pixel_domain",
    "print_line",
]
