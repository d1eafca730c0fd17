"""Built-in KKT loss terms: primal feasibility and stationarity."""

from __future__ import annotations

import contextlib
import copy
import logging

import attrs
import torch
from torch import Tensor, nn

from dsv import kkt
from dsv.kkt import modes as kkt_modes
from dsv.kkt import terms as kkt_terms
from dsv.plugins import hookimpl

log = logging.getLogger("dsv")


@attrs.define(kw_only=True)
class Primal:
    """Eq. 7: cross entropy of the misclassified candidates (hinge-like, 0 once all are right)."""

    #: the term's weight in the total
    weight: float = 1.0
    #: also evaluated on the augmented copies
    augmented: bool = True
    #: evaluated on the candidates themselves
    clean: bool = True

    def __call__(self, batch: kkt.KKTBatch) -> Tensor:
        return kkt.primal_loss(batch.logits, batch.targets, batch.alive)


@attrs.define(kw_only=True)
class CrossEntropy:
    """Cross entropy of every alive candidate against its target, right or wrong (DeepInversion's
    main loss; ``primal`` stops pulling once a candidate is classified right)."""

    #: the term's weight in the total
    weight: float = 1.0
    #: evaluated on the augmented copies
    augmented: bool = True
    # DeepInversion evaluates it on the jittered copy only: clean = false saves the clean forward
    #: evaluated on the candidates themselves
    clean: bool = True

    def __call__(self, batch: kkt.KKTBatch) -> Tensor:
        alive = batch.alive.to(batch.logits.dtype)
        return (alive * kkt.soft_cross_entropy(batch.logits, batch.targets)).sum() / alive.sum().clamp(min=1)


@attrs.define(kw_only=True)
class Boundary:
    """Keeps candidates near the decision boundary: the mean over alive candidates of
    ``relu(margin_i - margin)``, where ``margin_i`` is the target's logit minus the largest other
    logit. With ``primal`` (which pulls ``margin_i`` above 0) it holds each candidate in a band
    ``[0, margin]`` of logit margin, where a support vector lies, instead of letting it drift to
    ever more confident predictions."""

    #: the term's weight in the total
    weight: float = 1.0
    #: the largest logit margin of the target over the next class before the term pulls back
    margin: float = attrs.field(default=2.0, validator=attrs.validators.ge(0.0))
    #: also evaluated on the augmented copies
    augmented: bool = False
    #: evaluated on the candidates themselves
    clean: bool = True

    def __call__(self, batch: kkt.KKTBatch) -> Tensor:
        alive = batch.alive.to(batch.logits.dtype)
        excess = torch.relu(kkt.logit_margin(batch.logits, batch.targets) - self.margin)
        return (alive * excess).sum() / alive.sum().clamp(min=1)


