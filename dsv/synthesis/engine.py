"""The ignite Engine that drives one DeepKKT synthesis loop.

One engine iteration is one step of Algorithm 1: forward the candidates (and an augmented copy),
sum the weighted KKT terms and priors, update ``x`` and ``lambda``, prune candidates whose lambda
went negative. Handlers record histories, write the store, guard against NaN and show progress.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from torch import Tensor, nn

from dsv import kkt
from dsv.errors import NonFiniteLossError
from dsv.plugins.output import attach_progress
from dsv.store import checkpoint

SHOWN_IN_PROGRESS = ("total", "primal", "stationarity", "entropy", "alive")


@attrs.define(eq=False)
class SynthesisRun:
    """The state of one synthesis: model, candidates, multipliers, terms, optimizer, store."""

    model: nn.Module
    x: Tensor  # (N, C, H, W) leaf, requires grad
    lambdas: Tensor  # (N,) leaf, requires grad
    targets: Tensor  # (N, K) soft targets
    alive: Tensor  # (N,) bool
    losses: list[tuple[str, Any]]  # (history name, term with .weight)
    priors: list[tuple[str, Any]] = attrs.field(factory=list)
    augmentations: list[Callable[[Tensor], Tensor]] = attrs.field(factory=list)
    augmented_weight: float = 1.0
    # "all": every augmentation, chained, each step; "one": one of them per step, drawn uniformly
    # from torch's global generator (Algorithm 1's "sample f_A in A"; the RNG is checkpointed)
    augmentation_sampling: str = "all"
    # "adam" or "sgd": plain gradient steps for x and lambda (Algorithm 1), no momentum, no state
    optimizer_kind: str = "adam"
    lr_x: float = 0.05
    lr_schedule: str = "constant"  # or "cosine": lr_x decays to 0 over each resolution stage
    lr_warmup: int = 0  # iterations of linear warm-up at the start of each resolution stage
    betas_x: tuple[float, float] = (0.9, 0.999)
    lr_lambda: float = 0.05
    lambda_warmup: int = 0  # iterations during which lambda is held (x aligns first)
    prune: bool = True  # dual feasibility: lambda below 0 drops the candidate (False: lambda projected to 0)
    iterations: int = 100
    record_every: int = 1
    checkpoint_every: int = 50  # 0: only at the end (and on SIGINT/SIGTERM)
    resolutions: list[tuple[int, int]] = attrs.field(factory=list)  # (from iteration, size)
    # synthesis.upsample: the model's input size, to which smaller candidates are upsampled before
    # the model sees them (None: the model sees the candidates at their own size)
    model_size: int | None = None
    store: Any = None  # dsv.store.RunStore or None
    hooks: Any = None  # dsv.plugins.DsvPluginManager or None
    # the [plugins.<name>] options objects the lifecycle hooks read (name -> object)
    plugin_options: dict[str, Any] = attrs.field(factory=dict)
    progress: bool = True
    # (low, high) of the input domain, (1, C, 1, 1) each: candidates are projected into it after
    # every step (synthesis.domain = "clamp"); None: not enforced here
    bounds: tuple[Tensor, Tensor] | None = None
    optimizer: torch.optim.Optimizer = attrs.field(init=False)
    pending: dict[str, list] = attrs.field(factory=dict, init=False)
    committed_iteration: int = attrs.field(default=0, init=False)
    stop_signals: Any = attrs.field(default=None, init=False)  # dsv.store.checkpoint.StopSignals while running
    _rng_at_step_start: Any = attrs.field(default=None, init=False, repr=False)
    _stepped: bool = attrs.field(default=False, init=False, repr=False)  # x moved in an unfinished step
    completed_step: int = attrs.field(default=0, init=False)  # the last step that ran to its end

    def __attrs_post_init__(self):
        self.optimizer = self._new_optimizer()

    def _new_optimizer(self) -> torch.optim.Optimizer:
        if self.optimizer_kind == "sgd":
            return torch.optim.SGD(
                [{"params": [self.x], "lr": self.lr_x}, {"params": [self.lambdas], "lr": self.lr_lambda}]
            )
        return torch.optim.Adam(
            [
                {"params": [self.x], "lr": self.lr_x, "betas": self.betas_x},
                {"params": [self.lambdas], "lr": self.lr_lambda},
            ]
        )

    def stage_bounds(self, iteration: int) -> tuple[int, int]:
        """(first, last) iteration of the resolution stage that holds ``iteration`` (the whole run
        without a schedule)."""
        first, last = 1, self.iterations
        for start, _ in self.resolutions:
            if start <= iteration:
                first = max(first, start)
            else:
                last = min(last, start - 1)
        return first, last

    def lr_x_at(self, iteration: int) -> float:
        """The learning rate of x at ``iteration``: DeepInversion's policy per resolution stage, a
        linear warm-up over ``lr_warmup`` iterations, then constant or a cosine decay to 0.
        A function of the iteration only, so a resumed run takes the same steps."""
        first, last = self.stage_bounds(iteration)
        step = iteration - first
        if step < self.lr_warmup:
            return self.lr_x * (step + 1) / self.lr_warmup
        if self.lr_schedule == "cosine":
            span = max(last - first + 1 - self.lr_warmup, 1)
            return self.lr_x * 0.5 * (1.0 + math.cos(math.pi * (step - self.lr_warmup) / span))
        return self.lr_x

    def apply_schedule(self, iteration: int) -> None:
        """Multi-resolution synthesis: from each scheduled iteration on, the candidates live (and
        the model sees them) at that size; on a change they are upscaled and x's Adam state restarts."""
        size = None
        for start, s in self.resolutions:
            if iteration >= start:
                size = s
        if size is None or tuple(self.x.shape[-2:]) == (size, size):
            return
        with torch.no_grad():
            resized = F.interpolate(self.x.detach(), size=(size, size), mode="bilinear", align_corners=False)
        self.x = resized.requires_grad_(True)
        lambda_state = self.optimizer.state.get(self.lambdas)
        self.optimizer = self._new_optimizer()
        if lambda_state is not None:
            self.optimizer.state[self.lambdas] = lambda_state

    @property
    def labels(self) -> Tensor:
        return self.targets.argmax(dim=1)

    def model_input(self, x: Tensor) -> Tensor:
        """What the model sees of candidates ``x``: ``x`` itself, or with ``model_size`` set and a
        smaller resolution stage, ``x`` upsampled (bilinear) to the model's input size."""
        if self.model_size is None or tuple(x.shape[-2:]) == (self.model_size, self.model_size):
            return x
        return F.interpolate(x, size=(self.model_size, self.model_size), mode="bilinear", align_corners=False)

    def batch(self, inputs: Tensor) -> kkt.KKTBatch:
        logits = self.model(inputs)
        return kkt.KKTBatch(self.model, inputs, logits, self.targets, self.lambdas, self.alive)

    def augmented_by(self) -> list[Callable[[Tensor], Tensor]]:
        """The augmentations of this step: all of them in order, or one drawn at random."""
        if self.augmentation_sampling == "one" and len(self.augmentations) > 1:
            return [self.augmentations[int(torch.randint(len(self.augmentations), ()))]]
        return self.augmentations

    def _call_hook(self, name: str, **kwargs) -> list:
        return self.hooks.call_lifecycle(name, run=self, **kwargs) if self.hooks is not None else []

    # ---- one step of Algorithm 1 ----------------------------------------------------------------

    def step(self, iteration: int) -> dict[str, Any]:
        # the RNG states as the generators give them, converted to a checkpoint's arrays only if
        # this step fails (rng_at_step_start): half the per-step cost of capture_rng
        self._rng_at_step_start = checkpoint.snapshot_rng()
        self.apply_schedule(iteration)
        self.optimizer.param_groups[0]["lr"] = self.lr_x_at(iteration)
        self.optimizer.zero_grad(set_to_none=True)
        values: dict[str, Tensor] = {}
        total: Tensor | None = None  # the first term itself, not 0 + it: one node fewer to differentiate
        # the clean forward is skipped when every loss term is evaluated on augmented copies only
        # (DeepInversion's recipe: one forward per step); the metrics then come from those copies
        needs_clean = not self.augmentations or any(getattr(term, "clean", True) for _, term in self.losses)
        shown = self.model_input(self.x)
        clean = self.batch(shown) if needs_clean else None
        for name, term in self.losses:
            if clean is None or not getattr(term, "clean", True):
                continue
            values[name] = term(clean)
            total = _plus(total, term.weight * values[name])
        augmented = shown
        if self.augmentations:
            for aug in self.augmented_by():
                augmented = aug(augmented)
            aug_batch = self.batch(augmented)
            for name, term in self.losses:
                if not getattr(term, "augmented", True):
                    continue
                values[f"{name}_aug"] = term(aug_batch)
                total = _plus(total, self.augmented_weight * term.weight * values[f"{name}_aug"])
        for name, prior in self.priors:
            values[name] = prior(augmented if getattr(prior, "augmented", False) else self.x)
            total = _plus(total, prior.weight * values[name])
        if total is None:  # no term at all
            total = torch.zeros((), device=self.x.device)
        seen = clean if clean is not None else aug_batch
        total_value = float(total.detach())  # the history's value, and the NaN guard's
        if not math.isfinite(total_value):
            bad = [k for k, v in values.items() if not torch.isfinite(v)]
            raise NonFiniteLossError(
                f"loss became non-finite at iteration {iteration} (terms: {', '.join(bad) or 'total'}); "
                f"the store holds iteration {iteration - 1}. Lower synthesis.lr_x or the term weights."
            )
        n_alive = int(self.alive.sum())
        all_alive = n_alive == self.alive.shape[0]  # the masks below change nothing then: skipped
        with torch.no_grad():
            probs_entropy = kkt.prediction_entropy(seen.logits.detach())
            if not all_alive:  # times 1.0 elsewhere: the same sum
                probs_entropy = probs_entropy * self.alive.float()
            entropy = float(probs_entropy.sum() / max(n_alive, 1))
            right = ~kkt.misclassified(seen.logits.detach(), self.targets)
            if not all_alive:
                right = right & self.alive
            accuracy = float(right.sum()) / max(n_alive, 1)
        # grads for x and lambda only: theta is frozen, so nothing accumulates in the model
        grad_x, grad_l = torch.autograd.grad(total, [self.x, self.lambdas], allow_unused=True)
        self.x.grad = grad_x if grad_x is not None else torch.zeros_like(self.x)
        self.lambdas.grad = grad_l if grad_l is not None else torch.zeros_like(self.lambdas)
        if iteration <= self.lambda_warmup:
            self.lambdas.grad = None  # Adam skips parameters without a gradient
        if not all_alive:
            dead = ~self.alive
            frozen_x, frozen_l = self.x.detach()[dead].clone(), self.lambdas.detach()[dead].clone()
        self._stepped = True
        self.optimizer.step()
        with torch.no_grad():  # dead candidates stop taking part: restore what Adam's momentum moved
            if self.bounds is not None:
                self.x.clamp_(min=self.bounds[0], max=self.bounds[1])
            if not all_alive:
                self.x[dead] = frozen_x
                self.lambdas[dead] = frozen_l
            if not self.prune:  # dual feasibility by projection: a lambda below 0 is set to 0
                self.lambdas.copy_(torch.where(self.alive, self.lambdas.clamp(min=0.0), self.lambdas))
        pruned = kkt.newly_infeasible(self.lambdas, self.alive)  # none when projected (prune = False)
        pruned_any = bool(pruned.any())
        if pruned_any:
            self.alive[pruned] = False
            self._call_hook("dsv_candidate_pruned", indices=pruned.nonzero().flatten().tolist(), iteration=iteration)
        metrics = {name: float(v.detach()) for name, v in values.items()}
        metrics.update(total=total_value, entropy=entropy, accuracy=accuracy)
        metrics["alive"] = float(self.alive.sum()) if pruned_any else float(n_alive)
        self._stepped = False
        self.completed_step = iteration
        return metrics

    def rng_at_step_start(self) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """The RNG states at the start of the latest step, as a checkpoint holds them (None before
        any step)."""
        return checkpoint.rng_arrays(self._rng_at_step_start) if self._rng_at_step_start is not None else None

    # ---- recording and writing -------------------------------------------------------------------

    def record(self, iteration: int, metrics: dict[str, float], force: bool = False) -> None:
        if not force and iteration % self.record_every and iteration not in (1, self.iterations):
            return
        if self.pending.get("iteration") and self.pending["iteration"][-1] == iteration:
            return  # already recorded
        self.pending.setdefault("iteration", []).append(iteration)
        for name, value in metrics.items():
            self.pending.setdefault(name, []).append(value)
        self.pending.setdefault("lambda", []).append(self.lambdas.detach().cpu().numpy().copy())

    def flush(self, iteration: int, rng=None) -> None:
        """Checkpoint: candidates, Adam moments, RNG states and pending history rows, committed
        as ``iteration`` (see :meth:`dsv.store.RunStore.commit`). Without a store the history
        rows stay in ``pending``: the run's history in memory."""
        if self.store is not None:
            arrays, scalars = self.state(rng)
            rows = {k: np.asarray(v) for k, v in self.pending.items()}
            self.store.commit(iteration, arrays, scalars, rows)
            self.pending = {}
        self.committed_iteration = iteration

    def state(self, rng=None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Everything a resume needs, as arrays and JSON scalars. ``rng``: RNG states to save
        instead of the current ones (those at the start of a step that failed)."""
        arrays = {
            "x": self.x.detach().cpu().numpy(),
            "lambda": self.lambdas.detach().cpu().numpy(),
            "alive": self.alive.cpu().numpy(),
        }
        adam_arrays, scalars = checkpoint.capture_adam(self.optimizer, {"x": self.x, "lambda": self.lambdas})
        rng_arrays, rng_scalars = rng if rng is not None else checkpoint.capture_rng()
        arrays.update(adam_arrays)
        arrays.update(rng_arrays)
        scalars.update(rng_scalars)
        scalars["resolution"] = list(self.x.shape[-2:])
        return arrays, scalars

    def restore(self, arrays: dict[str, np.ndarray], scalars: dict[str, Any], iteration: int) -> None:
        """Continue from a checkpoint taken after ``iteration``: the same candidates, Adam
        moments and RNG states, so the next steps equal those of an uninterrupted run."""
        device = self.x.device
        with torch.no_grad():
            self.x = torch.from_numpy(arrays["x"]).to(device).requires_grad_(True)
            self.lambdas = torch.from_numpy(arrays["lambda"]).to(device).requires_grad_(True)
            self.alive = torch.from_numpy(arrays["alive"].astype(bool)).to(device)
        self.optimizer = self._new_optimizer()
        checkpoint.restore_adam(self.optimizer, {"x": self.x, "lambda": self.lambdas}, arrays, scalars)
        checkpoint.restore_rng(arrays, scalars)
        self.committed_iteration = iteration

    # ---- final figures ---------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        clean = self.batch(self.model_input(self.x.detach()))
        with torch.no_grad():
            right = (~kkt.misclassified(clean.logits, self.targets)) & self.alive
        out: dict[str, Any] = {
            "candidates": int(self.x.shape[0]),
            "alive": int(self.alive.sum()),
            "classified_as_target": int(right.sum()),
            "iterations": int(self.committed_iteration),
        }
        for _, term in self.losses:
            if hasattr(term, "summary"):
                out.update(term.summary(clean))
        return out


def _plus(total: Tensor | None, term: Tensor) -> Tensor:
    return term if total is None else total + term


class _QuietTermination(logging.Filter):
    """Drop ignite's "... is terminating due to exception" lines: the CLI reports the exception
    itself, once (a full disk would otherwise print it three times)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "terminating due to exception" not in record.getMessage()


def build_engine(run: SynthesisRun, start_iteration: int = 0) -> Engine:
    """The engine of ``run``; ``start_iteration`` > 0 continues a resumed run after that iteration."""
    engine = Engine(lambda eng, _batch: run.step(eng.state.iteration))
    engine.logger.addFilter(_QuietTermination())
    if start_iteration:
        engine.load_state_dict({"iteration": start_iteration, "epoch_length": run.iterations, "max_epochs": 1})

    @engine.on(Events.ITERATION_COMPLETED)
    def _record(eng):
        metrics = eng.state.output
        run.record(eng.state.iteration, metrics)
        stops = run._call_hook("dsv_iteration_completed", iteration=eng.state.iteration, metrics=metrics)
        signalled = run.stop_signals is not None and run.stop_signals.received is not None
        if any(stops) or signalled:
            run.record(eng.state.iteration, metrics, force=True)  # the last iteration is always kept
            eng.terminate()

    if run.checkpoint_every:

        @engine.on(Events.ITERATION_COMPLETED(every=run.checkpoint_every))
        def _write(eng):
            run.flush(eng.state.iteration)

    if checkpoint.faults_enabled():  # the crash tests' switch; nothing in the loop otherwise

        @engine.on(Events.ITERATION_COMPLETED)
        def _fault(eng):
            checkpoint.fault_point("after-iteration", eng.state.iteration)

    @engine.on(Events.COMPLETED | Events.TERMINATE)
    def _final_write(eng):
        if run.committed_iteration != eng.state.iteration:
            run.flush(eng.state.iteration)

    @engine.on(Events.EXCEPTION_RAISED)
    def _keep_store_consistent(eng, exc):
        # keep every completed iteration: a step that failed before moving x changed nothing but
        # the RNG (saved as it was before that step). If x moved, the last checkpoint stands.
        done = run.completed_step
        if not run._stepped and run.committed_iteration != done:
            run.flush(done, rng=None if done == eng.state.iteration else run.rng_at_step_start())
        raise exc

    if run.progress:
        attach_progress(engine, "synthesize", lambda out: {k: out[k] for k in SHOWN_IN_PROGRESS if k in out})
    return engine
