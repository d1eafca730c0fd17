"""The KKT loop of ``dsv.synthesize`` on a small model against a plain PyTorch loop of the same loss
(``benchmarks/kkt_loop.py``).

The model: a bias-free ReLU MLP 784-1000-2 (``nn.Flatten`` first, which has no parameters), seeded;
200 candidates of 1 x 28 x 28 from one seeded normal draw, targets alternating 0, 1. The loss: the
stationarity term over all parameters with the l2 distance, as dsv's ``stationarity`` loss computes
it with ``mode = "exact"`` (double backward) and its defaults otherwise: ``weight * mean_theta
(theta + sum_i lambda_i grad_theta CE_i)^2 / mean_theta theta^2`` (``relative``). Both sides step x
and lambda with Adam (lr_x 0.05, lr_lambda 0.01, lambda from 1.0) for the same iterations.

dsv's side switches off what the plain loop does not do: no primal term, priors, augmentations,
domain projection or progress bar. What it still does each iteration: the ignite engine's events,
the NaN check, entropy and accuracy of the candidates, pruning of negative lambdas, one history row
(every loss, entropy, accuracy, alive, all lambdas) and, with a store, a checkpoint every
``checkpoint_every`` iterations. Each variant and the plain loop run in turn, ``repeats`` rounds, in
this one process. Time of one iteration: between stamps taken after each (dsv's through a plugin
on ``dsv_iteration_completed``), medians over every iteration of every round, so that other work
on a shared machine, which only ever adds time, moves them least. The whole call per iteration
(setup, checkpoints and the end included) is reported too.
"""

from __future__ import annotations

import contextlib
import io
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import dsv
from dsv.plugins import DsvPluginManager, hookimpl

CANDIDATES = 200
LR_X, LR_LAMBDA, LAMBDA_INIT = 0.05, 0.01, 1.0
WEIGHT = 10.0  # the stationarity loss's default weight


def mlp(seed: int = 0, hidden: int = 1000) -> nn.Module:
    """Haim et al.'s small model: a bias-free two-layer ReLU MLP, 784-``hidden``-2 (theirs: 1000), seeded."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, 2, bias=False)
    ).eval()


def problem(n: int = CANDIDATES, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(x0 (n, 1, 28, 28), labels (n,)): the candidates both sides start from."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=gen), torch.arange(n) % 2


def plain_loop(
    model: nn.Module, x0: Tensor, labels: Tensor, iterations: int, stamps: list[float] | None = None
) -> list[float]:
    """The loss as plain PyTorch: no engine, no store, no history beyond the loss values returned.
    ``stamps``: gets ``time.perf_counter()`` before the first iteration and after each."""
    params = list(model.parameters())
    saved = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    reference = sum(float(p.detach().pow(2).sum()) for p in params) / sum(p.numel() for p in params)
    count = sum(p.numel() for p in params)
    x = x0.clone().requires_grad_(True)
    lambdas = torch.full((x.shape[0],), LAMBDA_INIT, requires_grad=True)
    targets = F.one_hot(labels, 2).float()
    optimizer = torch.optim.Adam([{"params": [x], "lr": LR_X}, {"params": [lambdas], "lr": LR_LAMBDA}])
    losses = []
    clock = stamps if stamps is not None else []
    try:
        clock.append(time.perf_counter())
        for _ in range(iterations):
            optimizer.zero_grad(set_to_none=True)
            ce = -(targets * F.log_softmax(model(x), dim=1)).sum(dim=1)
            grads = torch.autograd.grad((lambdas * ce).sum(), params, create_graph=True)
            parts = [(p.detach() + g).pow(2).sum() for p, g in zip(params, grads)]
            distance = parts[0]
            for part in parts[1:]:
                distance = distance + part
            loss = WEIGHT * (distance / count) / reference
            # x and lambda only: a loss.backward() would also take the (unused) gradient in theta
            x.grad, lambdas.grad = torch.autograd.grad(loss, [x, lambdas])
            optimizer.step()
            losses.append(float(loss.detach()))
            clock.append(time.perf_counter())
    finally:
        for p, s in zip(params, saved):
            p.requires_grad_(s)
    return losses


def stationarity_spec(**changes: Any) -> dict[str, Any]:
    """The loss table dsv's side runs (``changes`` override its keys)."""
    return {"name": "stationarity", "params": "all", "distance": "l2", "mode": "exact", **changes}


