"""What runs as a task and comes back: a value kept in this process (:class:`Local`, serial mode's
:data:`Ref`), a user error carried back as a result (:class:`Refused`), a function wrapped as a task
(:class:`Guarded`); and how batches are spread over workers in contiguous spans (:func:`spans_of`,
:func:`interleave`). Used by :class:`pipeline.runtime.engine.Engine`."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np

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


def interleave(spans: Sequence[range]) -> np.ndarray:
    """The batches of ``spans``, one of each span in turn (every worker starts at once); int64."""
    longest = max((len(s) for s in spans), default=0)
    grid = np.full((longest, len(spans)), -1, dtype=np.int64)
    for w, span in enumerate(spans):
        grid[: len(span), w] = np.arange(span.start, span.stop, dtype=np.int64)
    flat = grid.ravel()
    return flat[flat >= 0]


def spread(batches: Sequence[Sequence[int]], workers: Sequence[str]) -> tuple[Sequence[Sequence[int]], Iterator[str | None]]:
    """``batches`` in the order that gives each of ``workers`` a contiguous span of them, the spans
    submitted in turn (:func:`spans_of`, :func:`interleave`), and the worker of each batch in that order;
    with one worker or none, as they are and no worker named."""
    if len(workers) <= 1:
        return batches, itertools.repeat(None)
    order = spans_of(len(batches), len(workers))
    picked = interleave(order)
    owner = np.repeat(np.arange(len(order)), [len(span) for span in order])[picked]
    out = batches.reordered(picked) if isinstance(batches, Batches) else [batches[int(k)] for k in picked]
    return out, (workers[int(w)] for w in owner)


def progress_of(items: Iterable[Any], bar: Any) -> Iterator[Any]:
    """``items``, counting each on ``bar`` once it was used; the bar is closed at the end."""
    try:
        for item in items:
            yield item
            bar.update(1)
    finally:
        bar.close()


class Batches(Sequence[list[int]]):
    """Consecutive batches of at most ``size`` of ``items`` (integers, kept as one int64 array), in
    the order ``order`` gives (indices of batches; None: as they come): each batch is made when it is
    asked for, so the client holds 8 bytes per block whatever the plan's size, not a list per task."""

    def __init__(self, items: Iterable[int] | np.ndarray, size: int, order: np.ndarray | None = None) -> None:
        self.items = np.asarray(items if isinstance(items, np.ndarray | range) else list(items), dtype=np.int64)
        self.size, self.order = max(1, int(size)), order

    def __len__(self) -> int:
        return len(self.order) if self.order is not None else -(-len(self.items) // self.size)

    @property
    def total(self) -> int:
        """How many items the batches hold."""
        return len(self.items)

    @overload
    def __getitem__(self, k: int) -> list[int]: ...

    @overload
    def __getitem__(self, k: slice) -> list[list[int]]: ...

    def __getitem__(self, k: int | slice) -> list[int] | list[list[int]]:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        if not -len(self) <= k < len(self):
            raise IndexError(k)
        k = int(self.order[k]) if self.order is not None else k % len(self)
        return self.items[k * self.size:(k + 1) * self.size].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        return (self[k] for k in range(len(self)))

    def reordered(self, order: np.ndarray) -> Batches:
        """The same batches in the order ``order`` (indices of this one's batches)."""
        base = self.order[order] if self.order is not None else np.asarray(order, dtype=np.int64)
        return Batches(self.items, self.size, base)


def batched(items: Iterable[int] | np.ndarray, size: int) -> Batches:
    """Consecutive batches of at most ``size`` items (made as they are asked for, see :class:`Batches`)."""
    return Batches(items, size)


def items_in(batches: Sequence[Sequence[int]]) -> int:
    """How many items ``batches`` hold (without making each batch of a :class:`Batches`)."""
    return batches.total if isinstance(batches, Batches) and batches.order is None else sum(map(len, batches))
