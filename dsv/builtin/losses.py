"""Built-in KKT loss terms: primal feasibility and stationarity."""

from __future__ import annotations

import attrs
from torch import Tensor, nn

from dsv import kkt
from dsv.hookspecs import hookimpl


@attrs.define(kw_only=True)
class Primal:
    """Eq. 7: cross entropy of the misclassified candidates (hinge-like, 0 once all are right)."""

    weight: float = 1.0
    augmented: bool = True  # also evaluated on the augmented copies

    def __call__(self, batch: kkt.KKTBatch) -> Tensor:
        return kkt.primal_loss(batch.logits, batch.targets, batch.alive)


@attrs.define(kw_only=True)
class Stationarity:
    """Eq. 8: distance between theta and -sum_i lambda_i grad_theta CE_i over a parameter set.

    ``params``: ``"head"`` (default: the last linear layer, the part of theta that candidates can
    explain), ``"all"``, or a list of globs over parameter names. ``distance``: ``l1`` or ``l2``,
    averaged per scalar parameter.
    """

    # defaults chosen by measurement (benchmarks/stationarity_choice.py): the head is the part of
    # theta candidates can explain; on augmented copies the term kept lambda at 0 and did nothing
    weight: float = 10.0
    distance: str = attrs.field(default="l1", validator=attrs.validators.in_(kkt.DISTANCES))
    params: str | list[str] = "head"
    relative: bool = True  # divide by the distance at lambda = 0: 1.0 = explains nothing
    augmented: bool = False  # also evaluated on the augmented copies
    # "targets": only the head rows of the candidates' target classes (few classes of many)
    rows: str = attrs.field(default="all", validator=attrs.validators.in_(("all", "targets")))
    _selected: list[tuple[str, Tensor]] = attrs.field(factory=list, init=False, repr=False)
    _reference: float = attrs.field(default=0.0, init=False, repr=False)

    def attach(self, model: nn.Module) -> None:
        self._selected = kkt.select_parameters(model, self.params)
        for _, p in self._selected:
            p.requires_grad_(True)  # needed for grad wrt theta; theta itself is never stepped
        self._reference = float(kkt.zero_multiplier_distance(self.tensors, self.distance))

    def detach(self) -> None:
        self._selected = []

    @property
    def tensors(self) -> list[Tensor]:
        if not self._selected:
            raise RuntimeError("Stationarity.attach(model) must be called before use")
        return [p for _, p in self._selected]

    def _distances(self, batch: kkt.KKTBatch) -> tuple[Tensor, float, list[Tensor]]:
        """(residual distance, its value at lambda = 0, the parameters it covers)."""
        params = self.tensors
        grads = kkt.lagrangian_gradient(batch.logits, batch.targets, batch.lambdas * batch.alive.to(batch.lambdas.dtype), params)
        if self.rows == "targets":
            params, grads = kkt.class_rows(params, grads, batch.targets.sum(dim=0) > 0)
            reference = float(kkt.zero_multiplier_distance(params, self.distance))
        else:
            reference = self._reference
        return kkt.stationarity_distance(params, grads, self.distance), reference, params

    def __call__(self, batch: kkt.KKTBatch) -> Tensor:
        residual, reference, _ = self._distances(batch)
        return residual / reference if self.relative and reference > 0 else residual

    def summary(self, batch: kkt.KKTBatch) -> dict[str, float]:
        """relative_stationarity: residual over its value with every lambda = 0 (1.0 = explains nothing)."""
        residual, reference, params = self._distances(batch)
        return {
            "relative_stationarity": float(residual.detach()) / reference if reference > 0 else float("nan"),
            "stationarity_params": int(sum(p.numel() for p in params)),
        }


@hookimpl
def dsv_register_losses(registry):
    registry.add("primal", Primal)
    registry.add("stationarity", Stationarity)