class FixedStart:
    """An initializer handing dsv the plain loop's x0."""

    def __init__(self, x0: Tensor):
        self.x0 = x0

    def __call__(self, shape, labels, context) -> Tensor:
        assert tuple(shape) == tuple(self.x0.shape)
        return self.x0.clone()


def dsv_loop(
    model: nn.Module, x0: Tensor, labels: Tensor, iterations: int, store: Path | None = None, **options: Any
) -> dict[str, np.ndarray]:
    """``dsv.synthesize`` of the same loss; returns its history. ``options``: more [synthesis] keys
    (``checkpoint_every``, ``record_every``, ``losses``) or ``progress`` and ``plugins``."""
    with warnings.catch_warnings():  # no input range: the plain loop does not clamp either
        warnings.simplefilter("ignore", UserWarning)
        result = dsv.synthesize(
            model,
            labels.tolist(),
            input_shape=(1, 28, 28),
            iterations=iterations,
            losses=options.pop("losses", [stationarity_spec()]),
            priors=[],
            augmentations=[],
            init=FixedStart(x0),
            domain="none",
            lr_x=LR_X,
            lr_lambda=LR_LAMBDA,
            lambda_init=LAMBDA_INIT,
            lambda_warmup=0,  # lambda steps from the first iteration, as in the plain loop
            store=store,
            fresh=True,
            device="cpu",  # as the plain loop
            progress=options.pop("progress", False),
            **options,
        )
    return result.history


def loss_check(iterations: int = 5) -> dict[str, Any]:
    """The loss of both sides on the first iterations: the same quantity, to float32 rounding."""
    x0, labels = problem()
    plain = plain_loop(mlp(), x0, labels, iterations)
    ours = [float(v) for v in dsv_loop(mlp(), x0, labels, iterations)["total"]]  # the weighted term
    worst = max(abs(a - b) / max(abs(b), 1e-30) for a, b in zip(ours, plain))
    return {"dsv": ours, "plain": plain, "max_rel_diff": worst}


