"""Supervised training driven by ignite: Adam, SGD and SAM (sharpness-aware Adam) on a data set
in model input space. The train stage fits the base model with these, the retrain stage a fresh one."""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs
import torch
from ignite.engine import Engine, Events, create_supervised_trainer
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from dsv.plugins import normalize
from dsv.plugins.output import attach_progress


def normalized(base: Dataset, mean, std) -> Dataset:
    """``base`` (images in [0, 1]) in model input space: normalized once when it is a tensor data
    set (one pass instead of one per sample and epoch), else wrapped in :class:`Normalized`."""
    if isinstance(base, TensorDataset):
        images, labels = base.tensors
        return TensorDataset(normalize(images, tuple(mean), tuple(std)), labels)
    return Normalized(base, mean, std)


class Normalized(Dataset):
    """Wrap a data set of images in [0, 1] with the model's input normalization."""

    def __init__(self, base: Dataset, mean, std):
        self.base = base
        self.mean = tuple(mean)
        self.std = tuple(std)

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return normalize(x[None], self.mean, self.std)[0], y


@attrs.define(kw_only=True)
class SupervisedRetrainer:
    #: passes over the training set
    epochs: int = attrs.field(default=2, validator=attrs.validators.ge(1))
    #: images per step
    batch_size: int = attrs.field(default=256, validator=attrs.validators.ge(1))
    #: the learning rate
    lr: float = attrs.field(default=1e-3, validator=attrs.validators.gt(0.0))
    #: L2 weight decay
    weight_decay: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))

    def optimizer(self, params):
        raise NotImplementedError

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
        """Train ``model`` on ``dataset`` (already normalized); returns the model in eval mode.
        ``epochs`` overrides the table's; ``stop(model, epoch)``, called after every epoch with
        the model in eval mode, ends training early when it returns True (training until a
        criterion). ``extra`` goes to :meth:`trainer` (the teacher of the teacher-labelled retrainer)."""
        torch.manual_seed(seed)
        loader = DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
        )
        model.to(device).train()
        trainer = self.trainer(model, device, **extra)
        trainer.logger.setLevel(logging.WARNING)  # one line per epoch is noise when epochs are many tiny ones
        if progress:
            attach_progress(trainer, "train", lambda loss: {"loss": loss})
        if stop is not None:

            @trainer.on(Events.EPOCH_COMPLETED)
            def _check(engine: Engine) -> None:
                model.eval()
                done = stop(model, engine.state.epoch)
                model.train()
                if done:
                    engine.terminate()

        trainer.run(loader, max_epochs=epochs or self.epochs)
        return model.eval()

    def trainer(self, model: nn.Module, device) -> Engine:
        """The ignite engine of one training step per batch."""
        return create_supervised_trainer(
            model, self.optimizer(model.parameters()), nn.CrossEntropyLoss(), device=device
        )


@attrs.define(kw_only=True)
class Adam(SupervisedRetrainer):
    """Adam (the paper's choice: lr 1e-3, weight decay 5e-3 for the base model)."""

    def optimizer(self, params):
        return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)


@attrs.define(kw_only=True)
class SGD(SupervisedRetrainer):
    """SGD with momentum."""

    #: the learning rate
    lr: float = 0.05
    #: SGD's momentum
    momentum: float = 0.9

    def optimizer(self, params):
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)


@attrs.define(kw_only=True)
class SAM(Adam):
    """Sharpness-aware minimization (Foret et al. 2021) around Adam: each step takes the gradient
    at the worst point within ``rho`` (L2) of the weights, then steps the weights with it. The
    arXiv version of the paper retrains on DSVs with SAM: few images, flat minima generalize."""

    #: the radius (L2) of the neighbourhood whose worst point gives the gradient
    rho: float = attrs.field(default=0.05, validator=attrs.validators.gt(0.0))

    def trainer(self, model: nn.Module, device) -> Engine:
        optimizer = self.optimizer(model.parameters())
        params = [p for p in model.parameters() if p.requires_grad]
        loss_fn = nn.CrossEntropyLoss()

        def step(_engine, batch):
            x, y = (t.to(device) for t in batch)
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            with torch.no_grad():
                norm = torch.sqrt(
                    sum((p.grad.pow(2).sum() for p in params if p.grad is not None), torch.zeros((), device=x.device))
                )
                shifts = [p.grad * (self.rho / (norm + 1e-12)) if p.grad is not None else None for p in params]
                for p, e in zip(params, shifts):
                    if e is not None:
                        p.add_(e)
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            with torch.no_grad():  # back to the weights, stepped with the gradient of the shifted point
                for p, e in zip(params, shifts):
                    if e is not None:
                        p.sub_(e)
            optimizer.step()
            return float(loss.detach())

        return Engine(step)
