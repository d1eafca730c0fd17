"""Supervised training of a classifier (:mod:`dsv.training.supervised`: Adam, SGD, SAM) and the
teacher-labelled distillation (:mod:`dsv.training.teacher`), registered as the built-in retrainers
by :mod:`dsv.builtin.retrainers`; the train stage uses them directly."""

from dsv.training.supervised import SAM, SGD, Adam, Normalized, SupervisedRetrainer, normalized
from dsv.training.teacher import TeacherLabelled

__all__ = ["SAM", "SGD", "Adam", "Normalized", "SupervisedRetrainer", "TeacherLabelled", "normalized"]
