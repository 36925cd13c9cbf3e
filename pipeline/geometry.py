"""Immutable block geometry: boxes on an integer grid.

A :class:`Box` is a half-open, axis-aligned region ``[offset, offset + shape)``.
It is frozen and hashable, so boxes can be used as dictionary keys and passed
between Dask workers safely. Invalid boxes raise :class:`ValueError` (never
``assert``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Coord = tuple[int, ...]


def as_coord(values: Iterable[int] | int, ndim: int | None = None) -> Coord:
    """Return ``values`` as a tuple of ints; a scalar is broadcast to ``ndim``."""
    if isinstance(values, int):
        if ndim is None:
            raise ValueError("a scalar coordinate needs ndim to be broadcast")
        return (int(values),) * ndim
    coord = tuple(int(v) for v in values)
    if ndim is not None and len(coord) != ndim:
        raise ValueError(f"expected {ndim} values, got {len(coord)}: {coord}")
    return coord


@dataclass(frozen=True)
class Box:
    """Half-open box ``[offset, offset + shape)`` in voxel coordinates.

    ::

        offset
          +---------------+
          |               |  shape[0]
          +---------------+
               shape[1]
    """

    offset: Coord
    shape: Coord

    def __post_init__(self) -> None:
        offset = as_coord(self.offset)
        shape = as_coord(self.shape)
        if len(offset) != len(shape):
            raise ValueError(f"offset {offset} and shape {shape} differ in dimensions")
        if any(s < 0 for s in shape):
            raise ValueError(f"box shape must be non-negative, got {shape}")
        object.__setattr__(self, "offset", offset)
        object.__setattr__(self, "shape", shape)

    @classmethod
    def from_shape(cls, shape: Sequence[int]) -> Box:
        """Box at the origin with the given shape."""
        return cls((0,) * len(shape), tuple(shape))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def end(self) -> Coord:
        return tuple(o + s for o, s in zip(self.offset, self.shape, strict=True))

    @property
    def size(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def empty(self) -> bool:
        return self.size == 0

    def grow(self, before: Sequence[int] | int, after: Sequence[int] | int | None = None) -> Box:
        """Grow by ``before`` voxels at the start and ``after`` (default: same) at the end."""
        b = as_coord(before, self.ndim)
        a = b if after is None else as_coord(after, self.ndim)
        return Box(
            tuple(o - x for o, x in zip(self.offset, b, strict=True)),
            tuple(s + x + y for s, x, y in zip(self.shape, b, a, strict=True)),
        )

    def shift(self, by: Sequence[int]) -> Box:
        return Box(tuple(o + d for o, d in zip(self.offset, as_coord(by, self.ndim), strict=True)), self.shape)

    def intersect(self, other: Box) -> Box:
        """Largest box inside both; an empty box (shape 0 on some axis) if disjoint."""
        start = tuple(max(a, b) for a, b in zip(self.offset, other.offset, strict=True))
        stop = tuple(min(a, b) for a, b in zip(self.end, other.end, strict=True))
        return Box(start, tuple(max(0, e - s) for s, e in zip(start, stop, strict=True)))

    def contains(self, other: Box) -> bool:
        return all(
            so <= oo and oe <= se
            for so, se, oo, oe in zip(self.offset, self.end, other.offset, other.end, strict=True)
        )

    def to_slices(self, relative_to: Box | None = None) -> tuple[slice, ...]:
        """Slices selecting this box, optionally relative to ``relative_to``'s offset."""
        base = relative_to.offset if relative_to is not None else (0,) * self.ndim
        return tuple(
            slice(o - b, o - b + s) for o, s, b in zip(self.offset, self.shape, base, strict=True)
        )

    def describe(self, volume: Sequence[int] | None = None, axes: str = "zyx") -> str:
        """The box as ranges in volume coordinates, clipped to ``volume`` when given: e.g.
        ``z 0:28, y 0:52, x 0:52`` (start inclusive, end exclusive): how messages name a region."""
        box = self.intersect(Box.from_shape(volume)) if volume is not None else self
        names = axes[-self.ndim:] if self.ndim <= len(axes) else [f"axis {i}" for i in range(self.ndim)]
        return ", ".join(f"{a} {o}:{e}" for a, o, e in zip(names, box.offset, box.end, strict=True))

    def snap_to_grid(self, grid: Sequence[int], mode: str = "grow") -> Box:
        """Snap to multiples of ``grid``: ``grow`` outwards, ``shrink`` inwards."""
        g = as_coord(grid, self.ndim)
        if any(x <= 0 for x in g):
            raise ValueError(f"grid must be positive, got {g}")
        if mode == "grow":
            start = tuple((o // x) * x for o, x in zip(self.offset, g, strict=True))
            stop = tuple(-((-e) // x) * x for e, x in zip(self.end, g, strict=True))
        elif mode == "shrink":
            start = tuple(-((-o) // x) * x for o, x in zip(self.offset, g, strict=True))
            stop = tuple((e // x) * x for e, x in zip(self.end, g, strict=True))
        else:
            raise ValueError(f"mode must be 'grow' or 'shrink', got {mode!r}")
        return Box(start, tuple(max(0, e - s) for s, e in zip(start, stop, strict=True)))
