"""The Python API: :func:`synthesize` DSVs of any ``nn.Module`` classifier, :func:`open_store`,
:func:`export_grid`, :func:`measure_premise` (is the model a KKT point at all?) and
:func:`evaluate_reconstruction` (are the candidates its training images?). The same
machinery as ``dsv-pipeline``: the options are the keys of a pipeline's ``[synthesis]`` table,
checked the same way, and the run is built and executed by
:func:`dsv.synthesis.build.build_run` and :func:`dsv.synthesis.execution.execute`.

    >>> result = dsv.synthesize(my_model, targets=range(10), input_shape=(1, 28, 28))
    >>> result.x.shape, result.alive.sum(), result.history["entropy"][-1]
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch import nn

from dsv import config as cfg
from dsv.errors import ConfigError
from dsv.evaluation.reconstruction import ReconstructionScore as ReconstructionScore
from dsv.evaluation.reconstruction import evaluate_reconstruction as evaluate_reconstruction
from dsv.kkt.premise import LAMBDA_TOL, ON_MARGIN_TOL, PremiseResult
from dsv.kkt.premise import measure_premise as _measure_premise
from dsv.pipeline import table_plugin_problems
from dsv.plugins import (
    DsvPluginManager,
    LoadedModel,
    get_plugin_manager,
)
from dsv.store import RunStore, summary
from dsv.store.export import save_grid, save_npz, to_images
from dsv.store.meta import run_meta
from dsv.synthesis.build import API_SOURCE, build_run, resolve_device, term_name
from dsv.synthesis.execution import Hints, execute, memory_history
from dsv.synthesis.inputs import (
    ModelState,
    build_input_spec,
    count_classes,
    infer_input_shape,
    qualname,
    unwrap,
    with_domain,
)

API_HINTS = Hints(
    fresh="fresh=True", store="store path", resume=f"call {API_SOURCE} again with the same arguments and store"
)

TERM_LISTS = ("losses", "priors", "augmentations")


@attrs.define(eq=False, repr=False)
class SynthesisResult:
    """Candidates (model input space, as the model sees them), their multipliers and fate, and the
    per-iteration history: the same from a finished run and from :func:`open_store`."""

    x: np.ndarray  # float32 (N, C, H, W)
    lambdas: np.ndarray  # float32 (N,)
    alive: np.ndarray  # bool (N,)
    labels: np.ndarray  # int64 (N,): argmax of the targets
    targets: np.ndarray  # float32 (N, K): soft targets, rows sum to 1
    history: dict[str, np.ndarray]  # "iteration", each loss term, total, entropy, accuracy, alive: (T,); lambda: (T, N)
    summary: dict[str, Any]
    store: Path | None = None  # the run store, when one was written
    classes: list[str] = attrs.field(factory=list)
    mean: list[float] = attrs.field(factory=lambda: [0.0])
    std: list[float] = attrs.field(factory=lambda: [1.0])
    name: str = "synthesis"

    @property
    def meta(self) -> dict[str, Any]:
        """The store metadata :mod:`dsv.store.export` reads (a result exports like a store)."""
        return {"name": self.name, "classes": self.classes, "mean": self.mean, "std": self.std}

    def candidates(self) -> dict[str, np.ndarray]:
        return {
            "x": self.x,
            "lambda": self.lambdas,
            "alive": self.alive,
            "labels": self.labels,
            "targets": self.targets,
        }

    def images(self) -> np.ndarray:
        """The candidates as displayable images (N, H, W, C) in [0, 1] (undoing mean/std)."""
        return to_images(self.x, self.mean, self.std)

    def save_grid(self, path: str | Path, columns: int | None = None) -> Path:
        """A PNG grid of the candidates, each titled with its target and lambda (or "dead")."""
        return save_grid(self, path, columns)

    def save_npz(self, path: str | Path) -> Path:
        return save_npz(self, path)

    def __repr__(self) -> str:
        shape = "x".join(str(d) for d in self.x.shape[1:])
        return (
            f"SynthesisResult({len(self.x)} candidates of {shape}, {int(self.alive.sum())} alive, "
            f"{self.summary.get('iterations')} iterations, store={self.store})"
        )


def synthesize(
    model: nn.Module | LoadedModel,
    targets: Iterable | np.ndarray | torch.Tensor,
    *,
    input_shape: tuple[int, int, int] | None = None,
    iterations: int | None = None,
    losses: list | None = None,
    priors: list | None = None,
    augmentations: list | None = None,
    init: Any = None,
    store: str | Path | None = None,
    device: str = "auto",
    seed: int = 0,
    mean: float | Iterable[float] | None = None,
    std: float | Iterable[float] | None = None,
    input_range: tuple[Any, Any] | None = None,
    class_names: list[str] | None = None,
    name: str = "synthesis",
    fresh: bool = False,
    logging: Mapping[str, Any] | cfg.LoggingConfig | None = None,
    tensorboard: str | Path | None = None,
    progress: bool = True,
    plugins: DsvPluginManager | None = None,
    plugin_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> SynthesisResult:
    """Synthesize Deep Support Vectors of a trained classifier (DeepKKT).

    :param model: any ``nn.Module`` mapping (N, C, H, W) inputs to (N, K) logits, or a
        :class:`~dsv.plugins.LoadedModel`. It is left as it was (device, mode, requires_grad).
    :param targets: one candidate per entry (times ``candidates_per_class``): class indices
        (``range(10)``, a 1-D integer array), soft labels (a 2-D (N, K) array or tensor, rows of K
        weights) or ``{class: weight}`` mixtures, as in a pipeline file.
    :param input_shape: (C, S, S) of one input in model space. Default: from a LoadedModel, the
        model's ``input_shape`` attribute, or a timm-style ``pretrained_cfg["input_size"]``.
    :param iterations: as ``synthesis.iterations`` of a pipeline. None: the pipeline default.
    :param losses: as in a pipeline's [synthesis] table (names, or dicts like
        ``{"name": "tv", "weight": 0.01}``), or ready-made objects (a term: callable with a
        ``weight``). None: the pipeline defaults; likewise ``priors``, ``augmentations``, ``init``.
    :param priors: see ``losses``.
    :param augmentations: see ``losses``.
    :param init: see ``losses``.
    :param store: write a run store there (resumed when it holds this same run; ``fresh=True``
        replaces it). None: everything stays in memory.
    :param mean: the normalization the model applies to pixels in [0, 1] (per channel or one
        number; default 0 and 1, or the model's ``pretrained_cfg``): used to show and export the
        candidates and, when given (or from ``pretrained_cfg``), to derive the input domain
        ``((0 - mean) / std, (1 - mean) / std)``.
    :param std: see ``mean``.
    :param input_range: the input domain in model input units, ``(low, high)``: two numbers or two
        per-channel sequences (``input_range=(-0.5, 0.5)`` for data scaled to [-0.5, 0.5]). The
        candidates are kept inside it (``domain="clamp"``, the default; ``"penalty"`` or
        ``"none"``) and the noise initializer draws in it. Default: from a LoadedModel, or from
        ``mean``/``std``; without any of them the domain is unknown and a warning says so.
    :param logging: a [logging] table (``{"tensorboard": "runs/x", "images_every": 50}``);
        ``tensorboard="runs/x"`` is the short form. Needs ``pip install dsv[tensorboard]``.
    :param plugins: the plugin manager (default: the built-ins and every installed plugin);
        ``DsvPluginManager(disabled=["name"])`` skips a plugin, as ``--disable-plugin`` does.
    :param plugin_options: a pipeline's ``[plugins.<name>]`` tables: ``{name: {key: value}}`` or
        ``{name: options object}``, checked against the class the plugin registered; the
        lifecycle hooks read them as ``run.plugin_options[name]``.
    :param options: any other key of [synthesis] (``candidates_per_class``, ``lr_x``,
        ``lambda_warmup``, ``resolutions``, ...).
    """
    plugins = plugins or get_plugin_manager()
    problems = cfg.check_run(cfg.RunConfig(seed=seed))
    if problems:
        raise ConfigError(f"{API_SOURCE}: {problems[0].removeprefix('run.')}")
    module, loaded_spec = unwrap(model)
    target_device = resolve_device(device, f"{API_SOURCE}: device")
    saved = ModelState.capture(module)
    try:
        module.to(target_device).eval()
        shape, cfg_mean, cfg_std = infer_input_shape(module, input_shape, loaded_spec)
        num_classes = count_classes(module, shape, target_device)
        spec = build_input_spec(shape, num_classes, mean, std, class_names, loaded_spec, cfg_mean, cfg_std)
        spec = with_domain(spec, input_range, loaded_spec, explicit=mean is not None or cfg_mean is not None)
        s = _synthesis_config(targets, num_classes, iterations, losses, priors, augmentations, init, options, plugins)
        log_cfg = _logging_config(logging, tensorboard)
        hook_options = _plugin_options(plugin_options, plugins)
        raw = {
            "run": {"name": name, "seed": seed, "device": device},
            "synthesis": _describe_synthesis(s, plugins),
            "logging": cfg.CONVERTER.unstructure(log_cfg),
            # the tables given (checked and structured), as a pipeline file records its own
            **(
                {cfg.PLUGINS_TABLE: cfg.unstructure_plugin_options({k: hook_options[k] for k in plugin_options})}
                if plugin_options
                else {}
            ),
            "model": {
                "class": qualname(module),
                "input_shape": list(shape),
                "mean": list(spec.mean),
                "std": list(spec.std),
                "classes": list(spec.classes),
                "input_range": [list(d) for d in spec.domain] if spec.domain is not None else None,
            },
        }
        meta = run_meta(
            name=name,
            config=raw,
            config_hash=cfg.config_hash(raw),
            source=API_SOURCE,
            spec=spec,
            model=qualname(module),
            module=module,
        )
        run = build_run(
            module,
            spec,
            s,
            plugins=plugins,
            device=target_device,
            seed=seed,
            source=API_SOURCE,
            progress=progress,
            plugin_options=hook_options,
        )
        written, final = execute(
            run,
            meta,
            store_path=Path(store) if store is not None else None,
            fresh=fresh,
            logging=log_cfg,
            hints=API_HINTS,
        )
        history = written.history() if written is not None else memory_history(run)
        return SynthesisResult(
            x=run.x.detach().cpu().numpy().astype(np.float32),
            lambdas=run.lambdas.detach().cpu().numpy(),
            alive=run.alive.cpu().numpy().astype(bool),
            labels=run.labels.cpu().numpy().astype(np.int64),
            targets=run.targets.cpu().numpy().astype(np.float32),
            history=history,
            summary=final,
            store=written.path if written is not None else None,
            classes=list(spec.classes),
            mean=list(spec.mean),
            std=list(spec.std),
            name=name,
        )
    finally:
        saved.restore(module)


def open_store(path: str | Path) -> SynthesisResult:
    """The result a store on disk holds (its last committed checkpoint), as :func:`synthesize` returns it."""
    store = RunStore.open(path)
    meta, c = store.meta, store.candidates()
    return SynthesisResult(
        x=c["x"],
        lambdas=c["lambda"],
        alive=c["alive"],
        labels=c["labels"],
        targets=c["targets"],
        history=store.history(),
        summary=summary(store),
        store=store.path,
        classes=list(meta.get("classes", [])),
        mean=list(meta.get("mean", [0.0])),
        std=list(meta.get("std", [1.0])),
        name=meta.get("name", "run"),
    )


def export_grid(source: SynthesisResult | RunStore | str | Path, path: str | Path, columns: int | None = None) -> Path:
    """Write the labelled PNG grid of a result, a store, or the store at a path."""
    if isinstance(source, (str, Path)):
        source = RunStore.open(source)
    return save_grid(source, path, columns)


def measure_premise(
    model: nn.Module | LoadedModel,
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor | Iterable[int],
    *,
    params: str | Iterable[str] = "all",
    margin: str = "auto",
    tol: float = ON_MARGIN_TOL,
    lambda_tol: float = LAMBDA_TOL,
) -> PremiseResult:
    """DeepKKT's premise, measured: how close ``model`` is to a KKT point of the max-margin
    problem on its training samples ``x`` (model input space, (N, ...)) with labels ``y``.

        >>> r = dsv.measure_premise(model, x_train, y_train, params="all", margin="multiclass")
        >>> r.residual, r.on_margin, r.nonzero_lambda

    ``residual`` is ``min_{lambda >= 0} ||theta - sum_c lambda_c grad_theta m_c|| / ||theta||``
    (0: a KKT point; 1: the multipliers explain nothing), solved exactly (non-negative least
    squares); see :mod:`dsv.kkt.premise` for the margin forms and normalisation.

    :param params: the parameters: ``"all"``, ``"head"``, ``"auto"``, ``"norm_affine"``,
        ``"last_block"`` or globs over ``named_parameters`` names (as the stationarity loss takes them).
    :param margin: ``"binary"`` (Haim et al.: ``y Phi(x)`` with y in +-1, one or two outputs),
        ``"multiclass"`` (Buzaglo et al.: ``Phi_y - Phi_j`` for every ``j != y``),
        ``"cross_entropy"`` (the per-sample loss gradient, the weight-decay form) or ``"auto"``
        (binary for one or two outputs, else multiclass).
    :param tol: a sample is on the margin when its margin is at most ``1 + tol`` times the smallest.
    :param lambda_tol: a multiplier counts as non-zero above this fraction of the largest one.
    """
    module, _ = unwrap(model)
    inputs = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    labels = y.detach() if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(list(y)))
    try:
        return _measure_premise(
            module, inputs, labels.long(), params=params, margin=margin, tol=tol, lambda_tol=lambda_tol
        )
    except ValueError as exc:
        raise ConfigError(f"{API_SOURCE}: measure_premise: {exc}") from None


# ---- targets and the [synthesis] table ---------------------------------------------------------


def _soft_row(row, num_classes: int, i: int) -> dict[str, float]:
    values = np.asarray(row, dtype=np.float64)
    if values.shape != (num_classes,):
        raise ConfigError(
            f"{API_SOURCE}: synthesis.targets[{i}]: a soft-label row needs {num_classes} weights "
            f"(one per class), got shape {values.shape}"
        )
    if not np.isfinite(values).all() or (values < 0).any() or values.sum() <= 0:
        raise ConfigError(
            f"{API_SOURCE}: synthesis.targets[{i}]: soft-label weights must be finite, >= 0 and not all 0"
        )
    return {str(k): float(values[k]) for k in np.flatnonzero(values)}


def _target_entries(targets, num_classes: int) -> list:
    """Targets in the pipeline's form: class indices and {"class": weight} tables."""
    if isinstance(targets, torch.Tensor):
        targets = targets.detach().cpu().numpy()
    if isinstance(targets, np.ndarray):
        if targets.ndim == 2:
            return [_soft_row(row, num_classes, i) for i, row in enumerate(targets)]
        if targets.ndim != 1 or not np.issubdtype(targets.dtype, np.integer):
            raise ConfigError(
                f"{API_SOURCE}: targets: expected a 1-D array of class indices or a 2-D (N, K) "
                f"array of soft labels, got a {targets.ndim}-D {targets.dtype} array"
            )
        return [int(t) for t in targets]
    if isinstance(targets, (str, bytes, Mapping)) or not isinstance(targets, Iterable):
        raise ConfigError(
            f"{API_SOURCE}: targets: expected class indices, soft-label rows or "
            f"{{class: weight}} tables, got {type(targets).__name__}"
        )
    out: list[Any] = []
    for i, entry in enumerate(targets):
        if isinstance(entry, torch.Tensor):
            entry = entry.item() if entry.ndim == 0 else entry.detach().cpu().numpy()
        if isinstance(entry, (int, np.integer)) and not isinstance(entry, (bool, np.bool_)):
            out.append(int(entry))
        elif isinstance(entry, Mapping):
            out.append({str(k): v for k, v in entry.items()})  # checked by the config's structuring
        elif isinstance(entry, (list, tuple, np.ndarray)):
            out.append(_soft_row(entry, num_classes, i))
        else:
            out.append(entry)  # reported by the config's structuring, with its index
    if not out:
        raise ConfigError(f"{API_SOURCE}: targets: empty; give at least one class index or soft label")
    return out


def _synthesis_config(targets, num_classes, iterations, losses, priors, augmentations, init, options, plugins):
    """A SynthesisConfig structured and checked as a pipeline's [synthesis] table is; ready-made
    term objects are kept as they are, in their place."""
    for key in ("targets", "classes"):
        if key in options:
            raise ConfigError(f"{API_SOURCE}: {key}: give the candidates' classes as the targets argument")
    if options.get("groups", 1) != 1:  # groups split a run across ranks: a pipeline's business
        raise ConfigError(
            f"{API_SOURCE}: groups: must be 1 here; grouped (multi-process) synthesis runs "
            "from a pipeline file (dsv-pipeline run FILE --nproc N)"
        )
    table = {"targets": _target_entries(targets, num_classes), **options}
    if iterations is not None:
        table["iterations"] = iterations
    s = cfg.structure(table, cfg.SynthesisConfig, source=API_SOURCE, path="synthesis")
    given = {"losses": losses, "priors": priors, "augmentations": augmentations}
    terms = {}
    for key, entries in given.items():
        if entries is None:
            continue
        if isinstance(entries, (str, Mapping)) or not isinstance(entries, Iterable):
            entries = [entries]
        terms[key] = [_entry(e, f"synthesis.{key}[{i}]") for i, e in enumerate(entries)]
    if init is not None:
        terms["init"] = _entry(init, "synthesis.init")
    s = attrs.evolve(s, **terms)
    problems = cfg.check_synthesis(s) + table_plugin_problems(plugins, s, "synthesis")
    if problems:
        raise ConfigError("\n".join(f"{API_SOURCE}: {p}" for p in problems))
    return s


def _entry(entry, path: str):
    """A plugin spec from a name or a table; anything else is a ready-made object (checked when built)."""
    if isinstance(entry, cfg.PluginSpec):
        return entry
    if isinstance(entry, (str, Mapping)):
        return cfg.structure(
            dict(entry) if isinstance(entry, Mapping) else entry, cfg.PluginSpec, source=API_SOURCE, path=path
        )
    return entry


def _describe(entry, registry: Any = None) -> Any:
    """JSON for the stored config: a plugin spec as in TOML, a ready-made object by class and fields."""
    if isinstance(entry, cfg.PluginSpec):
        return cfg.CONVERTER.unstructure(entry)
    cls = type(entry)
    fields = {a.name: getattr(entry, a.name) for a in attrs.fields(cls) if a.init} if attrs.has(cls) else {}
    return json.loads(
        json.dumps(
            {"object": f"{cls.__module__}.{cls.__qualname__}", "name": term_name(entry, registry), **fields},
            default=str,
        )
    )


def _describe_synthesis(s: cfg.SynthesisConfig, plugins: DsvPluginManager) -> dict[str, Any]:
    out = {}
    for a in attrs.fields(cfg.SynthesisConfig):
        value = getattr(s, a.name)
        if a.name in TERM_LISTS:
            out[a.name] = [_describe(e, plugins.registry(a.name)) for e in value]
        elif a.name == "init":
            out[a.name] = _describe(value, plugins.registry("initializers"))
        else:
            out[a.name] = cfg.CONVERTER.unstructure(value)
    return out


def _plugin_options(given: Mapping[str, Any] | None, plugins: DsvPluginManager) -> dict[str, Any]:
    """The ``plugin_options`` argument checked as a pipeline's ``[plugins]`` table is."""
    options, problems = cfg.structure_plugin_options(given, plugins.registry("plugin_options"), source=API_SOURCE)
    if problems:
        raise ConfigError("\n".join(f"{API_SOURCE}: {p}" for p in problems))
    return options


def _logging_config(logging, tensorboard) -> cfg.LoggingConfig:
    if isinstance(logging, cfg.LoggingConfig):
        table = cfg.CONVERTER.unstructure(logging)
    elif logging is None:
        table = {}
    elif isinstance(logging, Mapping):
        table = dict(logging)
    else:
        raise ConfigError(
            f"{API_SOURCE}: logging: expected a table like {{'tensorboard': 'runs/x'}}, got {type(logging).__name__}"
        )
    if tensorboard is not None:
        table["tensorboard"] = str(tensorboard)
    if isinstance(table.get("tensorboard"), Path):
        table["tensorboard"] = str(table["tensorboard"])
    log_cfg = cfg.structure(table, cfg.LoggingConfig, source=API_SOURCE, path="logging")
    problems = cfg.check_logging(log_cfg)
    if problems:
        raise ConfigError("\n".join(f"{API_SOURCE}: {p}" for p in problems))
    return log_cfg
