"""Printing from a plugin while a progress bar is drawn.

dsv's progress bars (the synthesis, the training loops) are tqdm bars, drawn through ignite's
``ProgressBar``. A bare ``print`` writes into the bar's line and leaves it broken across lines;
:func:`print_line` goes through ``tqdm.write``, which clears every bar on that stream, prints
the line and draws the bars again below it. Without a bar it is a plain print."""

from __future__ import annotations

import sys
from typing import IO

from tqdm import tqdm


def print_line(text: str, file: IO[str] | None = None) -> None:
    """Print ``text`` (a line; the newline is added) above the progress bars of ``file``
    (default: standard output), the way a lifecycle hook should log."""
    tqdm.write(str(text), file=file if file is not None else sys.stdout)
