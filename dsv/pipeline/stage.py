"""What a stage is (:class:`Stage`, registered through ``dsv_register_stages``) and what it gets
(:class:`StageContext`): the config, the loaded model, the data, the plugins, the device, the
progress switch and the pipeline file's name for messages; never the orchestrator itself."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import attrs
import torch

from dsv import config as cfg
from dsv.errors import ConfigError, WeightsError
from dsv.evaluation.retraining import accuracy_on
from dsv.plugins import DatasetBundle, DsvPluginManager, LoadedModel, ModelRequest, normalize, per_channel_range
from dsv.store import RunStore
from dsv.store.meta import run_meta

#: where a stage runs. ``model``: before the model is used (once per machine first, no store yet:
#: the train stage); ``store``: makes the run store (every rank, no store yet: synthesize);
#: ``after``: once the store exists, on rank 0, with the store (every other stage)
Phase = Literal["model", "store", "after"]
PHASES: tuple[Phase, ...] = ("model", "store", "after")

StageRun = Callable[["StageContext", "RunStore | None"], "list[Path]"]
TableCheck = Callable[[Any, cfg.PipelineConfig], "list[str]"]


@attrs.define(frozen=True, kw_only=True)
class Stage:
    """One stage of a pipeline, as a plugin registers it (``registry.add("name", Stage(...))``).

    :param name: the name ``run.stages`` lists it by, and the name of its table (``[name]``).
    :param run: ``run(context, store) -> files``: does the work, records what it measured with
        ``store.put_result(key, value)`` (listed by ``dsv-pipeline show --json``) and returns the
        paths of the files it wrote. ``store`` is None in the ``model`` and ``store`` phases.
    :param order: its place: stages run by ascending order within their phase (built-ins: train
        0, synthesize 100, select 200, retrain 300, evaluate 400, analyse 500, interpolate 600,
        edit 700, export 900, report 1000).
    :param table: the attrs class of its ``[name]`` table (structured like every table: unknown
        keys and wrong types are errors naming the key path); None for a stage without a table.
    :param resumable: a resumed run may have another ``[name]`` table (the table does not change
        what the synthesis computes, so it is left out of the config hash).
    :param phase: see :data:`Phase`.
    :param needs_data: listing it without a ``[data]`` table is an error.
    :param needs_table: listing it without its table is an error.
    :param check: ``check(table, config) -> problems``: range and cross-table checks of its table
        (when the file has one), each ``"key.path: message"``; run when the file is loaded, before
        any stage runs.
    """

    name: str
    run: StageRun
    order: int
    table: type | None = None
    resumable: bool = True
    phase: Phase = "after"
    needs_data: bool = False
    needs_table: bool = False
    check: TableCheck | None = None

    def __attrs_post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"stage {self.name!r}: phase must be one of {', '.join(PHASES)}, got {self.phase!r}")
        if self.table is not None and not attrs.has(self.table):
            raise ValueError(f"stage {self.name!r}: table must be an attrs class, got {self.table!r}")


@attrs.define(eq=False)
class StageContext:
    """What a stage may use. ``model`` and ``data()`` load on first use (through the plugin
    registries, like every other plugin); ``facts`` holds what an earlier stage learnt that a new
    store records (the train stage's ``base_test_accuracy``)."""

    config: cfg.PipelineConfig
    plugins: DsvPluginManager
    device: torch.device
    file: cfg.LoadedPipeline  # the pipeline file: raw table, text, overrides, config hash
    progress: bool = True
    fresh: bool = False  # the run replaces an existing store
    facts: dict[str, Any] = attrs.field(factory=dict)
    _data: DatasetBundle | None = attrs.field(default=None, init=False)
    _model: LoadedModel | None = attrs.field(default=None, init=False)

    @property
    def source(self) -> str:
        """The pipeline file's name, for messages (``source: key.path: problem``)."""
        return self.file.source

    @property
    def seed(self) -> int:
        return self.config.run.seed

    @property
    def store_path(self) -> Path:
        return self.file.store_path

    def table(self, name: str) -> Any:
        """The structured ``[name]`` table, or None when the file has none."""
        return self.config.table(name)

    def data(self) -> DatasetBundle | None:
        """The ``[data]`` set (None without a ``[data]`` table)."""
        if self._data is None and self.config.data is not None:
            d = self.config.data
            spec = cfg.PluginSpec(name=d.name, options=d.options)
            self._data = cfg.build(
                spec,
                self.plugins.registry("datasets"),
                source=self.source,
                path="data",
                options_key="options",
                root=d.root,
                download=d.download,
            )
        return self._data

    def require_data(self) -> DatasetBundle:
        data = self.data()
        if data is None:
            raise ConfigError(f"{self.source}: this stage needs a [data] table")
        return data

    def build_model(self, source: str, options: dict[str, Any], weights_path: str, path: str) -> LoadedModel:
        """A model from the ``models`` registry (``source`` with its options and weights file),
        with the ``[data]`` set; problems name ``path`` (e.g. ``evaluate.model``)."""
        if weights_path and not Path(weights_path).is_file():
            raise ConfigError(f"{self.source}: {path}.weights_path: no such file: {weights_path}")
        request = ModelRequest(data=self.data(), weights_path=weights_path)
        spec = cfg.PluginSpec(name=source, options=options)
        try:
            loaded: LoadedModel = cfg.build(
                spec,
                self.plugins.registry("models"),
                source=self.source,
                path=path,
                name_key="source",
                options_key="options",
                request=request,
            )
        except WeightsError as exc:
            where = f"{path}.weights_path" if weights_path else f"{path}.source ({source}'s packaged weights)"
            raise ConfigError(f"{self.source}: {where}: {exc}") from None
        return loaded

    @property
    def model(self) -> LoadedModel:
        """The ``[model]``, built by its model source. A model without weights is ``trainable``
        until the train stage fits it; its fresh weights come from ``run.seed``."""
        if self._model is None:
            m = self.config.model
            torch.manual_seed(self.seed)  # a model to train starts from weights of run.seed
            loaded = self.build_model(m.source, m.options, m.weights_path, "model")
            if m.input_range:
                try:
                    low, high = per_channel_range(m.input_range, loaded.spec.channels, "model.input_range")
                except ValueError as exc:
                    raise ConfigError(f"{self.source}: {exc}") from None
                loaded.spec = attrs.evolve(loaded.spec, low=low, high=high)
            self._model = loaded
        return self._model

    @model.setter
    def model(self, loaded: LoadedModel) -> None:
        """Use ``loaded`` instead of building the ``[model]`` (an application that holds the model)."""
        self._model = loaded

    def held_out(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The test split of ``[data]`` in model input space, and its labels."""
        data = self.require_data()
        images, labels = data.tensors("test")
        return normalize(images, data.mean, data.std), labels

    def test_accuracy(self, module: torch.nn.Module) -> float:
        images, labels = self.held_out()
        return accuracy_on(module, images, labels, self.model.spec.num_classes)[0]

    def store_meta(self) -> dict[str, Any]:
        """What a new store records about this pipeline and its model."""
        loaded = self.model
        return run_meta(
            name=self.config.run.name,
            config=self.file.raw,
            config_hash=self.file.config_hash,
            source=self.source,
            spec=loaded.spec,
            model=self.config.model.source,
            module=loaded.module,
            config_text=self.file.text,
            config_overrides=self.file.overrides,
            config_resumable=list(self.file.resumable),
            **self.facts,
        )
