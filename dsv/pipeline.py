"""A pipeline: the stages of one TOML file (train -> synthesize -> export), used by the CLI."""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path
from typing import Any

import attrs
import ignite.distributed as idist
import numpy as np
import torch

import dsv
from dsv import config as cfg
from dsv import distributed
from dsv.builtin.initializers import InitContext
from dsv.builtin.models import LoadedModel, ModelRequest, load_state_dict
from dsv.builtin.retrainers import Normalized
from dsv.engine import SynthesisRun
from dsv.errors import ConfigError, StoreError
from dsv.execution import detach_terms, execute_groups
from dsv.export import summary
from dsv.groups import group_seed, group_slices
from dsv.plugins import DsvPluginManager, get_plugin_manager
from dsv.store import RunStore

log = logging.getLogger("dsv")
API_SOURCE = "dsv.synthesize"  # config_source of the stores the Python API writes


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"run.device: unknown device {name!r} (auto, cpu, cuda, cuda:1, ...)") from None


def target_matrix(targets: list, classes: list[int], per_class: int, num_classes: int, source: str) -> torch.Tensor:
    """Soft targets (N, K): each target (class index or {index: weight}) repeated per_class times."""
    rows = []
    entries = targets or (classes or list(range(num_classes)))
    key = "synthesis.targets" if targets else "synthesis.classes"
    for i, entry in enumerate(entries):
        row = torch.zeros(num_classes)
        weights = {int(entry): 1.0} if isinstance(entry, int) else {int(k): v for k, v in entry.items()}
        for cls, w in weights.items():
            if not 0 <= cls < num_classes:
                raise ConfigError(f"{source}: {key}[{i}]: class {cls} is out of range (the model has {num_classes} classes)")
            row[cls] = w
        if row.sum() <= 0:
            raise ConfigError(f"{source}: {key}[{i}]: the weights sum to 0")
        rows += [row / row.sum()] * per_class
    return torch.stack(rows)


def model_fingerprint(module: torch.nn.Module) -> str:
    """Hash of a model's weights: a resume refuses a store whose run started from others."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


# ---- synthesis, shared by Pipeline and dsv.synthesize ----------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed every RNG a run may draw from (the checkpoint saves all three), so a group's run does
    not depend on what ran before it in the same process."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def build_run(module: torch.nn.Module, spec, s: cfg.SynthesisConfig, *, plugins: DsvPluginManager,
              device: torch.device, seed: int, data=None, source: str, progress: bool = True,
              candidates: slice = slice(None)) -> SynthesisRun:
    """The run of one [synthesis] table on ``module`` (frozen, moved to ``device``, eval mode).

    ``spec`` is the model's :class:`~dsv.builtin.models.InputSpec`. Entries of ``s.losses``,
    ``s.priors``, ``s.augmentations`` and ``s.init`` are plugin specs, or (from the Python API)
    ready-made objects used as they are. ``candidates``: the rows of the target matrix this run
    optimizes (one group of a grouped synthesis), seeded by ``seed``. Every problem is a
    ConfigError naming ``source`` and the key."""
    torch.manual_seed(seed)
    targets = target_matrix(s.targets, s.classes, s.candidates_per_class, spec.num_classes, source)[candidates]
    n = targets.shape[0]
    size = s.resolutions[0][1] if s.resolutions and s.resolutions[0][0] <= 1 else spec.size
    shape = (n, spec.channels, size, size)
    init = _term(s.init, "initializers", plugins, source, "synthesis.init")
    gen = torch.Generator().manual_seed(seed)
    x0 = init(shape, targets.argmax(1), InitContext(gen, spec, data))
    losses = _named(s.losses, "losses", plugins, source)
    priors = _named(s.priors, "priors", plugins, source)
    augs = [_term(a, "augmentations", plugins, source, f"synthesis.augmentations[{i}]")
            for i, a in enumerate(s.augmentations)]
    model = module.to(device).eval()
    _check_resolutions(model, s, spec.channels, device, source)  # before any term hooks into the model
    for p in model.parameters():
        p.requires_grad_(False)  # theta is frozen; a stationarity term re-enables its own subset
    for key, named in (("losses", losses), ("priors", priors)):
        for i, (_, term) in enumerate(named):
            if hasattr(term, "attach"):
                try:
                    term.attach(model)
                except BaseException as exc:  # leave no term attached (a prior's hooks on the model)
                    detach_terms(losses + priors)
                    if isinstance(exc, ValueError):  # e.g. a parameter glob that matches nothing
                        raise ConfigError(f"{source}: synthesis.{key}[{i}]: {exc}") from None
                    raise
    x = x0.to(device).requires_grad_(True)
    lambdas = torch.full((n,), s.lambda_init, device=device, requires_grad=True)
    alive = torch.ones(n, dtype=torch.bool, device=device)
    return SynthesisRun(
        model=model, x=x, lambdas=lambdas, targets=targets.to(device), alive=alive,
        losses=losses, priors=priors, augmentations=augs, augmented_weight=s.augmented_weight,
        lr_x=s.lr_x, lr_lambda=s.lr_lambda, lambda_warmup=s.lambda_warmup, iterations=s.iterations, record_every=s.record_every,
        checkpoint_every=s.checkpoint_every, resolutions=[tuple(r) for r in s.resolutions], hooks=plugins, progress=progress,
    )


def _check_resolutions(model: torch.nn.Module, s: cfg.SynthesisConfig, channels: int, device, source: str) -> None:
    """Every size of the schedule must fit the model: say so now, not mid-run."""
    for i, (_, size) in enumerate(s.resolutions):
        try:
            with torch.no_grad():
                model(torch.zeros(1, channels, size, size, device=device))
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise ConfigError(f"{source}: synthesis.resolutions[{i}]: the model does not take "
                              f"{size}x{size} inputs ({first})") from None


def _term(entry, kind: str, plugins: DsvPluginManager, source: str, path: str) -> Any:
    """A plugin built from its spec, or a ready-made object checked for what the engine calls."""
    if isinstance(entry, cfg.PluginSpec):
        return cfg.build(entry, plugins.registry(kind), source=source, path=path)
    weighted = kind in ("losses", "priors")
    weight = getattr(entry, "weight", None)
    if not callable(entry) or (weighted and not (isinstance(weight, (int, float)) and not isinstance(weight, bool))):
        need = "a callable with a numeric 'weight' attribute" if weighted else "a callable"
        raise ConfigError(f"{source}: {path}: expected a plugin name, a table with a 'name' key, or {need}; "
                          f"got {type(entry).__name__}")
    return entry


def term_name(entry) -> str:
    """The history name of a term: its plugin name, or a ready-made object's class name."""
    return entry.name if isinstance(entry, cfg.PluginSpec) else type(entry).__name__.lower()


