"""A pipeline: the stages of one TOML file (train -> synthesize -> export), used by the CLI."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

import dsv
from dsv import config as cfg
from dsv.builtin.initializers import InitContext
from dsv.builtin.models import LoadedModel, ModelRequest, load_state_dict
from dsv.builtin.retrainers import Normalized
from dsv.engine import SynthesisRun, build_engine
from dsv.errors import ConfigError, StoreError
from dsv.export import save_grid, save_npz, summary
from dsv.plugins import DsvPluginManager, get_plugin_manager
from dsv.store import RunStore, is_store, remove_store

log = logging.getLogger("dsv")


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


def detach_terms(named: list[tuple[str, Any]]) -> None:
    """Call ``detach()`` of every term that has one (it must be safe on a term never attached)."""
    for _, term in named:
        if hasattr(term, "detach"):
            term.detach()


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
        data = self.data()
        loader = torch.utils.data.DataLoader(Normalized(data.test, data.mean, data.std), batch_size=512)
        right = total = 0
        with torch.no_grad():
            for xb, yb in loader:
                right += int((loaded.module(xb).argmax(1) == yb).sum())
                total += len(yb)
        return right / max(total, 1)

    # ---- synthesis ---------------------------------------------------------------------------

    def _open_store(self, meta: dict[str, Any]) -> RunStore:
        path = self.store_path
        if path.exists():
            if not is_store(path):
                raise StoreError(f"{path}: exists and is not a dsv store; choose another run.store or --store")
            if not self.fresh:
                raise StoreError(f"{path}: a run store already exists; pass --fresh to start over")
            remove_store(path)
        return RunStore.create(path, meta)

    def build_run(self, loaded: LoadedModel, store: RunStore | None = None) -> SynthesisRun:
        s, src = self.config.synthesis, self.source
        torch.manual_seed(self.config.run.seed)
        spec = loaded.spec
        targets = target_matrix(s.targets, s.classes, s.candidates_per_class, spec.num_classes, src)
        n = targets.shape[0]
        size = s.resolutions[0][1] if s.resolutions and s.resolutions[0][0] <= 1 else spec.size
        shape = (n, spec.channels, size, size)
        init = cfg.build(s.init, self.plugins.registry("initializers"), source=src, path="synthesis.init")
        gen = torch.Generator().manual_seed(self.config.run.seed)
        x0 = init(shape, targets.argmax(1), InitContext(gen, spec, self.data()))
        losses = self._named(s.losses, "losses", "synthesis.losses")
        priors = self._named(s.priors, "priors", "synthesis.priors")
        augs = [cfg.build(a, self.plugins.registry("augmentations"), source=src, path=f"synthesis.augmentations[{i}]")
                for i, a in enumerate(s.augmentations)]
        model = loaded.module.to(self.device).eval()
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
                            raise ConfigError(f"{src}: synthesis.{key}[{i}]: {exc}") from None
                        raise
        x = x0.to(self.device).requires_grad_(True)
        lambdas = torch.full((n,), s.lambda_init, device=self.device, requires_grad=True)
        alive = torch.ones(n, dtype=torch.bool, device=self.device)
        run = SynthesisRun(
            model=model, x=x, lambdas=lambdas, targets=targets.to(self.device), alive=alive,
            losses=losses, priors=priors, augmentations=augs, augmented_weight=s.augmented_weight,
            lr_x=s.lr_x, lr_lambda=s.lr_lambda, lambda_warmup=s.lambda_warmup, iterations=s.iterations, record_every=s.record_every,
            write_every=s.write_every, resolutions=[tuple(r) for r in s.resolutions], store=store, hooks=self.plugins, progress=self.progress,
        )
        return run

    def _named(self, specs, kind: str, path: str) -> list[tuple[str, Any]]:
        out, seen = [], {}
        for i, spec in enumerate(specs):
            obj = cfg.build(spec, self.plugins.registry(kind), source=self.source, path=f"{path}[{i}]")
            seen[spec.name] = seen.get(spec.name, 0) + 1
            name = spec.name if seen[spec.name] == 1 else f"{spec.name}{seen[spec.name]}"
            out.append((name, obj))
        return out

    def synthesize(self, loaded: LoadedModel) -> RunStore:
        spec = loaded.spec
        meta = {
            "name": self.config.run.name,
            "dsv_version": dsv.__version__,
            "config": self.loaded.raw,
            "config_hash": self.loaded.config_hash,
            "config_source": self.source,
            "classes": list(spec.classes),
            "mean": list(spec.mean),
            "std": list(spec.std),
            "model": self.config.model.source,
        }
        if getattr(self, "test_accuracy", None) is not None:
            meta["base_test_accuracy"] = self.test_accuracy
        run = self.build_run(loaded, None)  # every config error surfaces before a store exists
        try:  # from here on the terms are attached to the model: detach them whatever happens
            run.store = store = self._open_store(meta)
            store.init_candidates(run.x.detach().cpu().numpy(), run.lambdas.detach().cpu().numpy(),
                                  run.targets.cpu().numpy(), run.alive.cpu().numpy())
            run.hooks.call_lifecycle("dsv_run_started", run=run)
            build_engine(run).run(data=None, max_epochs=1, epoch_length=self.config.synthesis.iterations)
            store.update_meta(summary=run.summary())
        finally:
            detach_terms(run.losses + run.priors)
        run.hooks.call_lifecycle("dsv_run_finished", run=run, summary=summary(store))
        return store

    # ---- export ------------------------------------------------------------------------------

    def export(self, store: RunStore) -> list[Path]:
        out = []
        e = self.config.export
        if e.png:
            out.append(save_grid(store, store.export_path(e.png)))
        if e.npz:
            out.append(save_npz(store, store.export_path(e.npz)))
        return out

    def run(self) -> PipelineResult:
        stages = self.config.run.stages
        loaded = self.model()  # runs the train stage when the model needs it
        if "synthesize" in stages:
            store = self.synthesize(loaded)
        else:
            store = RunStore.open(self.store_path, mode="a")
        exports = self.export(store) if "export" in stages else []
        return PipelineResult(store.path, summary(store), exports)
