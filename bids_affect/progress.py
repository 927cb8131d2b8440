"""Progress of long work: a bar on a terminal, periodic log lines in batch jobs.

Long loops (CNN epochs, permutations, occlusion windows, UMAP) report through
:class:`Progress`. When stderr is a terminal it draws a tqdm bar; otherwise
(SLURM, docker logs, CI) it writes a log line at the start, every
``interval`` seconds, and at the end. Never both.

Examples
--------
>>> with Progress(total=3, desc="permutations", interval=0) as progress:
...     for _ in range(3):
...         progress.update()
>>> list(track(range(2), desc="runs"))
[0, 1]
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

LOGGER = logging.getLogger("bids_affect.progress")

#: Log level of progress lines and milestones: above INFO, so that batch jobs show them
#: without ``-v`` (fMRIPrep's "IMPORTANT" level).
IMPORTANT = 25
logging.addLevelName(IMPORTANT, "IMPORTANT")

T = TypeVar("T")

_CONTEXT: ContextVar[tuple[str, ...]] = ContextVar("bids_affect_progress", default=())


@contextmanager
def context(label: str) -> Iterator[None]:
    """Name what is being done (``sub-01 decode_ridge``, ``fold run-2``) in progress lines.

    Contexts nest; parallel jobs on one terminal or log thus tell their lines apart.

    Examples
    --------
    >>> with context("sub-01"), context("fold run-2"):
    ...     Progress(3, desc="CNN epochs").desc
    'sub-01 · fold run-2 · CNN epochs'
    """
    token = _CONTEXT.set((*_CONTEXT.get(), str(label)))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def stderr_is_terminal() -> bool:
    """Whether progress should draw a bar (stderr is an interactive terminal)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """Count finished units of work and report them.

    Parameters
    ----------
    total : int
        Units of work expected.
    desc : str
        What is counted ("permutations", "epochs"...).
    interval : float
        Seconds between log lines when stderr is not a terminal.
    bar : bool, optional
        Force the bar (True) or log lines (False); default: bar on a terminal.
    logger : logging.Logger, optional
        Where log lines go.
    """

    def __init__(self, total: int, desc: str = "", interval: float = 30.0,
                 bar: bool | None = None, logger: logging.Logger | None = None):
        self.total = int(total)
        self.desc = " · ".join((*_CONTEXT.get(), desc) if desc else _CONTEXT.get())
        self.interval = float(interval)
        self.use_bar = stderr_is_terminal() if bar is None else bool(bar)
        self.logger = logger or LOGGER
        self.done = 0
        self._bar = None
        self._start = self._last = 0.0

    def __enter__(self) -> Progress:
        self._start = self._last = time.monotonic()
        if self.use_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=self.desc, file=sys.stderr, leave=False)
        else:
            self.logger.log(IMPORTANT, "%s: 0/%d", self.desc, self.total)
        return self

    def update(self, n: int = 1, **status: object) -> None:
        """Mark ``n`` more units done; ``status`` (e.g. loss=0.3) is shown with them."""
        self.done += n
        if self._bar is not None:
            if status:
                self._bar.set_postfix(status, refresh=False)
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.interval and self.done < self.total:
            self._last = now
            self.logger.log(IMPORTANT, "%s: %d/%d (%.0f s)%s", self.desc, self.done, self.total,
                             now - self._start, _format_status(status))

    def __exit__(self, *exc_info) -> None:
        if self._bar is not None:
            self._bar.close()
        elif exc_info[0] is None:
            self.logger.log(IMPORTANT, "%s: %d/%d done in %.1f s", self.desc, self.done,
                            self.total, time.monotonic() - self._start)


def _format_status(status: dict) -> str:
    return "".join(f", {key}={value:.4g}" if isinstance(value, float) else f", {key}={value}"
                   for key, value in status.items())


def track(iterable: Iterable[T], total: int | None = None, desc: str = "",
          interval: float = 30.0) -> Iterator[T]:
    """Iterate over ``iterable`` while reporting progress (see :class:`Progress`)."""
    if total is None:
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(total, desc=desc, interval=interval) as progress:
        for item in iterable:
            yield item
            progress.update()
