"""Supervised training of a classifier (:mod:`dsv.training.supervised`: Adam, SGD, SAM), full-batch
gradient descent that stops on DeepKKT's measured premise (:mod:`dsv.training.full_batch`) and the
teacher-labelled distillation (:mod:`dsv.training.teacher`), registered as the built-in retrainers
by :mod:`dsv.builtin.retrainers`; the train stage uses them directly."""

from dsv.training.full_batch import FullBatchGD
from dsv.training.supervised import SAM, SGD, Adam, Normalized, SupervisedRetrainer, normalized
from dsv.training.teacher import TeacherLabelled

__all__ = ["SAM", "SGD", "Adam", "FullBatchGD", "Normalized", "SupervisedRetrainer", "TeacherLabelled", "normalized"]
