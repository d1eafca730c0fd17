"""Built-in retrainers: plain supervised training with Adam or SGD, driven by ignite."""

from __future__ import annotations

import attrs
import torch
from ignite.engine import create_supervised_trainer
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dsv.hookspecs import hookimpl


class Normalized(Dataset):
    """Wrap a data set of images in [0, 1] with the model's input normalization."""

    def __init__(self, base: Dataset, mean, std):
        self.base = base
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return (x - self.mean) / self.std, y


@attrs.define(kw_only=True)
class SupervisedRetrainer:
    epochs: int = 2
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0

    def optimizer(self, params):
        raise NotImplementedError

    def fit(self, model: nn.Module, dataset: Dataset, *, device="cpu", seed: int = 0, progress: bool = True):
        """Train ``model`` on ``dataset`` (already normalized); returns the model in eval mode."""
        torch.manual_seed(seed)
        loader = DataLoader(
            dataset, batch_size=self.batch_size, shuffle=True,
            generator=torch.Generator().manual_seed(seed),
        )
        model.to(device).train()
        trainer = create_supervised_trainer(model, self.optimizer(model.parameters()), nn.CrossEntropyLoss(), device=device)
        if progress:
            from ignite.handlers import ProgressBar

            ProgressBar(persist=True, desc="train").attach(trainer, output_transform=lambda loss: {"loss": loss})
        trainer.run(loader, max_epochs=self.epochs)
        return model.eval()


@attrs.define(kw_only=True)
class Adam(SupervisedRetrainer):
    """Adam (the paper's choice: lr 1e-3, weight decay 5e-3 for the base model)."""

    def optimizer(self, params):
        return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)


@attrs.define(kw_only=True)
class SGD(SupervisedRetrainer):
    """SGD with momentum."""

    lr: float = 0.05
    momentum: float = 0.9

    def optimizer(self, params):
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)


@hookimpl
def dsv_register_retrainers(registry):
    registry.add("adam", Adam)
    registry.add("sgd", SGD)
