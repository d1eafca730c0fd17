"""The orchestrator: loads a pipeline file against the registered stages and runs the stages it
lists, in order, each with a :class:`~dsv.pipeline.stage.StageContext`. It knows no stage by
name: every stage, built-in or third party, comes from the ``stages`` registry."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import attrs
import ignite.distributed as idist

from dsv import config as cfg
from dsv.errors import ConfigError, StoreError
from dsv.pipeline.stage import PHASES, Stage, StageContext
from dsv.plugins import DatasetBundle, DsvPluginManager, LoadedModel, PluginError, Registry, get_plugin_manager
from dsv.store import RunStore, is_store, lock, summary
from dsv.synthesis import distributed
from dsv.synthesis.build import API_SOURCE, resolve_device


@attrs.define
class PipelineResult:
    store: Path
    summary: dict[str, Any]
    exports: list[Path]
    #: the run's name, the stages it ran and the file it came from (what the CLI's ending says)
    name: str = ""
    stages: list[str] = attrs.field(factory=list)
    source: str = ""


def registered_stages(plugins: DsvPluginManager) -> list[Stage]:
    """Every registered stage, by phase and order."""
    registry: Registry[Stage] = plugins.registry("stages")
    stages = []
    for entry in registry.entries():
        if not isinstance(entry.factory, Stage):
            raise PluginError(
                f"{entry.plugin} registered stage {entry.name!r} as {type(entry.factory).__name__}; "
                "a stage is a dsv.pipeline.Stage"
            )
        if entry.factory.name != entry.name:
            raise PluginError(f"{entry.plugin} registered a Stage named {entry.factory.name!r} as {entry.name!r}")
        stages.append(entry.factory)
    return sorted(stages, key=lambda s: (PHASES.index(s.phase), s.order, s.name))


#: the registry of a plugin table by its key, for tables whose attrs field has no ``plugin_kind``
#: metadata (``attrs.field(metadata={"plugin_kind": "retrainers"})`` names it explicitly)
PLUGIN_KEYS = {
    "losses": "losses",
    "priors": "priors",
    "augmentations": "augmentations",
    "init": "initializers",
    "retrainer": "retrainers",
}


def _plugin_specs(table: Any, path: str) -> list[tuple[str, str, cfg.PluginSpec]]:
    """(registry kind, key path, spec) of every plugin table inside a structured table."""
    out = []
    for field in attrs.fields(type(table)):
        kind = field.metadata.get("plugin_kind", PLUGIN_KEYS.get(field.name))
        value = getattr(table, field.name)
        if kind is None:
            continue
        if isinstance(value, cfg.PluginSpec):
            out.append((kind, f"{path}.{field.name}", value))
        elif isinstance(value, list):
            out += [
                (kind, f"{path}.{field.name}[{i}]", v) for i, v in enumerate(value) if isinstance(v, cfg.PluginSpec)
            ]
    return out


def table_plugin_problems(plugins: DsvPluginManager, table: Any, path: str) -> list[str]:
    """Every problem of the plugin tables inside one structured table (``path`` names it): unknown
    names, unknown options, wrong types, failing validators. Ready-made objects are left alone."""
    if not attrs.has(type(table)):
        return []
    problems = []
    for kind, key_path, spec in _plugin_specs(table, path):
        if kind in plugins.registries:
            problems += cfg.plugin_problems(spec, plugins.registry(kind), path=key_path)
    return problems


def plugin_option_problems(plugins: DsvPluginManager, config: cfg.PipelineConfig) -> list[str]:
    """:func:`table_plugin_problems` of [synthesis] and of each stage's table: checked when the file
    loads, before any stage runs."""
    tables = [("synthesis", config.synthesis), *config.tables.items()]
    return [problem for name, table in tables for problem in table_plugin_problems(plugins, table, name)]


def _check_stages(
    stages: list[Stage],
    plugins: DsvPluginManager,
    config: cfg.PipelineConfig,
    unreadable: frozenset[str] = frozenset(),
) -> list[str]:
    """Checks across tables: known stage names, what a listed stage needs, each table's own checks,
    every plugin table's options. ``unreadable``: stage tables that failed to structure (their
    problems are reported already)."""
    by_name = {s.name: s for s in stages}
    problems = []
    for i, name in enumerate(config.run.stages):
        if name not in by_name:
            problems.append(f"run.stages[{i}]: unknown stage {name!r} (known: {', '.join(by_name)})")
    for stage in stages:
        listed = stage.name in config.run.stages
        table = config.table(stage.name)
        if listed and stage.needs_data and config.data is None:
            problems.append(f"run.stages: the {stage.name} stage needs a [data] table")
        if listed and stage.needs_table and table is None and stage.name not in unreadable:
            problems.append(f"run.stages: the {stage.name} stage needs an [{stage.name}] table")
        if table is not None and stage.check is not None:
            problems += stage.check(table, config)
    return problems + plugin_option_problems(plugins, config)


def stage_tables(plugins: DsvPluginManager) -> dict[str, Any]:
    """The keyword arguments of :func:`dsv.config.from_dict` that come from the stage registry."""
    stages = registered_stages(plugins)
    return {
        "tables": {s.name: s.table for s in stages},
        "resumable": tuple(s.name for s in stages if s.table is not None and s.resumable),
        "check": functools.partial(_check_stages, stages, plugins),
        "plugin_options": plugins.registry("plugin_options"),
    }


def load_pipeline(
    path: str | Path,
    plugins: DsvPluginManager | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    store: str | None = None,
) -> cfg.LoadedPipeline:
    """A pipeline file, checked against the registered stages (every problem at once)."""
    return cfg.load(path, overrides=overrides, store=store, **stage_tables(plugins or get_plugin_manager()))


def load_pipeline_text(
    text: str,
    *,
    source: str,
    plugins: DsvPluginManager | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    store: str | None = None,
) -> cfg.LoadedPipeline:
    """:func:`load_pipeline` of a pipeline's text; ``source`` names it in messages."""
    return cfg.load_text(
        text, source=source, overrides=overrides, store=store, **stage_tables(plugins or get_plugin_manager())
    )


