"""The package's one progress display: a tqdm bar on stderr.

Used by ``ace-uq md``/``relax`` (steps), the fit's assembly of the normal equations (atoms), the
active-set selection (environments per pass) and ``ace-uq uq-report`` (structures).
"""
from __future__ import annotations

import sys

from tqdm import tqdm

#: seconds between two redraws on a terminal
TERMINAL_REDRAW_INTERVAL = 0.1
#: seconds between two redraws when stderr is a file or pipe (a log): a few lines per minute, not ten per second
LOG_REDRAW_INTERVAL = 10.0


def progress_bar(total: int | None, label: str, enabled: bool, stream=None, unit: str = "it") -> tqdm:
    """A tqdm progress bar over ``total`` ``unit``s (None: unknown total) called ``label``.

    Written to ``stream`` (default: stderr), redrawn at most every :data:`TERMINAL_REDRAW_INTERVAL` s on a
    terminal and every :data:`LOG_REDRAW_INTERVAL` s otherwise; the final state is written when the bar is
    closed (use it as a context manager). When ``enabled`` is False the bar writes nothing and its
    methods do nothing.
    """
    stream = sys.stderr if stream is None else stream
    on_terminal = bool(getattr(stream, "isatty", lambda: False)())
    return tqdm(total=total, desc=label, unit=unit, disable=not enabled, file=stream,
                mininterval=TERMINAL_REDRAW_INTERVAL if on_terminal else LOG_REDRAW_INTERVAL)
