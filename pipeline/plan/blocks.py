"""The block plan: write boxes on a grid aligned to the network's ``step``.

::

    volume origin
    +-----------+-----------+-----------+--
    |  write 0  |  write 1  |  write 2  |      write boxes: n * step per axis,
    |           |           |           |      grid anchored at the origin
    +-----------+-----------+-----------+--
  <-|-- read 1 (write 1 grown by the context on each side) --|->

Blockwise prediction equals one whole-volume pass exactly when every write box
is a multiple of ``step`` wide, starts at a multiple of ``step`` from the
volume origin and its read box carries the full context (Rumberger et al.,
ICCV 2021). Border blocks keep their full size; their input is reflected
outside the volume and only the part inside the volume is written.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from ..geometry import Box, Coord, as_coord


class PlanError(UsageError):
    """A block plan that cannot be made (bad write shape, bad volume)."""


def check_write_shape(write_shape: Sequence[int], step: Sequence[int]) -> Coord:
    """Validate that every axis of ``write_shape`` is a positive multiple of ``step``.

    The error names the nearest valid sizes so the user can fix the config.
    """
    ws = as_coord(write_shape)
    st = as_coord(step, len(ws))
    bad = []
    for axis, (w, s) in enumerate(zip(ws, st, strict=True)):
        if w <= 0 or w % s:
            lower = (w // s) * s
            upper = lower + s
            options = [v for v in (lower, upper) if v > 0]
            bad.append(f"axis {axis}: {w} -> use {' or '.join(map(str, options))}")
    if bad:
        nearest = [max(s, round(w / s) * s) for w, s in zip(ws, st, strict=True)]
        raise PlanError(
            f"blocks.write_shape {list(ws)} must be a positive multiple of the model step "
            f"{list(st)} on every axis ({'; '.join(bad)}); nearest valid: {nearest}"
        )
    return ws


@dataclass(frozen=True)
class Block:
    """One unit of work: ``write`` (aligned, full size), ``read`` (write + context)
    and ``valid`` (the part of ``write`` inside the volume)."""

    index: Coord
    linear: int
    write: Box
    read: Box
    valid: Box


@dataclass(frozen=True)
class BlockPlan:
    """All blocks covering a volume. Cheap to build: blocks are generated lazily."""

    volume: Coord
    write_shape: Coord
    context: Coord
    step: Coord

    def __post_init__(self) -> None:
        vol = as_coord(self.volume)
        if any(v <= 0 for v in vol):
            raise PlanError(f"volume shape must be positive on every axis, got {list(vol)}")
        nd = len(vol)
        object.__setattr__(self, "volume", vol)
        object.__setattr__(self, "step", as_coord(self.step, nd))
        object.__setattr__(self, "context", as_coord(self.context, nd))
        if len(as_coord(self.write_shape)) != nd:
            raise PlanError(
                f"blocks.write_shape {list(self.write_shape)} has {len(self.write_shape)} axes "
                f"but the volume {list(vol)} has {nd}"
            )
        object.__setattr__(self, "write_shape", check_write_shape(self.write_shape, self.step))

    @property
    def ndim(self) -> int:
        return len(self.volume)

    @functools.cached_property
    def grid(self) -> Coord:
        """Number of blocks per axis."""
        return tuple(-(-v // w) for v, w in zip(self.volume, self.write_shape, strict=True))

    @property
    def read_shape(self) -> Coord:
        return tuple(w + 2 * c for w, c in zip(self.write_shape, self.context, strict=True))

    def __len__(self) -> int:
        return math.prod(self.grid)

    def block(self, index: Sequence[int]) -> Block:
        idx = as_coord(index, self.ndim)
        if any(not 0 <= i < g for i, g in zip(idx, self.grid, strict=True)):
            raise IndexError(f"block index {idx} outside grid {self.grid}")
        offset = tuple(i * w for i, w in zip(idx, self.write_shape, strict=True))
        linear = 0
        for i, g in zip(idx, self.grid, strict=True):
            linear = linear * g + i
        # the boxes directly (a block is made per block per task: 10^6 blocks, so its cost counts)
        return Block(
            index=idx,
            linear=linear,
            write=Box(offset, self.write_shape),
            read=Box(tuple(o - c for o, c in zip(offset, self.context, strict=True)),
                     tuple(w + 2 * c for w, c in zip(self.write_shape, self.context, strict=True))),
            valid=Box(offset, tuple(min(w, v - o) for o, w, v in zip(offset, self.write_shape, self.volume, strict=True))),
        )

    def block_at(self, linear: int) -> Block:
        idx = []
        for g in reversed(self.grid):
            idx.append(linear % g)
            linear //= g
        return self.block(tuple(reversed(idx)))

    def __iter__(self) -> Iterator[Block]:
        for idx in itertools.product(*(range(g) for g in self.grid)):
            yield self.block(idx)

    @property
    def voxels_read(self) -> int:
        return len(self) * math.prod(self.read_shape)

    @property
    def voxels_written(self) -> int:
        return math.prod(self.volume)

    @property
    def redundancy(self) -> float:
        """Voxels read (and computed through the network) per voxel written."""
        return self.voxels_read / self.voxels_written

    def digest(self) -> str:
        """Stable hash of the plan, for resume markers and provenance."""
        payload = json.dumps(
            [self.volume, self.write_shape, self.context, self.step], separators=(",", ":")
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def sweep_axes(plan: BlockPlan, chunks: Sequence[int]) -> Coord:
    """The axes of ``plan``'s grid from slowest to fastest in the order blocks run, so that a
    process's chunk cache (:mod:`pipeline.volume.cache`) holding :func:`sweep_chunks` chunks decodes
    every input chunk once.

    Running blocks in C order over ``(a, b, c)`` (``c`` fastest) reuses a decoded chunk across
    rows of ``a`` only while the cache holds a slab of ``t_a`` chunks across ``a`` (those one
    block's read box spans) by every chunk of ``b`` and ``c``: the slowest axis is the one whose
    slab is smallest, and likewise down the remaining axes. With ``(64, 64, 64)`` blocks (context
    ``(12, 20, 20)``) on ``(64, 256, 256)`` chunks of a ``(512, 2048, 2048)`` volume: y, x, z
    (a slab of 2 x 8 x 8 chunks, 1 GiB of uint16) instead of C order's z slab (3 x 8 x 8)."""
    n = [-(-v // c) for v, c in zip(plan.volume, chunks, strict=True)]
    t = [min(m, -(-(r - 1) // c) + 1) for m, r, c in zip(n, plan.read_shape, chunks, strict=True)]
    axes: list[int] = []
    left = list(range(plan.ndim))
    while left:
        slab = [t[a] * math.prod(n[b] for b in left if b != a) for a in left]
        axes.append(left.pop(slab.index(min(slab))))
    return tuple(axes)


def sweep_chunks(plan: BlockPlan, chunks: Sequence[int]) -> int:
    """Input chunks a process's cache holds so that blocks run in :func:`sweep_axes` order (one
    process running them all) decode every chunk once: the slowest axis's slab."""
    n = [-(-v // c) for v, c in zip(plan.volume, chunks, strict=True)]
    a = sweep_axes(plan, chunks)[0]
    t = min(n[a], -(-(plan.read_shape[a] - 1) // chunks[a]) + 1)
    return t * math.prod(m for i, m in enumerate(n) if i != a)


def in_sweep(linears: Sequence[int] | np.ndarray, grid: Sequence[int], axes: Sequence[int] | None) -> np.ndarray:
    """``linears`` (blocks of a plan with ``grid``) in C order over the grid's ``axes`` (slowest
    first, see :func:`sweep_axes`)::

        y slowest, then x, z fastest          batches (tasks) are runs of this order: neighbours
        +---+---+---+                         along z, then the next column over in x; the next
        | 0 | 2 | 4 |  z                      row of columns (y) finds the chunks it shares
        | 1 | 3 | 5 |  |                      with this one decoded in the worker's cache
        +---+---+---+  v   x ->

    Deterministic: the order (and so the batches) follows from the plan, the input's chunks
    and the blocks asked for. ``axes`` None: C order (``linears`` sorted). An int64 array (8 bytes a
    block: a plan of 10^7 blocks is 80 MB here, not a Python list of them)."""
    ids = np.sort(np.asarray(linears, dtype=np.int64))
    if axes is None or tuple(axes) == tuple(range(len(grid))) or not len(ids):
        return ids
    idx = np.unravel_index(ids, tuple(grid))
    return ids[np.lexsort([idx[a] for a in reversed(tuple(axes))])]


def rows(blocks: Sequence[Block]) -> list[list[Block]]:
    """``blocks`` split into runs of neighbours along the last axis (in order): the valid boxes
    of a run form one box (:func:`span`), read or written in one zarr operation."""
    out: list[list[Block]] = []
    for b in blocks:
        last = out[-1][-1] if out else None
        if last is not None and last.index[:-1] == b.index[:-1] and last.index[-1] + 1 == b.index[-1]:
            out[-1].append(b)
        else:
            out.append([b])
    return out


def span(run: Sequence[Block]) -> Box:
    """The box covered by the valid boxes of a run of neighbours (see :func:`rows`)."""
    first, last = run[0].valid, run[-1].valid
    return Box(first.offset, tuple(e - o for o, e in zip(first.offset, last.end, strict=True)))


def reflect_indices(start: int, stop: int, size: int) -> list[int] | range:
    """Indices into an axis of length ``size`` for the range ``[start, stop)``,
    reflected at the borders exactly like ``numpy.pad(mode="reflect")``.

    Any range is allowed, including ones that reflect several times.
    """
    if size <= 0:
        raise ValueError(f"axis size must be positive, got {size}")
    if 0 <= start and stop <= size:
        return range(start, stop)
    if size == 1:
        return [0] * (stop - start)
    period = 2 * (size - 1)
    out = []
    for i in range(start, stop):
        j = i % period
        out.append(j if j < size else period - j)
    return out
