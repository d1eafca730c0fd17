"""Full-batch gradient descent as the max-margin theory needs it, stopping on the measured premise.

Gradient descent on the cross entropy of a homogeneous network (bias-free ReLU MLP) converges in
direction to a KKT point of the max-margin problem (Lyu & Li 2020; Ji & Telgarsky 2020), but
slowly: the margin grows like ``log t``. With ``normalized``, each step is taken on the *log* of
the mean loss, ``grad log L = grad L / L``: gradient descent with the step ``lr / L`` (Lyu & Li's
loss-based learning rate, Nacson et al. 2019's normalized GD), computed without underflow however
small the loss gets (float64 underflows at ``L ~ 1e-308``, which plain GD reaches long before it
converges). Every ``check_every`` epochs the premise (:func:`dsv.kkt.premise.measure_premise`) is
measured on the whole training set, and training stops once it describes a KKT point: every sample
classified right, the residual at most ``stop_residual`` and at most ``stop_off_margin`` of the
multipliers' sum on samples off the margin (complementary slackness). The residual alone is not
enough: early in training from a small initialization ``theta`` is nearly a sum of recent
gradients, so the residual dips while the margins are far from equal. The criterion is what the
theory promises, not an epoch count.

At a fixed step the normalized descent of a two-layer network turns ``theta``'s direction by about
the same angle every step (``grad log L`` scales like ``||theta||``), so the direction oscillates
around the max-margin one instead of settling; ``decay_epochs`` shrinks the step as
``lr / (1 + epoch / decay_epochs)`` (its sum still diverges, so the margin keeps growing).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, cast

import attrs
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from dsv.kkt.premise import MARGIN_FORMS, PremiseResult, measure_premise
from dsv.plugins.output import attach_progress
from dsv.training.supervised import SupervisedRetrainer

log = logging.getLogger("dsv")


def log_softplus(z: Tensor) -> Tensor:
    """``log(log(1 + exp(z)))`` without underflow: ``z`` itself where ``exp(z)`` is negligible."""
    return torch.where(z < -30, z, torch.log(F.softplus(z.clamp(min=-30))))


def log_mean_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """``log mean_i CE_i`` for any size of the losses: ``CE_i = softplus(a_i)`` with
    ``a_i = logsumexp_{j != y_i} (Phi_j - Phi_{y_i})``, so ``log CE_i = log_softplus(a_i)``."""
    own = logits.gather(1, labels[:, None])
    others = (logits - own).masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    per_sample = log_softplus(torch.logsumexp(others, dim=1))
    return torch.logsumexp(per_sample, dim=0) - math.log(len(labels))


def _check_margin(_instance: Any, _attribute: Any, value: str) -> None:
    if value not in MARGIN_FORMS:
        raise ValueError(f"expected one of {', '.join(map(repr, MARGIN_FORMS))}, got {value!r}")


@attrs.define(kw_only=True)
class FullBatchGD(SupervisedRetrainer):
    """Full-batch gradient descent on the cross entropy (every step sees the whole training set),
    optionally normalized and in float64, with a decaying step, stopping once DeepKKT's premise
    holds: residual at most ``stop_residual`` and multipliers' share off the margin at most
    ``stop_off_margin`` (measured every ``check_every`` epochs). ``history`` holds each measurement."""

    #: the most epochs (steps) trained
    epochs: int = attrs.field(default=10000, validator=attrs.validators.ge(1))
    #: unused: every step takes the whole training set
    batch_size: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    #: the step size (of the log of the loss when ``normalized``)
    lr: float = attrs.field(default=0.5, validator=attrs.validators.gt(0.0))
    #: step on the log of the mean loss (gradient descent with step lr / loss; Lyu & Li 2020)
    normalized: bool = False
    #: train in float64 (the weights are returned in the model's own precision)
    float64: bool = True
    #: measure the premise every this many epochs (0: never; then ``stop_residual`` is unused)
    check_every: int = attrs.field(default=500, validator=attrs.validators.ge(0))
    #: the step decays as ``lr / (1 + epoch / decay_epochs)`` (0: a fixed step)
    decay_epochs: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    #: stop once the premise's relative stationarity residual is at most this (0: train every epoch)
    stop_residual: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))
    #: ... and at most this share of the multipliers' sum lies on samples off the margin
    #: (complementary slackness: 0 at a KKT point; 1: not checked)
    stop_off_margin: float = attrs.field(default=0.1, validator=[attrs.validators.ge(0.0), attrs.validators.le(1.0)])
    #: the margin form of the premise: ``binary``, ``multiclass``, ``cross_entropy`` or ``auto``
    premise_margin: str = attrs.field(default="auto", validator=_check_margin)
    #: the parameters of the premise: ``all``, ``head``, or globs over names
    premise_params: str | list[str] = "all"
    history: list[dict[str, float]] = attrs.field(factory=list, init=False)

    def optimizer(self, params):
        return torch.optim.SGD(params, lr=self.lr, weight_decay=self.weight_decay)

    def fit(
        self,
        model: nn.Module,
        dataset: Dataset,
        *,
        device="cpu",
        seed: int = 0,
        progress: bool = True,
        epochs: int | None = None,
        stop: Callable[[nn.Module, int], bool] | None = None,
        **extra,
    ):
        """Train ``model`` on all of ``dataset`` (already normalized) at once; returns it in eval
        mode, in its own precision. ``stop(model, epoch)`` (the train stage's ``until``) ends
        training as well, checked after every epoch."""
        torch.manual_seed(seed)
        images, labels = _whole(dataset)
        dtype = next(model.parameters()).dtype
        work_dtype = torch.float64 if self.float64 else dtype
        model.to(device=device, dtype=work_dtype).train()
        x, y = images.to(device=device, dtype=work_dtype), labels.to(device)
        self.history.clear()
        started = time.perf_counter()
        trainer = self.trainer(model, device)
        trainer.logger.setLevel(logging.WARNING)
        if progress:
            attach_progress(trainer, "train", lambda loss: {"loss": loss})

        @trainer.on(Events.EPOCH_COMPLETED)
        def _check(engine: Engine) -> None:
            epoch = engine.state.epoch
            loss = float(cast(float, engine.state.output))
            done = False
            model.eval()
            if self.check_every and epoch % self.check_every == 0:
                measured = measure_premise(model, x, y, params=self.premise_params, margin=self.premise_margin)
                self.history.append(
                    {
                        "epoch": epoch,
                        "loss": loss,
                        "residual": measured.residual,
                        "on_margin": measured.on_margin,
                        "nonzero_lambda": measured.nonzero_lambda,
                        "lambda_off_margin": measured.lambda_off_margin,
                        "misclassified": measured.misclassified,
                        "lr": self.step_size(epoch),
                        "seconds": time.perf_counter() - started,
                    }
                )
                log.info(
                    "epoch %d: premise residual %.4f, %d on the margin, %.3f of lambda off it, loss %.3g",
                    epoch,
                    measured.residual,
                    measured.on_margin,
                    measured.lambda_off_margin,
                    loss,
                )
                done = self.holds(measured)
            if stop is not None:
                done = stop(model, epoch) or done
            model.train()
            if done:
                engine.terminate()

        trainer.run([(x, y)], max_epochs=epochs or self.epochs)
        return model.to(dtype=dtype).eval()

    def holds(self, measured: PremiseResult) -> bool:
        """Whether a measurement describes a KKT point to the stopping tolerances: every sample
        classified right, the residual small and the multipliers on the margin."""
        return (
            measured.misclassified == 0
            and measured.residual <= self.stop_residual
            and measured.lambda_off_margin <= self.stop_off_margin
        )

    def step_size(self, epoch: int) -> float:
        """The step of epoch ``epoch`` (counted from 1): ``lr``, decayed when ``decay_epochs``."""
        return self.lr / (1 + (epoch - 1) / self.decay_epochs) if self.decay_epochs else self.lr

    def trainer(self, model: nn.Module, device) -> Engine:
        """One full-batch step per epoch; its output is the mean cross entropy before the step."""
        optimizer = self.optimizer(model.parameters())

        def step(engine, batch):
            x, y = batch
            for group in optimizer.param_groups:
                group["lr"] = self.step_size(engine.state.epoch)
            optimizer.zero_grad()
            log_loss = log_mean_cross_entropy(model(x), y)
            (log_loss if self.normalized else log_loss.exp()).backward()
            optimizer.step()
            return float(log_loss.detach().exp())

        return Engine(step)


def _whole(dataset: Dataset) -> tuple[Tensor, Tensor]:
    """All of ``dataset`` as (images, labels) tensors."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[0], dataset.tensors[1]
    items = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
    return torch.stack([x for x, _ in items]), torch.as_tensor([int(y) for _, y in items])
