"""The DeepKKT terms as plain functions on tensors (:mod:`dsv.kkt.terms`), the ways to take the
stationarity term's mixed derivative (:mod:`dsv.kkt.modes`), and the multiplier fit of real
samples used for coreset selection (:mod:`dsv.kkt.selection`)."""

from dsv.kkt import modes
from dsv.kkt.terms import (
    DISTANCES,
    STATIONARITY_MODES,
    KKTBatch,
    class_rows,
    classifier_head,
    covered_parameters,
    has_normalization,
    lagrangian_gradient,
    misclassified,
    newly_infeasible,
    norm_loss,
    prediction_entropy,
    primal_loss,
    range_excess,
    select_parameters,
    soft_cross_entropy,
    stationarity_distance,
    stationarity_loss,
    stationarity_term,
    total_variation,
    zero_multiplier_distance,
)

__all__ = [
    "modes",
    "DISTANCES",
    "KKTBatch",
    "STATIONARITY_MODES",
    "class_rows",
    "classifier_head",
    "covered_parameters",
    "has_normalization",
    "lagrangian_gradient",
    "misclassified",
    "newly_infeasible",
    "norm_loss",
    "prediction_entropy",
    "primal_loss",
    "range_excess",
    "select_parameters",
    "soft_cross_entropy",
    "stationarity_distance",
    "stationarity_loss",
    "stationarity_term",
    "total_variation",
    "zero_multiplier_distance",
]