def _named(entries, kind: str, plugins: DsvPluginManager, source: str) -> list[tuple[str, Any]]:
    out, seen = [], {}
    for i, entry in enumerate(entries):
        obj = _term(entry, kind, plugins, source, f"synthesis.{kind}[{i}]")
        base = term_name(entry)
        seen[base] = seen.get(base, 0) + 1
        out.append((base if seen[base] == 1 else f"{base}{seen[base]}", obj))
    return out


@attrs.define
class PipelineResult:
    store: Path
    summary: dict[str, Any]
    exports: list[Path]


class Pipeline:
    """Runs the stages of a pipeline file. ``Pipeline.from_toml(path).run()`` is what
    ``dsv-pipeline run`` does."""

    def __init__(self, loaded: cfg.LoadedPipeline, *, plugins: DsvPluginManager | None = None,
                 progress: bool = True, fresh: bool = False):
        self.loaded = loaded
        self.config = loaded.config
        self.plugins = plugins or get_plugin_manager()
        self.progress = progress
        self.fresh = fresh
        self._data = None
        self.device = resolve_device(self.config.run.device)

    @classmethod
    def from_toml(cls, path, overrides=(), store: str | None = None, **kwargs) -> "Pipeline":
        return cls(cfg.load(path, overrides=overrides, store=store), **kwargs)

    @classmethod
    def from_store(cls, path, **kwargs) -> "Pipeline":
        """The pipeline a store was written by (its own stored config), to resume it in place."""
        store = RunStore.open(path)
        raw = store.meta.get("config")
        if store.meta.get("config_source") == API_SOURCE:
            raise StoreError(f"{path}: written by {API_SOURCE}; resume it by calling {API_SOURCE} again "
                             "with the same model, arguments and store")
        if not isinstance(raw, dict):
            raise StoreError(f"{path}: holds no pipeline config; it cannot be resumed")
        return cls(cfg.from_dict(raw, source=f"{path} (stored config)", store=str(path)), **kwargs)

    @property
    def source(self) -> str:
        return self.loaded.source

    @property
    def store_path(self) -> Path:
        return self.loaded.store_path

    # ---- data and model ----------------------------------------------------------------------

    def data(self):
        if self._data is None and self.config.data is not None:
            d = self.config.data
            spec = cfg.PluginSpec(name=d.name, options=d.options)
            self._data = cfg.build(spec, self.plugins.registry("datasets"), source=self.source, path="data",
                                   root=d.root, download=d.download)
        return self._data

    def model(self) -> LoadedModel:
        m = self.config.model
        request = ModelRequest(data=self.data(), weights_path=m.weights_path)
        torch.manual_seed(self.config.run.seed)  # a model to train starts from weights of run.seed
        loaded = cfg.build(cfg.PluginSpec(name=m.source, options=m.options), self.plugins.registry("models"),
                           source=self.source, path="model", request=request)
        if loaded.trainable:
            if "train" not in self.config.run.stages or self.config.train is None:
                raise ConfigError(
                    f"{self.source}: model {m.source!r} has no weights: add a [train] table and the "
                    "'train' stage, or give model.weights_path"
                )
            self.train(loaded)
        return loaded

    def _train_cache_path(self) -> Path:
        key = {
            "model": attrs.asdict(self.config.model),
            "train": cfg.CONVERTER.unstructure(self.config.train.retrainer),
            "data": self.data().fingerprint,
            "seed": self.config.run.seed,
            "torch": torch.__version__.split("+")[0],
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        name = self.config.model.source.replace(":", "_").replace("/", "_")
        return Path(self.config.train.cache_dir) / f"{name}-{digest}.pt"

    def train(self, loaded: LoadedModel) -> None:
        """The train stage: fit the base classifier, or reuse the cached weights of the same
        config and data (never overwrites an existing file)."""
        cache = self._train_cache_path()
        if cache.exists():
            log.info("reusing trained weights %s", cache)
            loaded.module.load_state_dict(load_state_dict(cache))
        else:
            retrainer = cfg.build(self.config.train.retrainer, self.plugins.registry("retrainers"),
                                  source=self.source, path="train.retrainer")
            data = self.data()
            retrainer.fit(loaded.module, Normalized(data.train, data.mean, data.std), device=self.device,
                          seed=self.config.run.seed, progress=self.progress)
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            torch.save({k: v.detach().cpu() for k, v in loaded.module.state_dict().items()}, tmp)
            tmp.rename(cache)
        loaded.module.cpu().eval()
        loaded.trainable = False
        self.test_accuracy = self._test_accuracy(loaded)

    def _test_accuracy(self, loaded: LoadedModel) -> float:
        from dsv.evaluate_retrained import accuracy_on, held_out_tensors

        images, labels = held_out_tensors(self)
        return accuracy_on(loaded.module, images, labels, loaded.spec.num_classes)[0]

    # ---- synthesis ---------------------------------------------------------------------------

    def build_run(self, loaded: LoadedModel, store: RunStore | None = None, group: int = 0) -> SynthesisRun:
        """The run of candidate group ``group`` (:mod:`dsv.groups`), every RNG seeded for it."""
        s = self.config.synthesis
        count = len(target_matrix(s.targets, s.classes, s.candidates_per_class, loaded.spec.num_classes, self.source))
        seed = group_seed(self.config.run.seed, group)
        seed_everything(seed)
        run = build_run(loaded.module, loaded.spec, s, plugins=self.plugins, device=self.device, seed=seed,
                        data=self.data(), source=self.source, progress=self.progress and distributed.is_main_rank(),
                        candidates=group_slices(count, s.groups, source=self.source)[group])
        run.store = store
        return run

    def synthesize(self, loaded: LoadedModel) -> RunStore:
        """The synthesize stage: a new run, or the continuation of the one in the store (each
        group from its last checkpoint, with the same result as if it had never stopped). Every
        rank runs the groups it owns; rank 0 writes the shared metadata."""
        return execute_groups(lambda g: self.build_run(loaded, None, g), self.config.synthesis.groups,
                              self.store_meta(loaded), store_path=self.store_path, fresh=self.fresh,
                              logging=self.config.logging)

    def store_meta(self, loaded: LoadedModel) -> dict[str, Any]:
        """What a new store records about this pipeline and its model."""
        spec = loaded.spec
        meta = {
            "name": self.config.run.name,
            "dsv_version": dsv.__version__,
            "config": self.loaded.raw,
            "config_hash": self.loaded.config_hash,
            "config_source": self.source,
            "config_text": self.loaded.text,
            "config_overrides": self.loaded.overrides,
            "classes": list(spec.classes),
            "mean": list(spec.mean),
            "std": list(spec.std),
            "model": self.config.model.source,
            "model_fingerprint": model_fingerprint(loaded.module),
        }
        if getattr(self, "test_accuracy", None) is not None:
            meta["base_test_accuracy"] = self.test_accuracy
        return meta

    def open_store(self, loaded: LoadedModel) -> RunStore:
        """The store of the stages after synthesis when this pipeline does not synthesize: the
        existing one, or a new one without candidates (a pipeline that only selects)."""
        if self.store_path.exists():
            return RunStore.open(self.store_path, mode="a")
        return RunStore.create(self.store_path, self.store_meta(loaded), groups=self.config.synthesis.groups)

    def run(self) -> PipelineResult | None:
        """Every stage of the file. Under several ranks each one synthesizes its groups; the first
        rank of each machine trains first (the others then load its cached weights); rank 0 alone
        runs the stages after synthesis and returns a result (the others None)."""
        from dsv.stages import AFTER_SYNTHESIS

        stages = self.config.run.stages
        self.device = distributed.rank_device(self.device)
        with idist.one_rank_first(local=True):  # one process per machine fills the weights cache
            loaded = self.model()  # runs the train stage when the model needs it
        if "synthesize" in stages:
            store = self.synthesize(loaded)
        elif distributed.is_main_rank():
            store = self.open_store(loaded)
        if not distributed.is_main_rank():
            return None
        self.loaded_model = loaded
        files: list[Path] = []
        for name in cfg.STAGES:
            if name in stages and name in AFTER_SYNTHESIS:
                files += AFTER_SYNTHESIS[name](self, store)
        return PipelineResult(store.path, summary(store), files)