@attrs.define(kw_only=True)
class Stationarity:
    """Eq. 8: distance between theta and -sum_i lambda_i grad_theta CE_i over a parameter set.

    ``params``: ``"auto"`` (default: ``"all"`` for a model without normalization layers, ``"head"``
    otherwise), ``"head"`` (the last linear layer, the part of theta that candidates can explain
    when the rest is normalized), ``"all"``, or a list of globs over parameter names. ``distance``: ``l1`` or ``l2``,
    averaged per scalar parameter. ``mode``: how the mixed derivative d/dx grad_theta is taken:
    ``exact`` (double backward), ``jvp`` (forward-mode AD in theta, exact) or
    ``finite_difference`` (input gradients at theta + h s against theta's, step ``fd_eps``
    relative to the parameters' RMS, activation gates kept); ``auto``: ``exact`` while the covered
    parameters sit in the last fifth of the forward's work (the head, the last block: the double
    backward stays short, about one forward+backward), ``jvp`` otherwise (benchmarks/kkt_step.py;
    benchmarks/stationarity_modes.py: ``finite_difference`` in float32 carries rounding noise of a
    few percent that changes with the thread count, jvp none), or ``finite_difference`` with float64
    passes for a model whose operations forward-mode AD does not cover.
    ``finite_difference`` keeps the gates of ReLU, ReLU6, Hardtanh and LeakyReLU *modules*; a
    model with other kinks (functional relu, max pooling, hardswish) gets a rougher estimate there:
    prefer ``jvp`` for it.
    """

    # defaults chosen by measurement (benchmarks/stationarity_choice.py): the head is the part of
    # theta candidates can explain; on augmented copies the term kept lambda at 0 and did nothing
    #: the term's weight in the total
    weight: float = 10.0
    #: ``l1`` or ``l2``, averaged per scalar parameter
    distance: str = attrs.field(default="l1", validator=attrs.validators.in_(kkt.DISTANCES))
    # "auto": every parameter of a model without normalization layers, else the head
    # (benchmarks/input_domain.py: all parameters took a digits MLP's DSVs from 31.5 % to 62.3 %
    # (hard labels), the ConvNets' no lower; benchmarks/stationarity_choice.py chose the head for
    # the normalized ConvNet)
    #: the parameters covered: ``auto`` (``all`` without normalization layers, else ``head``),
    #: ``head`` (the last linear layer), ``all``, or a list of globs over parameter names
    params: str | list[str] = "auto"
    #: divide by the distance at lambda = 0 (1.0: the candidates explain nothing)
    relative: bool = True
    #: also evaluated on the augmented copies
    augmented: bool = False
    # with augmented = true and clean = false (and every other loss alike) a step makes one
    # forward pass, on the augmented copy only
    #: evaluated on the candidates themselves
    clean: bool = True
    #: ``all`` head rows, or ``targets``: only the rows of the candidates' target classes (few
    #: classes of many)
    rows: str = attrs.field(default="all", validator=attrs.validators.in_(("all", "targets")))
    #: how the mixed derivative d/dx grad_theta is taken: ``exact``, ``jvp``,
    #: ``finite_difference`` or ``auto`` (see the class description)
    mode: str = attrs.field(default="auto", validator=attrs.validators.in_(("auto", *kkt.STATIONARITY_MODES)))
    #: the step of ``finite_difference``, relative to the parameters' RMS
    fd_eps: float = attrs.field(default=kkt_modes.FD_EPS, validator=attrs.validators.gt(0.0))
    #: precision of finite_difference's passes: "model" (the model's own, one-sided) or "float64"
    #: (central differences in double: no rounding noise that changes with the thread count)
    fd_precision: str = attrs.field(default="model", validator=attrs.validators.in_(("model", "float64")))
    #: candidates per extra pass of jvp / finite_difference (0: all at once): less memory, more time
    micro_batch: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    #: what each candidate's gradient in theta is taken of: ``cross_entropy`` (DeepKKT: theta =
    #: -sum lambda_i grad CE_i), ``binary`` (Haim et al. 2022, two outputs: theta = sum lambda_i
    #: grad (Phi_y - Phi_other)(x_i)) or ``multiclass`` (Buzaglo et al. 2023, one multiplier per
    #: candidate on its smallest margin Phi_y - max_{j != y} Phi_j, the constraint active at a KKT
    #: point); the margin forms use the target's argmax and mode ``exact`` (``auto`` gives it)
    margin: str = attrs.field(default="cross_entropy", validator=attrs.validators.in_(kkt_terms.STATIONARITY_MARGINS))
    #: the multipliers the term uses are ``max(lambda_i, lambda_floor)``, so no candidate switches
    #: off (Haim et al.'s ``extraction_min_lambda``, there a penalty); 0: lambda as it is
    lambda_floor: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))
    #: softplus beta replacing every ``nn.ReLU`` module in a copy of the model used by this term
    #: only (Haim et al.'s ``extraction_model_relu_alpha``: the mixed derivative of a ReLU network
    #: is zero almost everywhere in x); 0: the model as it is
    relu_smoothing: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))
    _selected: list[tuple[str, Tensor]] = attrs.field(factory=list, init=False, repr=False)
    _reference: float = attrs.field(default=0.0, init=False, repr=False)
    _model: nn.Module | None = attrs.field(default=None, init=False, repr=False)
    _gates: kkt_modes.GateTracker | None = attrs.field(default=None, init=False, repr=False)
    _auto: str | None = attrs.field(default=None, init=False, repr=False)

    def attach(self, model: nn.Module) -> None:
        if self.relu_smoothing > 0:
            model = smoothed_copy(model, self.relu_smoothing)
        self._selected = kkt.select_parameters(model, self.params)
        for _, p in self._selected:
            p.requires_grad_(True)  # needed for grad wrt theta; theta itself is never stepped
        self._reference = float(kkt.zero_multiplier_distance(self.tensors, self.distance))
        self._model = model
        self._auto = None
        if self.mode == "finite_difference" or (self.mode == "auto" and not self._only_head(model)):
            self._gates = kkt_modes.GateTracker(model)  # gates from the first forward on

    def detach(self) -> None:
        self._selected = []
        self._model = None
        self._auto = None
        if self._gates is not None:
            self._gates.remove()
            self._gates = None

    def resolved_mode(self, batch: kkt.KKTBatch) -> str:
        """The mode in use. ``auto``, decided once from the first batch's shape: ``exact`` while the
        covered parameters sit where the double backward stays short (kkt_modes.work_behind)."""
        if self.mode != "auto":
            return self.mode
        if self.margin != "cross_entropy":  # the fast modes differentiate CE only
            return "exact"
        if self._auto is None:
            if self._model is None:
                raise RuntimeError("Stationarity.attach(model) must be called before use")
            if self._only_head(self._model):  # the usual case, without a counting forward
                self._auto = "exact"
            else:
                sample = batch.inputs[:1].detach()
                with self._gates.paused() if self._gates is not None else contextlib.nullcontext():
                    behind = kkt_modes.work_behind(self._model, sample, self.tensors)
                self._auto = "exact" if behind <= kkt_modes.AUTO_EXACT_BELOW else "jvp"
        return self._auto

    def _only_head(self, model: nn.Module) -> bool:
        if not any(isinstance(m, nn.Linear) for m in model.modules()):
            return False
        head = {id(p) for p in kkt.classifier_head(model)[1].parameters()}
        return all(id(p) in head for p in self.tensors)

    def _gate_tracker(self, mode: str) -> kkt_modes.GateTracker | None:
        """finite_difference: hooks that keep each forward's activation gates, so the step can be
        one-sided from the batch's own forward (set up at attach, or on first use); none otherwise."""
        if mode != "finite_difference":
            if self._gates is not None:
                self._gates.remove()
                self._gates = None
            return None
        if self._gates is None:
            assert self._model is not None  # attach set it with the selection self.tensors checked
            self._gates = kkt_modes.GateTracker(self._model)
        return self._gates

    @property
    def tensors(self) -> list[Tensor]:
        if not self._selected:
            raise RuntimeError("Stationarity.attach(model) must be called before use")
        return [p for _, p in self._selected]

    def _scaled(self, batch: kkt.KKTBatch) -> tuple[Tensor, float, int]:
        """(the distance, over its value at lambda = 0 if relative; that reference; entries covered)."""
        params = self.tensors
        batch = self._term_batch(batch)
        if self.rows == "targets":
            rows = batch.targets.sum(dim=0) > 0
            covered = kkt.covered_parameters(params, rows)
            reference = float(kkt.zero_multiplier_distance(covered, self.distance))
        else:
            rows, covered, reference = None, params, self._reference
        scale = 1.0 / reference if self.relative and reference > 0 else 1.0
        mode = self.resolved_mode(batch)
        wide = self.fd_precision == "float64" or (self.mode == "auto" and mode == "finite_difference")

        def term(mode: str) -> Tensor:
            return kkt.stationarity_term(
                batch,
                self._selected,
                distance=self.distance,
                mode=mode,
                rows=rows,
                scale=scale,
                fd_eps=self.fd_eps,
                fd_dtype=torch.float64 if wide else None,
                gates=self._gate_tracker(mode),
                micro_batch=self.micro_batch,
                margin=self.margin,
            )

        try:
            loss = term(mode)
        except NotImplementedError as exc:  # an operation without a forward-mode derivative
            if not (self.mode == "auto" and mode == "jvp"):
                raise
            log.warning("stationarity: jvp is not available for this model (%s); finite differences in float64", exc)
            self._auto = mode = "finite_difference"
            wide = True
            loss = term(mode)
        return loss, reference, int(sum(p.numel() for p in covered))

    def _term_batch(self, batch: kkt.KKTBatch) -> kkt.KKTBatch:
        """The batch as this term sees it: multipliers floored, logits of the smoothed copy."""
        if self.lambda_floor > 0:
            batch = attrs.evolve(batch, lambdas=batch.lambdas.clamp(min=self.lambda_floor))
        if self.relu_smoothing > 0:
            assert self._model is not None  # attach made the copy
            with torch.enable_grad():  # the term differentiates the logits in theta even for a value
                batch = attrs.evolve(batch, model=self._model, logits=self._model(batch.inputs))
        return batch

    def __call__(self, batch: kkt.KKTBatch) -> Tensor:
        return self._scaled(batch)[0]

    def summary(self, batch: kkt.KKTBatch) -> dict[str, float]:
        """relative_stationarity: residual over its value with every lambda = 0 (1.0 = explains nothing)."""
        with torch.no_grad():  # the value only, whatever the mode
            loss, reference, covered = self._scaled(batch)
        residual = float(loss) * reference if self.relative and reference > 0 else float(loss)
        return {
            "relative_stationarity": residual / reference if reference > 0 else float("nan"),
            "stationarity_params": covered,
        }


def smoothed_copy(model: nn.Module, beta: float) -> nn.Module:
    """A copy of ``model`` with every ``nn.ReLU`` module replaced by ``nn.Softplus(beta)`` (the
    smoothed ReLU of Haim et al.'s extraction); the model itself is unchanged."""
    smooth = copy.deepcopy(model)
    for name, module in list(smooth.named_modules()):
        if isinstance(module, nn.ReLU):
            smooth.set_submodule(name, nn.Softplus(beta=beta))
    return smooth


@hookimpl
def dsv_register_losses(registry):
    registry.add("primal", Primal)
    registry.add("cross_entropy", CrossEntropy)
    registry.add("boundary", Boundary)
    registry.add("stationarity", Stationarity)
