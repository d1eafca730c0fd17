"""Assembling a synthesis: the run of one ``[synthesis]`` table on a model, with its plugins built
from their specs. Shared by the pipeline's synthesize stage, its sub-runs and ``dsv.synthesize``."""

from __future__ import annotations

import os
import random
from typing import Any

import attrs
import numpy as np
import torch

from dsv import config as cfg
from dsv import kkt
from dsv.errors import ConfigError
from dsv.plugins import DsvPluginManager, InitContext, InputSpec
from dsv.synthesis.engine import SynthesisRun
from dsv.synthesis.execution import detach_terms

API_SOURCE = "dsv.synthesize"  # config_source of the stores the Python API writes


def resolve_device(name: str, key: str = "run.device") -> torch.device:
    """The device ``name`` names, refused (naming ``key``) when this machine has none such."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{key}: unknown device {name!r} (auto, cpu, cuda, cuda:1, ...)") from None
    if device.type == "meta":
        raise ConfigError(f"{key}: 'meta' holds no data; a synthesis needs a real device (auto, cpu, cuda)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}: {name!r} but no CUDA GPU is available here; use 'auto' or 'cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{key}: {name!r} but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    elif device.type != "cpu" and name not in ("mps", "xpu"):
        raise ConfigError(f"{key}: device {name!r} is not supported (auto, cpu, cuda, cuda:1, ...)")
    return device


# bytes per candidate value the optimizer keeps at least: x, its gradient, Adam's two moments
STATE_COPIES = 4


def available_memory(device: torch.device) -> int | None:
    """Bytes free on ``device`` now (None when unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(n: int, channels: int, size: int, device: torch.device, source: str) -> None:
    """Refuse a run whose candidates and their Adam state alone exceed the free memory."""
    need = n * channels * size * size * 4 * STATE_COPIES
    free = available_memory(device)
    if free is not None and need > free:
        raise ConfigError(
            f"{source}: synthesis.candidates_per_class: {n} candidates of {channels}x{size}x{size} need about "
            f"{need / 2**30:.1f} GiB for themselves and their Adam state, {device.type} has {free / 2**30:.1f} GiB "
            "free; lower candidates_per_class or the resolutions, or split them with synthesis.groups"
        )


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
                raise ConfigError(
                    f"{source}: {key}[{i}]: class {cls} is out of range (the model has {num_classes} classes)"
                )
            row[cls] = w
        if row.sum() <= 0:
            raise ConfigError(f"{source}: {key}[{i}]: the weights sum to 0")
        rows += [row / row.sum()] * per_class
    return torch.stack(rows)


def seed_everything(seed: int) -> None:
    """Seed every RNG a run may draw from (the checkpoint saves all three), so a group's run does
    not depend on what ran before it in the same process."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def build_run(
    module: torch.nn.Module,
    spec: InputSpec,
    s: cfg.SynthesisConfig,
    *,
    plugins: DsvPluginManager,
    device: torch.device,
    seed: int,
    data=None,
    source: str,
    progress: bool = True,
    candidates: slice = slice(None),
    plugin_options: dict[str, Any] | None = None,
) -> SynthesisRun:
    """The run of one [synthesis] table on ``module`` (frozen, moved to ``device``, eval mode).

    ``spec`` is the model's :class:`~dsv.plugins.InputSpec`. Entries of ``s.losses``,
    ``s.priors``, ``s.augmentations`` and ``s.init`` are plugin specs, or (from the Python API)
    ready-made objects used as they are. ``candidates``: the rows of the target matrix this run
    optimizes (one group of a grouped synthesis), seeded by ``seed``. ``plugin_options``: what the
    lifecycle hooks find as ``run.plugin_options`` (None: every registered options class's
    defaults). Every problem is a ConfigError naming ``source`` and the key."""
    entries = len(s.targets or s.classes or range(spec.num_classes))
    n = len(range(entries * s.candidates_per_class)[candidates])
    largest = max([spec.size, *(size for _, size in s.resolutions)])
    check_memory(n, spec.channels, largest, device, source)
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
    bounds = domain_bounds(spec, device) if s.domain != "none" else None
    if bounds is not None and s.domain == "penalty":
        priors.append(("domain", DomainPenalty(weight=s.domain_weight, low=bounds[0], high=bounds[1])))
    if bounds is not None and s.domain == "clamp":
        x0 = torch.clamp(x0.to(device), min=bounds[0], max=bounds[1])
    augs = [
        _term(a, "augmentations", plugins, source, f"synthesis.augmentations[{i}]")
        for i, a in enumerate(s.augmentations)
    ]
    model = module.to(device).eval()
    if s.channels_last:
        model.to(memory_format=torch.channels_last)
    _check_resolutions(model, s, spec, device, source)  # before any term hooks into the model
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
        model=model,
        x=x,
        lambdas=lambdas,
        targets=targets.to(device),
        alive=alive,
        losses=losses,
        priors=priors,
        augmentations=augs,
        augmented_weight=s.augmented_weight,
        augmentation_sampling=s.augmentation_sampling,
        optimizer_kind=s.optimizer,
        lr_x=s.lr_x,
        lr_schedule=s.lr_schedule,
        lr_warmup=s.lr_warmup,
        betas_x=(float(s.betas_x[0]), float(s.betas_x[1])),
        lr_lambda=s.lr_lambda,
        lambda_warmup=s.lambda_warmup,
        prune=s.prune,
        iterations=s.iterations,
        record_every=s.record_every,
        checkpoint_every=s.checkpoint_every,
        resolutions=[(start, size) for start, size in s.resolutions],  # pairs: _check_resolutions unpacked each
        model_size=spec.size if s.upsample else None,
        hooks=plugins,
        plugin_options=(
            dict(plugin_options)
            if plugin_options is not None
            else cfg.default_plugin_options(plugins.registry("plugin_options"))
        ),
        progress=progress,
        bounds=bounds if s.domain == "clamp" else None,
    )


def domain_bounds(spec: InputSpec, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The model's input domain as (low, high) tensors of shape (1, C, 1, 1), or None if unknown."""
    if spec.domain is None:
        return None
    low, high = spec.domain
    return (
        torch.tensor(low, dtype=torch.float32, device=device).view(1, -1, 1, 1),
        torch.tensor(high, dtype=torch.float32, device=device).view(1, -1, 1, 1),
    )


@attrs.define(kw_only=True)
class DomainPenalty:
    """``synthesis.domain = "penalty"``: mean squared excess of the candidates beyond the model's
    input domain, per channel (the ``range`` prior with the domain's own bounds)."""

    weight: float
    low: torch.Tensor
    high: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return kkt.range_excess(x, self.low, self.high)


def _check_resolutions(model: torch.nn.Module, s: cfg.SynthesisConfig, spec: InputSpec, device, source: str) -> None:
    """Every size of the schedule must fit the model: say so now, not mid-run. With ``upsample``
    the model sees its own input size only: no stage may exceed it, and the last must reach it."""
    if s.upsample:  # check_synthesis refused it without a schedule
        for i, (_, size) in enumerate(s.resolutions):
            if size > spec.size:
                raise ConfigError(
                    f"{source}: synthesis.resolutions[{i}]: size {size} exceeds the model's input size {spec.size} "
                    "(synthesis.upsample is on)"
                )
        if s.resolutions[-1][1] != spec.size:
            raise ConfigError(
                f"{source}: synthesis.resolutions: the last stage is {s.resolutions[-1][1]} px; with "
                f"synthesis.upsample it must be the model's input size, {spec.size}"
            )
        return
    channels = spec.channels
    for i, (_, size) in enumerate(s.resolutions):
        try:
            with torch.no_grad():
                model(torch.zeros(1, channels, size, size, device=device))
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise ConfigError(
                f"{source}: synthesis.resolutions[{i}]: the model does not take {size}x{size} inputs ({first})"
            ) from None


def _term(entry, kind: str, plugins: DsvPluginManager, source: str, path: str) -> Any:
    """A plugin built from its spec, or a ready-made object checked for what the engine calls."""
    if isinstance(entry, cfg.PluginSpec):
        return cfg.build(entry, plugins.registry(kind), source=source, path=path)
    weighted = kind in ("losses", "priors")
    weight = getattr(entry, "weight", None)
    if not callable(entry) or (weighted and not (isinstance(weight, (int, float)) and not isinstance(weight, bool))):
        need = "a callable with a numeric 'weight' attribute" if weighted else "a callable"
        raise ConfigError(
            f"{source}: {path}: expected a plugin name, a table with a 'name' key, or {need}; "
            f"got {type(entry).__name__}"
        )
    return entry


def term_name(entry, registry: Any = None) -> str:
    """The history name of a term: its plugin name; for a ready-made object its own ``name``
    attribute (a non-empty string), else the name its class is registered under in ``registry``,
    else its class name in lower case."""
    if isinstance(entry, cfg.PluginSpec):
        return entry.name
    own = getattr(entry, "name", None)
    if isinstance(own, str) and own:
        return own
    if registry is not None:
        for registered in registry.entries():
            if registered.factory is type(entry):
                return str(registered.name)
    return type(entry).__name__.lower()


def _named(entries, kind: str, plugins: DsvPluginManager, source: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        obj = _term(entry, kind, plugins, source, f"synthesis.{kind}[{i}]")
        base = term_name(entry, plugins.registry(kind))
        seen[base] = seen.get(base, 0) + 1
        out.append((base if seen[base] == 1 else f"{base}{seen[base]}", obj))
    return out
