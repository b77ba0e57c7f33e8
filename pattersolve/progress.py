"""Progress of long work, with an estimate of the time left.

>>> with task("refinement", total=3, unit="cycles") as advance:
...     for _ in range(3):
...         advance()

On a terminal a progress bar (tqdm) appears once the work has taken more than
:data:`~pattersolve.settings.PROGRESS_DELAY` seconds; where stderr is a file or a pipe (a
log), one line every :data:`~pattersolve.settings.PROGRESS_EVERY` seconds says how far the
work is and about how long it has left. Nothing is shown when the ``pattersolve`` logger is
quieter than INFO (the command's ``--quiet``), and nothing here changes a result or the JSON.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from . import settings

log = logging.getLogger("pattersolve")


class _LogLines:
    """Progress as occasional log lines (for logs and pipes)."""

    def __init__(self, what: str, total: int, unit: str) -> None:
        self.what, self.total, self.unit = what, max(total, 1), unit
        self.done = 0
        self.t0 = self.last = time.monotonic()

    def __call__(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if (now - self.last < settings.PROGRESS_EVERY
                or now - self.t0 < settings.PROGRESS_DELAY):
            return
        self.last = now
        frac = min(self.done / self.total, 1.0)
        left = (now - self.t0) * (1 - frac) / frac if frac > 0 else float("nan")
        log.info("%s: %3.0f %% (%d of %d %s), about %s left", self.what, 100 * frac,
                 self.done, self.total, self.unit, _duration(left))

    def close(self) -> None:
        """Nothing to close."""


def _duration(seconds: float) -> str:
    if seconds != seconds:  # nan
        return "an unknown time"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@contextmanager
def task(what: str, total: int, unit: str = "steps") -> Iterator[Callable[..., None]]:
    """Report progress of ``total`` steps of ``what``; yields ``advance(n=1)``."""
    if not log.isEnabledFor(logging.INFO):
        yield lambda n=1: None
        return
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, desc=what, unit=f" {unit}", delay=settings.PROGRESS_DELAY,
                   file=sys.stderr, leave=False, dynamic_ncols=True)
        try:
            yield bar.update
        finally:
            bar.close()
        return
    lines = _LogLines(what, total, unit)
    yield lines
