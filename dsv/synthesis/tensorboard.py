"""TensorBoard logging of a synthesis, through ignite's ``TensorboardLogger``.

Optional: ``pip install dsv[tensorboard]``. Scalars (tag ``synthesis/<name>``): every loss term as
the engine reports it (``primal``, ``stationarity``, ``tv``, ``primal_aug``, ...), ``total``,
``entropy``, ``accuracy``, ``alive`` and ``lambda_mean`` (over alive candidates); an image grid of
the candidates (tag ``candidates``) every ``images_every`` iterations and at the end. The global step
is the engine's iteration, so a resumed run continues its curves where they stopped.
"""

from __future__ import annotations

from typing import Any

import torch

from dsv.errors import DsvError
from dsv.store.export import to_images

MISSING = (
    "TensorBoard logging (logging.tensorboard) needs the tensorboard package: "
    "pip install 'dsv[tensorboard]' (or pip install tensorboard)"
)


def require() -> None:
    """Raise a DsvError saying what to install when neither SummaryWriter ignite can use exists."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            raise DsvError(MISSING) from None


def candidate_grid(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Model-space candidates (N, C, H, W) -> one (C, H', W') image in [0, 1], 10 per row."""
    from torchvision.utils import make_grid

    images = torch.from_numpy(to_images(x.detach().float().cpu().numpy(), mean, std)).permute(0, 3, 1, 2)
    return make_grid(images, nrow=min(len(images), 10), padding=1, pad_value=0.5)


def attach(engine, run, config, mean, std) -> Any:
    """Attach a TensorboardLogger writing to ``config.tensorboard`` (a :class:`dsv.config.LoggingConfig`)
    to ``engine``, the engine of ``run``; returns the logger (close it after the run)."""
    require()
    from ignite.engine import Events
    from ignite.handlers.tensorboard_logger import TensorboardLogger

    logger = TensorboardLogger(log_dir=config.tensorboard)

    def scalars(output: dict[str, float]) -> dict[str, float]:
        alive = run.alive
        lam = run.lambdas.detach()[alive]
        return {**output, "lambda_mean": float(lam.mean()) if alive.any() else 0.0}

    logger.attach_output_handler(
        engine,
        event_name=Events.ITERATION_COMPLETED(every=config.scalars_every),
        tag="synthesis",
        output_transform=scalars,
    )

    if config.images_every:
        logged: list[int] = []

        def images(eng) -> None:
            step = eng.state.iteration
            if not logged or logged[-1] != step:  # the last iteration may be both "every" and the end
                logger.writer.add_image("candidates", candidate_grid(run.x, mean, std), step)
                logged.append(step)

        every = Events.ITERATION_COMPLETED(every=config.images_every)
        engine.add_event_handler(every | Events.COMPLETED | Events.TERMINATE, images)
        engine.add_event_handler(Events.STARTED, lambda eng: images(eng) if eng.state.iteration == 0 else None)
    return logger
