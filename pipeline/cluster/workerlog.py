"""Quiet shutdowns in workers' logs: a Dask preload (``--preload pipeline.cluster.workerlog`` and
``--preload-nanny pipeline.cluster.workerlog``) that every job-queue worker loads, and a LocalCluster's
workers too (``preload``).

A worker that closes on purpose (its lifetime reached before the job's walltime, or its job
cancelled when the run ends) makes distributed log errors with tracebacks about the connections it
is closing ("Invalid Worker.status transition", "ConnectionPool is closed", "Worker process died
unexpectedly", SSL EOF from tornado; distributed 2026.8). They describe nothing wrong, yet a person
reading a SLURM log sees tracebacks. Once this process has started to close (its ``close`` was
called, or it logged that it is closing), later ERROR
records, and records carrying a traceback, are written as one line at INFO level (or their own,
if lower) without the traceback, marked ``(during shutdown)``. Records before a shutdown are
untouched, except one: a worker whose scheduler is gone (the run's client was killed, a driver job
ended) logs "Failed to communicate with scheduler during heartbeat" with a traceback before it
closes; that record becomes one WARNING line naming the error.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

SHUTDOWN_MARKS = ("Closing worker gracefully", "Stopping worker", "Closing Nanny", "worker-lifetime-reached",
                  "Reason: signal-")
QUIET_LOGGERS = ("distributed", "tornado")
LOST_SCHEDULER = ("Failed to communicate with scheduler during heartbeat",)  # the scheduler is gone


class ShutdownNoise(logging.Filter):
    """Demotes ERROR records to one INFO line once the process has logged a shutdown mark."""

    def __init__(self) -> None:
        super().__init__()
        self.closing = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.closing and record.exc_info and record.getMessage().startswith(LOST_SCHEDULER):
            error = record.exc_info[1]
            record.msg, record.args = f"{record.getMessage()} ({type(error).__name__}: {error})", None
            record.exc_info, record.exc_text, record.stack_info = None, None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            return True
        if not self.closing and record.levelno < logging.ERROR:
            message = record.getMessage()
            self.closing = any(mark in message for mark in SHUTDOWN_MARKS)
            return True
        if self.closing and (record.levelno >= logging.ERROR or record.exc_info or record.stack_info):
            first = record.getMessage().splitlines()[0] if record.getMessage() else ""
            record.msg, record.args = f"{first} (during shutdown)", None
            record.exc_info, record.exc_text, record.stack_info = None, None, None
            record.levelno, record.levelname = min(record.levelno, logging.INFO), logging.getLevelName(
                min(record.levelno, logging.INFO))
        return True


def install(handlers: list[logging.Handler] | None = None) -> ShutdownNoise:
    """Attach one :class:`ShutdownNoise` to ``handlers``, by default those of the loggers distributed
    and tornado write through (a handler filter sees the records of every child logger)."""
    noise = ShutdownNoise()
    if handlers is None:
        handlers = [h for name in (None, *QUIET_LOGGERS) for h in logging.getLogger(name).handlers]
    for handler in handlers:
        if not any(isinstance(f, ShutdownNoise) for f in handler.filters):
            handler.addFilter(noise)
    return noise


def mark_closing(server: Any, noise: ShutdownNoise) -> None:
    """Set ``noise.closing`` as soon as ``server`` (a Worker or Nanny) starts to close, whether or
    not its INFO lines are logged (``DASK_LOGGING`` may hide them)."""
    for name in ("close", "close_gracefully"):
        method = getattr(server, name, None)
        if method is None or not inspect.iscoroutinefunction(method):
            continue

        async def closing(*args: Any, _method: Any = method, **kwargs: Any) -> Any:
            noise.closing = True
            return await _method(*args, **kwargs)

        setattr(server, name, closing)


def dask_setup(server: Any = None) -> None:
    """Called by the worker or nanny loading this preload, with itself."""
    noise = install()
    if server is not None:
        mark_closing(server, noise)
