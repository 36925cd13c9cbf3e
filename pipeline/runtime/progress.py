"""Progress a person reads in a log: a line every ``every`` seconds and one at the end, for SLURM
logs, redirected output and ``-q`` (a terminal gets tqdm's bar instead)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

logger = logging.getLogger("pipeline.progress")  # the name progress lines carry in logs (kept when the module moved)

EVERY_S = 30.0

Listener = Callable[[str, int, int], None]
_listeners = threading.local()


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Call ``listener(desc, done, total)`` at every progress step of the runs this thread makes
    while the context is open (a viewer's progress bar). An exception the listener raises stops
    the run there (a Cancel button)."""
    stack: list[Listener] = getattr(_listeners, "stack", [])
    _listeners.stack = [*stack, listener]
    try:
        yield
    finally:
        _listeners.stack = stack


def _tell(desc: str, done: int, total: int) -> None:
    for listener in getattr(_listeners, "stack", ()):
        listener(desc, done, total)


def progress_line(desc: str, done: int, total: int, elapsed: float, unit: str = "task", item_voxels: int = 0) -> str:
    """``fragments: 120/1000 blocks (12%), 3.40 blocks/s, 22.3 Mvox/s, 4.3 min left``."""
    rate = done / elapsed if elapsed > 0 else 0.0
    left = f", {(total - done) / rate / 60:.1f} min left" if rate > 0 and done < total else ""
    pct = 100 * done / total if total else 100.0
    mvox = f", {rate * item_voxels / 1e6:.1f} Mvox/s" if item_voxels else ""
    return f"{desc}: {done}/{total} {unit}s ({pct:.0f}%), {rate:.2f} {unit}s/s{mvox}{left}"


class ProgressLog:
    """A tqdm-like ``update``/``close`` that logs :func:`progress_line` at most every ``every`` s."""

    def __init__(self, total: int, desc: str, every: float = EVERY_S,
                 clock: Callable[[], float] = time.monotonic, unit: str = "task", item_voxels: int = 0) -> None:
        self.total, self.desc, self.every, self.clock = total, desc, every, clock
        self.unit, self.item_voxels = unit, item_voxels
        self.done = 0
        self.start = self.last = clock()
        self.logged = -1
        _tell(desc, 0, total)

    def update(self, n: int = 1) -> None:
        self.done += n
        _tell(self.desc, self.done, self.total)
        now = self.clock()
        if now - self.last >= self.every:
            self._log(now)

    def close(self) -> None:
        """The final line, when everything finished (an error says why it stopped instead)."""
        if self.total and self.done >= self.total and self.logged != self.done:
            self._log(self.clock())

    def _log(self, now: float) -> None:
        self.last, self.logged = now, self.done
        logger.info(progress_line(self.desc, self.done, self.total, now - self.start, self.unit, self.item_voxels))
