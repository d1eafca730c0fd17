"""Built-in retrainers: supervised training with Adam, SGD or SAM (sharpness-aware Adam), full-batch
gradient descent stopping on DeepKKT's measured premise, and the teacher-labelled distillation.
They live in :mod:`dsv.training` (the train stage fits the base model with them); this module
registers them, as a third party registers its own."""

from __future__ import annotations

from dsv.plugins import hookimpl
from dsv.training import SAM, SGD, Adam, FullBatchGD, Normalized, SupervisedRetrainer, TeacherLabelled, normalized

# the names this module offered before the retrainers moved to dsv.training
__all__ = [
    "SAM",
    "SGD",
    "Adam",
    "Normalized",
    "SupervisedRetrainer",
    "TeacherLabelled",
    "dsv_register_retrainers",
    "normalized",
]


@hookimpl
def dsv_register_retrainers(registry):
    registry.add("adam", Adam)
    registry.add("sgd", SGD)
    registry.add("sam", SAM)
    registry.add("teacher", TeacherLabelled)
    registry.add("full_batch_gd", FullBatchGD)
