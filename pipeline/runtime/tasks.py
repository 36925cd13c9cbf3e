"""What runs as a task and comes back: a value kept in this process (:class:`Local`, serial mode's
:data:`Ref`), a user error carried back as a result (:class:`Refused`), a function wrapped as a task
(:class:`Guarded`); and how batches are spread over workers in contiguous spans (:func:`spans_of`,
:func:`interleave`). Used by :class:`pipeline.runtime.engine.Engine`."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError, space_error


@dataclass(frozen=True)
class Local:
    """A value computed in this process (serial mode's :data:`Ref`)."""

    value: Any


Ref = Any  # Local in serial mode, a distributed.Future with Dask


@dataclass(frozen=True)
class Refused:
    """A user error raised in a task, carried back as its result: the client raises it, and no
    worker logs a traceback for what is the user's to fix (bad input)."""

    error: UsageError


class Guarded:
    """``fn`` as a task: a :class:`~pipeline.errors.UsageError` (a write that failed for space or
    quota included) becomes a :class:`Refused` result, and a task given a :class:`Refused` (its
    first step failed) passes it on."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", "task")  # task names on the dashboard

    def __call__(self, *args: Any) -> Any:
        refused = next((a for a in args if isinstance(a, Refused)), None)
        if refused is not None:
            return refused
        try:
            return self.fn(*args)
        except UsageError as exc:
            return Refused(exc)
        except OSError as exc:
            full = space_error(exc)
            if full is None:
                raise
            return Refused(full)


def spans_of(n: int, workers: int) -> list[range]:
    """``n`` batches as ``workers`` contiguous spans of (nearly) equal length."""
    workers = max(1, min(workers, n))
    return [range(w * n // workers, (w + 1) * n // workers) for w in range(workers)]


def interleave(spans: Sequence[range]) -> list[int]:
    """The batches of ``spans``, one of each span in turn (every worker starts at once)."""
    return [k for group in itertools.zip_longest(*spans) for k in group if k is not None]


def progress_of(items: Iterable[Any], bar: Any) -> Iterator[Any]:
    """``items``, counting each on ``bar`` once it was used; the bar is closed at the end."""
    try:
        for item in items:
            yield item
            bar.update(1)
    finally:
        bar.close()


def batched(items: Sequence[int], size: int) -> list[list[int]]:
    """Consecutive batches of at most ``size`` items."""
    return [list(items[i : i + size]) for i in range(0, len(items), size)]