class IterationClock:
    """A plugin stamping ``time.perf_counter()`` when a run starts and after each iteration (one
    pluggy call per iteration, about a microsecond)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    @hookimpl
    def dsv_run_started(self, run) -> None:
        self.stamps.append(time.perf_counter())

    @hookimpl
    def dsv_iteration_completed(self, run, iteration, metrics) -> None:
        self.stamps.append(time.perf_counter())


Variant = Callable[[nn.Module, Tensor, Tensor, list[float]], Any]


def variants(iterations: int, checkpoint_every: int, tmp: Path) -> dict[str, Variant]:
    """What is timed: the plain loop and dsv's configurations, name -> fn(model, x0, labels,
    stamps), each filling ``stamps`` with the time before the first iteration and after each."""
    clock = IterationClock()
    plugins = DsvPluginManager()
    plugins.register(clock, name="kkt_loop_clock")
    every = max(1, min(checkpoint_every, iterations))

    def ours(**options: Any) -> Variant:
        def run(m: nn.Module, x: Tensor, y: Tensor, stamps: list[float]) -> None:
            clock.stamps = stamps
            with contextlib.redirect_stderr(io.StringIO()):  # the progress bar's lines
                dsv_loop(m, x, y, iterations, plugins=plugins, **options)

        return run

    return {
        "plain": lambda m, x, y, stamps: plain_loop(m, x, y, iterations, stamps),
        # the headline: in memory, a history row every iteration
        "loop": ours(),
        "store": ours(store=tmp / "run.zarr", checkpoint_every=every),
        # the overhead sources one at a time, each against "loop"
        "history_sparse": ours(record_every=iterations),
        "progress_bar": ours(progress=True),
        # the loss's default mode instead of exact: what it picks for all parameters of this MLP
        "mode_auto": ours(losses=[stationarity_spec(mode="auto")]),
    }


def measure(
    iterations: int,
    repeats: int,
    checkpoint_every: int = 50,
    threads: int = 1,
    only: list[str] | None = None,
    hidden: int = 1000,
    candidates: int = CANDIDATES,
) -> dict[str, Any]:
    """ms per iteration of each variant (``only``: these and the plain loop), every one run once
    per round, ``repeats`` rounds, each variant leading in turn. ``hidden`` and ``candidates``:
    a smaller problem shows what the engine adds per iteration whatever the model."""
    torch.set_num_threads(threads)
    x0, labels = problem(candidates)
    steps: dict[str, list[float]] = {}
    calls: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = variants(iterations, checkpoint_every, Path(tmp))
        if only:
            runs = {k: v for k, v in runs.items() if k == "plain" or k in only}
        for fn in runs.values():  # warm-up: imports, allocator, the plugin manager
            fn(mlp(hidden=hidden), x0, labels, [])
        names = list(runs)
        for r in range(repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                model, stamps = mlp(hidden=hidden), list[float]()
                start = time.perf_counter()
                runs[name](model, x0, labels, stamps)
                calls.setdefault(name, []).append(1000 * (time.perf_counter() - start) / iterations)
                steps.setdefault(name, []).extend(1000 * np.diff(stamps))
    settings = dict(
        iterations=iterations,
        repeats=repeats,
        threads=threads,
        checkpoint_every=checkpoint_every,
        hidden=hidden,
        candidates=candidates,
    )
    return summarise(steps, calls, settings)


def summarise(steps: dict[str, list[float]], calls: dict[str, list[float]], settings: dict[str, Any]) -> dict[str, Any]:
    """The JSON: per dsv variant the median ms of one iteration (all rounds pooled) against the
    plain loop's, and the whole call's ms per iteration (setup, checkpoints and the end included;
    medians over the rounds) against the plain loop's."""
    out: dict[str, Any] = {"settings": settings}
    plain_step, plain_call = statistics.median(steps["plain"]), statistics.median(calls["plain"])
    out["plain"] = {"step_ms": plain_step, "call_ms": plain_call, "call_ms_per_round": calls["plain"]}
    for name in steps:
        if name == "plain":
            continue
        step, call = statistics.median(steps[name]), statistics.median(calls[name])
        out[name] = {
            "dsv_ms": step,
            "plain_ms": plain_step,
            "ratio": step / plain_step,
            "overhead_us": 1000 * (step - plain_step),
            # the spread: the 10th and 90th percentiles of dsv's iterations over the plain loop's
            "ratio_p10": _quantile(steps[name], 0.1) / _quantile(steps["plain"], 0.1),
            "ratio_p90": _quantile(steps[name], 0.9) / _quantile(steps["plain"], 0.9),
            "dsv_call_ms": call,
            "plain_call_ms": plain_call,
            "call_ratio": call / plain_call,
            "call_ratio_per_round": [a / b for a, b in zip(calls[name], calls["plain"])],
        }
    return out


def _quantile(values: list[float], q: float) -> float:
    return float(np.quantile(np.asarray(values), q))


ROWS = (
    ("loop", "dsv.synthesize, in memory"),
    ("store", "dsv.synthesize, store, checkpoint every N"),
    ("history_sparse", "in memory, one history row per run"),
    ("progress_bar", "in memory, progress bar on"),
    ("mode_auto", "in memory, stationarity mode auto"),
)


def table(result: dict[str, Any]) -> str:
    """One row per dsv variant: ms per iteration, dsv and plain, their ratios, and what dsv adds."""
    header = (
        f"{'':<44}{'dsv ms':>8}{'plain ms':>10}{'ratio':>7}{'p10-p90':>12}{'+us':>7}"
        f"{'call ms':>9}{'plain':>8}{'ratio':>7}"
    )
    lines = [header, "-" * len(header)]
    for key, label in ROWS:
        if key not in result:
            continue
        r = result[key]
        spread = f"{r['ratio_p10']:.2f}-{r['ratio_p90']:.2f}"
        lines.append(
            f"{label:<44}{r['dsv_ms']:>8.2f}{r['plain_ms']:>10.2f}{r['ratio']:>7.2f}{spread:>12}{r['overhead_us']:>7.0f}"
            f"{r['dsv_call_ms']:>9.2f}{r['plain_call_ms']:>8.2f}{r['call_ratio']:>7.2f}"
        )
    return "\n".join(lines)
