"""Errors of volumes, and the record of input chunks that cannot be read.

:class:`InputError` and :class:`OutputError` are inputs and outputs the user must fix;
:class:`InputReadError` names a chunk of the input whose voxel data cannot be read. With
``input.unreadable: empty`` such a chunk reads as empty instead: :class:`Unreadable` says which
chunk and where, and :func:`collect_unreadable` gathers them for the reads of a context.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from ..geometry import Box


class InputError(UsageError):
    """An input the user must fix (missing, wrong shape or dtype, ...)."""


class OutputError(UsageError):
    """An output that cannot be written without losing data or permission."""


class InputReadError(InputError):
    """Voxel data of the input that cannot be read: a corrupt, truncated or unreadable chunk,
    TIFF page or HDF5 chunk."""


UNREADABLE_HINT = ("copy the file again from its source; or set input.unreadable: empty to read unreadable chunks "
                   "as empty (their regions are recorded in the result), or give empty.mask to skip the region")


@dataclass(frozen=True)
class Unreadable:
    """A chunk of the input read as empty (``input.unreadable: empty``): what it is and where."""

    chunk: str  # the chunk file, TIFF page or HDF5 chunk
    region: Box  # spatial, in volume coordinates, clipped to the volume

    def as_json(self) -> list[Any]:
        return [self.chunk, [v for o, e in zip(self.region.offset, self.region.end, strict=True) for v in (o, e)]]

    @classmethod
    def from_json(cls, item: Sequence[Any]) -> Unreadable:
        ranges = item[1]
        return cls(str(item[0]), Box(tuple(ranges[0::2]), tuple(e - o for o, e in zip(ranges[0::2], ranges[1::2],
                                                                                        strict=True))))


# the chunks read as empty in this context; None: log each one instead
UNREADABLE_FOUND: ContextVar[list[Unreadable] | None] = ContextVar("unreadable", default=None)


@contextmanager
def collect_unreadable() -> Iterator[list[Unreadable]]:
    """The chunks that reads in this context (this thread) read as empty."""
    found: list[Unreadable] = []
    token = UNREADABLE_FOUND.set(found)
    try:
        yield found
    finally:
        UNREADABLE_FOUND.reset(token)