def check_store_path(path: Path, source: str) -> None:
    """A store path must be creatable: no regular file where it or one of its folders goes."""
    for folder in (path, *path.parents):
        if folder.exists() or folder.is_symlink():
            if folder != path and not folder.is_dir():
                raise ConfigError(f"{source}: run.store: {path}: {folder} is a file, not a folder; choose another path")
            if folder == path and not folder.is_dir():
                raise ConfigError(f"{source}: run.store: {path} is a file, not a store; choose another path")
            return


class Pipeline:
    """Runs the stages of a pipeline file. ``Pipeline.from_toml(path).run()`` is what
    ``dsv-pipeline run`` does."""

    def __init__(
        self,
        loaded: cfg.LoadedPipeline,
        *,
        plugins: DsvPluginManager | None = None,
        progress: bool = True,
        fresh: bool = False,
    ):
        self.loaded = loaded
        self.config = loaded.config
        self.plugins = plugins or get_plugin_manager()
        check_store_path(loaded.store_path, loaded.source)
        self.context = StageContext(
            config=loaded.config,
            plugins=self.plugins,
            device=resolve_device(loaded.config.run.device, f"{loaded.source}: run.device"),
            file=loaded,
            progress=progress,
            fresh=fresh,
        )

    @classmethod
    def from_toml(
        cls,
        path: str | Path,
        overrides: list[str] | tuple[str, ...] = (),
        store: str | None = None,
        plugins: DsvPluginManager | None = None,
        **kwargs: Any,
    ) -> Pipeline:
        plugins = plugins or get_plugin_manager()
        return cls(load_pipeline(path, plugins, overrides, store), plugins=plugins, **kwargs)

    @classmethod
    def from_store(cls, path: str | Path, plugins: DsvPluginManager | None = None, **kwargs: Any) -> Pipeline:
        """The pipeline a store was written by (its own stored config), to resume it in place."""
        store = RunStore.open(path)
        raw = store.meta.get("config")
        if store.meta.get("config_source") == API_SOURCE:
            raise StoreError(
                f"{path}: written by {API_SOURCE}; resume it by calling {API_SOURCE} again "
                "with the same model, arguments and store"
            )
        if not isinstance(raw, dict):
            raise StoreError(f"{path}: holds no pipeline config; it cannot be resumed")
        plugins = plugins or get_plugin_manager()
        loaded = cfg.from_dict(raw, source=f"{path} (stored config)", store=str(path), **stage_tables(plugins))
        return cls(loaded, plugins=plugins, **kwargs)

    @property
    def source(self) -> str:
        return self.loaded.source

    @property
    def store_path(self) -> Path:
        return self.loaded.store_path

    def stages(self) -> list[Stage]:
        """The stages the file lists, in the order they run."""
        return [s for s in registered_stages(self.plugins) if s.name in self.config.run.stages]

    def run(self) -> PipelineResult | None:
        """Every stage of the file. Under several ranks the first rank of each machine runs the
        ``model`` phase first (the others then reuse what it cached), every rank runs the ``store``
        phase (each synthesizes its groups), and rank 0 alone runs the stages after it and returns
        a result (the others None). Rank 0 holds the store's writer lock throughout
        (:mod:`dsv.store.lock`): a second writer of the same store is refused before any work."""
        with lock.session():
            if distributed.is_main_rank() and is_store(self.store_path):
                lock.acquire(self.store_path)
            self.model()
            store = self.synthesize()
            if store is None:
                return None
            files: list[Path] = []
            for stage in (s for s in self.stages() if s.phase == "after"):
                files += stage.run(self.context, store)
            return PipelineResult(
                store.path,
                summary(store),
                files,
                name=self.config.run.name,
                stages=[s.name for s in self.stages()],
                source=self.source,
            )

    def model(self) -> LoadedModel:
        """The ``[model]`` once the ``model`` phase ran (the train stage fits it, or reuses the
        cached weights, when it needs weights); on several ranks the first of each machine first."""
        context = self.context
        context.device = distributed.rank_device(context.device)
        with idist.one_rank_first(local=True):  # one process per machine fills the weights cache
            for stage in (s for s in self.stages() if s.phase == "model"):
                stage.run(context, None)
            if context.model.trainable:
                raise ConfigError(
                    f"{self.source}: model {self.config.model.source!r} has no weights: add a [train] table and "
                    "the 'train' stage, or give model.weights_path"
                )
        return context.model

    def data(self) -> DatasetBundle | None:
        """The ``[data]`` set, or None."""
        return self.context.data()

    def synthesize(self) -> RunStore | None:
        """The ``store`` phase (every rank synthesizes its groups), then the run store on rank 0
        (None on the other ranks)."""
        for stage in (s for s in self.stages() if s.phase == "store"):
            stage.run(self.context, None)
        if not distributed.is_main_rank():
            return None
        return self.open_store()

    def open_store(self) -> RunStore:
        """The store of the stages after synthesis: the one the synthesis wrote (or an earlier run
        did), or a new one without candidates (a pipeline that only selects)."""
        if self.store_path.exists():
            return RunStore.open(self.store_path, mode="a", writer=True)
        return RunStore.create(self.store_path, self.context.store_meta(), groups=self.config.synthesis.groups)
