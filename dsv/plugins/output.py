"""Printing from a plugin while a progress bar is drawn, and the progress of dsv's long loops.

dsv's progress bars (the synthesis, the training loops, lambda fits) are tqdm bars, one per stage.
A bare ``print`` writes into the bar's line and leaves it broken across lines; :func:`print_line`
goes through ``tqdm.write``, which clears every bar on that stream, prints the line and draws the
bars again below it. Without a bar it is a plain print.

Where standard error is not a terminal (a log file, CI), a bar would be a wall of carriage
returns: :func:`attach_progress` and :func:`progress_iter` then print one plain line every
:data:`LOG_EVERY_PERCENT` percent instead."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")

#: in a log (standard error not a terminal), one progress line per this many percent of the work
LOG_EVERY_PERCENT = 10


def print_line(text: str, file: IO[str] | None = None) -> None:
    """Print ``text`` (a line; the newline is added) above the progress bars of ``file``
    (default: standard output), the way a lifecycle hook should log."""
    tqdm.write(str(text), file=file if file is not None else sys.stdout)


def is_terminal(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (default: standard error, where the bars go) is a terminal."""
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _postfix(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


class LogProgress:
    """Progress as plain lines: ``desc: 30/300 (10%) in 12 s, loss=0.5``, one each time another
    ``every`` percent of ``total`` is done, and one at the end. ``start`` is work already done
    (a resumed run), from where the count goes on."""

    def __init__(self, desc: str, total: int, *, start: int = 0, every: int = LOG_EVERY_PERCENT, stream=None):
        self.desc, self.total, self.every = desc, max(int(total), 1), max(int(every), 1)
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.perf_counter()
        self.next_percent = self._after(start)

    def _after(self, done: int) -> int:
        return (done * 100 // self.total) // self.every * self.every + self.every

    def update(self, done: int, values: dict[str, Any] | None = None) -> None:
        """``done`` units of the total are complete; print a line when a new step of ``every``
        percent is reached (or the end)."""
        percent = done * 100 // self.total
        if percent < self.next_percent and done < self.total:
            return
        self.next_percent = self._after(done)
        seconds = time.perf_counter() - self.started
        extra = f", {_postfix(values)}" if values else ""
        print(f"{self.desc}: {done}/{self.total} ({percent}%) in {seconds:.0f} s{extra}", file=self.stream, flush=True)


def progress_iter(iterable: Iterable[T], *, total: int, desc: str) -> Iterator[T]:
    """``iterable`` with one progress bar (a terminal) or a line every few percent (a log)."""
    if is_terminal():
        yield from tqdm(iterable, total=total, desc=desc)
        return
    log = LogProgress(desc, total)
    for done, item in enumerate(iterable, start=1):
        yield item
        log.update(done)


def attach_progress(engine: Any, desc: str, output_transform: Callable[[Any], dict[str, Any]] | None = None) -> None:
    """One progress display for the whole run of an ignite ``engine`` (all its epochs): a tqdm
    bar on a terminal, plain lines every few percent in a log. ``output_transform`` maps the
    step's output to the values shown beside the count."""
    from ignite.engine import Events

    state: dict[str, Any] = {}

    def values(eng) -> dict[str, Any]:
        if output_transform is None or eng.state.output is None:
            return {}
        out = output_transform(eng.state.output)
        return {k: float(v) if hasattr(v, "item") else v for k, v in out.items()}

    @engine.on(Events.STARTED)
    def _open(eng) -> None:
        total = eng.state.epoch_length * eng.state.max_epochs
        if is_terminal():
            state["bar"] = tqdm(total=total, initial=eng.state.iteration, desc=desc, leave=True)
        else:
            state["log"] = LogProgress(desc, total, start=eng.state.iteration)

    @engine.on(Events.ITERATION_COMPLETED)
    def _step(eng) -> None:
        if "bar" in state:
            state["bar"].update(eng.state.iteration - state["bar"].n)
            shown = values(eng)
            if shown:
                state["bar"].set_postfix_str(_postfix(shown), refresh=False)
        else:
            state["log"].update(eng.state.iteration, values(eng))

    # not on EXCEPTION_RAISED: a handler there makes ignite swallow the exception
    @engine.on(Events.COMPLETED | Events.TERMINATE)
    def _close(eng) -> None:
        bar = state.pop("bar", None)
        if bar is not None:
            bar.close()
