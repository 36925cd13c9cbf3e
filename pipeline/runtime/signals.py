"""Stopping a run on SIGTERM or SIGINT: what a batch scheduler sends at a time limit or on
preemption, and what Ctrl-C sends.

The first signal asks the run to stop: the engine submits no new task, collects the results of
the running ones for up to ``grace`` seconds (their blocks are marked done, so a rerun does not
compute them again), then raises :class:`Stopped`; closing the engine cancels what still runs.
A second signal stops at once. Everything finished stays on disk and the rerun of the same
command resumes it. The CLI prints one line and exits ``128 + signal`` (143, 130).

Only the CLI's ``run`` and ``predict`` install the handlers (:func:`stop_on_signals`); a
program calling the Python API keeps its own signal handling.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)
DEFAULT_GRACE_S = 20.0


class Stopped(BaseException):
    """The run stopped on a signal; what was finished is kept and a rerun resumes it. A
    BaseException, like KeyboardInterrupt: no `except Exception` on the way up takes it for an error."""

    def __init__(self, signum: int, where: str = "") -> None:
        self.signum, self.where = signum, where
        super().__init__(f"stopped by {signal.Signals(signum).name}" + (f" in {where}" if where else ""))

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@dataclass
class StopRequest:
    """Process-wide: the signal that asked the run to stop (None: none) and when."""

    signum: int | None = None
    at: float = 0.0
    grace: float = DEFAULT_GRACE_S
    where: str = ""  # what was running when it came (the engine keeps it current)

    def requested(self) -> bool:
        return self.signum is not None

    def expired(self) -> bool:
        return self.signum is not None and time.monotonic() - self.at >= self.grace

    def stop(self) -> Stopped:
        assert self.signum is not None
        return Stopped(self.signum, self.where)


REQUEST = StopRequest()


def _handler(signum: int, frame: FrameType | None) -> None:
    if REQUEST.signum is not None:  # a second signal: stop now
        REQUEST.grace = 0.0
        raise REQUEST.stop()
    REQUEST.signum, REQUEST.at = signum, time.monotonic()
    logger.warning("%s received: no new tasks; the running ones have up to %.0f s to finish, then the run stops "
                   "(resumable; a second signal stops at once)", signal.Signals(signum).name, REQUEST.grace)


@contextmanager
def stop_on_signals(grace: float = DEFAULT_GRACE_S) -> Iterator[StopRequest]:
    """Handle SIGTERM and SIGINT as a request to stop (see the module docstring) while the block
    runs; the handlers in place before are restored after. In a thread other than the main one
    (where Python delivers signals) nothing is installed."""
    REQUEST.signum, REQUEST.at, REQUEST.grace, REQUEST.where = None, 0.0, grace, ""
    if threading.current_thread() is not threading.main_thread():
        yield REQUEST
        return
    before = {s: signal.signal(s, _handler) for s in SIGNALS}
    try:
        yield REQUEST
    finally:
        for s, h in before.items():
            signal.signal(s, h)
        REQUEST.signum = None


def check_stop(draining: bool = False) -> None:
    """Raise :class:`Stopped` when a signal asked to stop: at once, or with ``draining`` (results
    of running tasks still being collected) once the grace period is over."""
    if REQUEST.signum is not None and (not draining or REQUEST.expired()):
        raise REQUEST.stop()


POLL_S = 0.05  # seconds between looks at a stop request while waiting for results


def completed(pending: Any, drain: bool = True, check: Callable[[], None] | None = None) -> Iterator[Any]:
    """The futures of ``pending`` (a ``distributed.as_completed``) as they complete, looking for a
    stop request while none is ready: with ``drain``, running tasks are waited for until the
    grace period is over; without, the stop is at once. ``check`` (it raises to end the wait, e.g.
    when the cluster's workers are lost for good) is called while waiting too."""
    while True:
        if pending.has_ready():
            yield from pending.next_batch(block=False)
        elif pending.is_empty():
            return
        else:
            check_stop(draining=drain)
            if check is not None:
                check()
            time.sleep(POLL_S)
