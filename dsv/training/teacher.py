"""Data-free distillation: a student trained on the frozen base model's softmax (the teacher's)."""

from __future__ import annotations

import attrs
import torch
from ignite.engine import Engine
from torch import nn
from torch.utils.data import Dataset

from dsv.training.supervised import Adam


@attrs.define(kw_only=True)
class TeacherLabelled(Adam):
    """Data-free distillation on a small image set: the student learns the frozen base model's
    (the teacher's) softmax on each training batch, not the images' hard labels. Each batch is
    noised (Gaussian, ``noise`` in model input units) and augmented (the retrain table's
    augmentations) before both models see it, so the teacher labels the very inputs the student
    trains on. ``copies``: noised copies of every image in each batch (more distinct inputs per step
    from a set of 10 images). ``mixup``: after augmentation, each input is mixed with another of the
    batch, ``m x_i + (1 - m) x_j`` with ``m ~ Beta(mixup, mixup)`` per input (0: off), and the
    teacher labels the mixture: inputs between the images, where the teacher's boundaries lie. The
    loss is the soft cross entropy (the KL divergence up to a constant)."""

    #: the standard deviation of the Gaussian noise added to each batch, in model input units
    noise: float = attrs.field(default=0.1, validator=attrs.validators.ge(0.0))
    #: noised copies of every image in each batch
    copies: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    #: the Beta(mixup, mixup) parameter of mixing each input with another of the batch (0: off)
    mixup: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))
    #: the softmax temperature of both teacher and student
    temperature: float = attrs.field(default=1.0, validator=attrs.validators.gt(0.0))
    needs_teacher = True  # the retrain stage passes teacher= (the base model)

    def fit(self, model: nn.Module, dataset: Dataset, *, device="cpu", seed: int = 0, progress: bool = True, **extra):
        if extra.get("teacher") is None:
            raise ValueError("the teacher-labelled retrainer needs the base model (teacher=)")
        return super().fit(model, dataset, device=device, seed=seed, progress=progress, **extra)

    def trainer(self, model: nn.Module, device, teacher: nn.Module | None = None) -> Engine:
        optimizer = self.optimizer(model.parameters())
        assert teacher is not None  # fit() checked it
        teacher = teacher.to(device).eval()
        # a model behind training-time augmentations (dsv.evaluation.retraining.Augmented) exposes
        # augment(x) and the bare model: augment once, and show both networks the same batch
        augment = getattr(model, "augment", None)
        student = model.model if augment is not None else model
        mixing = torch.distributions.Beta(self.mixup, self.mixup) if self.mixup else None

        def step(_engine, batch):
            x = batch[0].to(device).repeat(self.copies, 1, 1, 1)
            if self.noise:
                x = x + self.noise * torch.randn_like(x)
            if augment is not None:
                x = augment(x)
            if mixing is not None:
                m = mixing.sample((x.shape[0],)).to(x)
                m = m.view(-1, *([1] * (x.dim() - 1)))
                x = m * x + (1 - m) * x[torch.randperm(x.shape[0], device=x.device)]
            with torch.no_grad():
                soft = (teacher(x) / self.temperature).softmax(dim=1)
            optimizer.zero_grad()
            loss = -(soft * (student(x) / self.temperature).log_softmax(dim=1)).sum(dim=1).mean()
            loss.backward()
            optimizer.step()
            return float(loss.detach())

        return Engine(step)
