"""What a block plan costs, predicted from numbers alone (no Dask, no I/O, no torch).

The automatic write shape is the candidate of least predicted cost::

    cost = rounds x (network x voxels read  +  growth x voxels read x read box
                     + decompress x input voxels decompressed  +  block x blocks) / blocks

    voxels read            sum of the read boxes (write + 2 x context per axis): the network
                           computes each one, halo included (redundancy = read / written)
    x read box             a voxel costs more in a larger block (measured: 1.03 us in a read box
                           of 0.43 Mvox, 1.48 us in one of 4.7 Mvox: caches), so very large
                           blocks lose what their smaller halo saves
    voxels decompressed    input chunks each read box touches x chunk voxels (over-read)
    blocks                 per-block work that does not grow with its size: a task, its input
                           and output zarr operations, clustering's fixed part, faces, done
                           markers, the merge's and the relabel's per-block steps
    rounds                 ceil(blocks / workers): blocks run side by side on the workers

On a sparse volume (chunks the store does not hold, whose fill value is background) the blocks
whose reads meet no stored chunk are known empty before any task exists: they never run, so a
candidate pays the terms above only for its ``live`` blocks (counted by
:func:`pipeline.plan.empty.live_counter`) and :data:`ABSENT_BLOCK_S` for each of the others.

Every term is a product of one factor per axis, so a candidate's cost is a few products.
Candidates are write shapes that are multiples of ``step`` per axis (each axis: the smallest
size for each number of blocks along it, and multiples of the input's chunks), no larger than
the volume rounded up to ``step``, whose block fits the memory a worker gives one block; the
cheapest wins, ties to the smaller block, then to the earlier axes' smaller size (the same
numbers give the same plan). Costs are CPU seconds of one core; only their ratios choose.

:data:`CPU` holds coefficients measured on the project's 2-core CPU machine with the bundled
model by ``python benchmarks/blocks.py calibrate`` (see benchmarks/RESULTS.md). On a GPU
(:data:`GPU`, not measured) the same without the growth term: a GPU computes voxels faster,
which favours large blocks even more, and there the memory limit decides.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Coefficients:
    """Seconds per unit of each cost term (see the module docstring)."""

    network: float  # per voxel through the network (read boxes, halo included)
    growth: float  # per voxel through the network and per voxel of its read box
    decompress: float  # per input voxel decompressed
    block: float  # per block


# Measured by `python benchmarks/blocks.py calibrate` (AMD EPYC, 2 cores, bundled model, serial, float32
# input in zstd-compressed chunks (16,64,64)); RESULTS.md "Default blocks chosen by cost" has the runs.
CPU = Coefficients(network=1.10e-6, growth=0.056e-12, decompress=0.0185e-6, block=0.0027)
# Not measured (no GPU lent to this work): the CPU's, without the growth term, which is the CPU caches'
# (a GPU is not slower per voxel on larger blocks); there the memory limit decides, as it did before.
GPU = Coefficients(network=CPU.network, growth=0.0, decompress=CPU.decompress, block=CPU.block)


def axis_blocks(volume: int, write: int) -> int:
    """Blocks along one axis."""
    return -(-volume // write)


@lru_cache(maxsize=4096)
def axis_chunks(volume: int, write: int, context: int, chunk: int) -> int:
    """Input chunks touched along one axis, summed over that axis's blocks (read boxes start
    ``context`` before their write box; outside the volume counts as if chunked alike)."""
    read = write + 2 * context
    total = 0
    for i in range(axis_blocks(volume, write)):
        start = i * write - context
        total += (start + read - 1) // chunk - start // chunk + 1
    return total


def block_bytes(write: Sequence[int], context: Sequence[int], features: int, outputs: int) -> int:
    """Estimated memory of one block through the network: the raw and normalised input, the
    first level's ``features`` (twice, for the skip connection) and the ``outputs`` (+1)."""
    read = math.prod(w + 2 * c for w, c in zip(write, context, strict=True))
    return 4 * (read * (2 + 2 * features) + math.prod(write) * (outputs + 1))


@dataclass(frozen=True)
class Terms:
    """A candidate's cost terms over the whole volume."""

    write: Shape
    blocks: int
    voxels_read: int
    read_box: int
    voxels_decompressed: int
    voxels_written: int
    live: int | None = None  # blocks not known empty from the store's listing (None: all of them)

    @property
    def redundancy(self) -> float:
        return self.voxels_read / self.voxels_written

    @property
    def over_read(self) -> float:
        """Input voxels decompressed per voxel the read boxes need."""
        return self.voxels_decompressed / self.voxels_read

    def cost(self, coefficients: Coefficients = CPU, workers: int = 1) -> float:
        """Predicted seconds: the work of one block times the rounds of ``workers`` blocks. Blocks
        known empty from the store's listing (``blocks - live``) never become tasks: they cost
        :data:`ABSENT_BLOCK_S` each (the client's bookkeeping), whatever their size."""
        c = coefficients
        work = (c.network + c.growth * self.read_box) * self.voxels_read + c.decompress * self.voxels_decompressed + c.block * self.blocks
        live = self.blocks if self.live is None else self.live
        return work / self.blocks * -(-live // max(1, workers)) + ABSENT_BLOCK_S * (self.blocks - live)


Live = Callable[[Sequence[int]], "int | None"]  # write shape -> blocks not known empty (None: unknown)
ABSENT_BLOCK_S = 1e-4  # a block known empty from the listing: no task, a few client-side numbers


def terms(volume: Sequence[int], write: Sequence[int], context: Sequence[int], chunks: Sequence[int],
          live: Live | None = None) -> Terms:
    """The cost terms of blocks of ``write`` over ``volume`` read from input ``chunks``; ``live``
    counts the blocks of a write shape that are not known empty (a sparse volume's)."""
    grid = [axis_blocks(v, w) for v, w in zip(volume, write, strict=True)]
    return Terms(
        tuple(write), math.prod(grid),
        math.prod(g * (w + 2 * c) for g, w, c in zip(grid, write, context, strict=True)),
        math.prod(w + 2 * c for w, c in zip(write, context, strict=True)),
        math.prod(axis_chunks(v, w, c, k) * k for v, w, c, k in zip(volume, write, context, chunks, strict=True)),
        math.prod(volume),
        live(write) if live is not None else None,
    )


def predicted_cost(volume: Sequence[int], write: Sequence[int], context: Sequence[int], chunks: Sequence[int],
                   coefficients: Coefficients = CPU, workers: int = 1, live: Live | None = None) -> float:
    """Predicted seconds of a plan (see :class:`Terms`)."""
    return terms(volume, write, context, chunks, live).cost(coefficients, workers)


def round_up(size: int, step: int) -> int:
    """The smallest multiple of ``step`` at least ``size``."""
    return -(-size // step) * step


MAX_SIZES = 40  # sizes per axis considered (a ladder ~15% apart when an axis allows more)


def axis_sizes(volume: int, step: int, largest: int, chunk: int = 1, limit: int = MAX_SIZES) -> list[int]:
    """Write sizes for one axis, ascending, at most ``largest``: the smallest multiple of ``step``
    for each number of blocks along the axis (a larger one with as many blocks only adds compute,
    unless it fits the input's ``chunk``: multiples of both are kept too); thinned to ``limit``
    sizes at least ~15% apart when there are more."""
    top = min(largest, round_up(volume, step))
    sizes = {round_up(-(-volume // g), step) for g in range(1, -(-volume // step) + 1)}
    unit = math.lcm(step, chunk)
    sizes |= set(range(unit, top + 1, unit))
    sizes = sorted(s for s in sizes if s <= top) or [step]
    if len(sizes) <= limit:
        return sizes
    kept = [sizes[-1]]
    for s in reversed(sizes[:-1]):
        if s * 1.15 <= kept[-1] or s == step:
            kept.append(s)
    kept = kept[: limit - 1] + ([step] if step not in kept[: limit - 1] else [])
    return sorted(set(kept))


def candidates(volume: Sequence[int], step: Sequence[int], context: Sequence[int], chunks: Sequence[int],
               memory: int, features: int, outputs: int) -> list[Shape]:
    """Write shapes that are multiples of ``step`` per axis, no larger than the volume rounded up
    to ``step``, whose :func:`block_bytes` is at most ``memory``. Never empty: the one-step block
    is kept even when it does not fit (the caller says so)."""
    smallest = tuple(step)

    def fits(write: Sequence[int]) -> bool:
        return block_bytes(write, context, features, outputs) <= memory

    per_axis = []
    for axis, (v, s, k) in enumerate(zip(volume, step, chunks, strict=True)):
        largest = s  # the largest size on this axis that fits with the other axes at one step
        lo, hi = 1, round_up(v, s) // s
        while lo <= hi:
            mid = (lo + hi) // 2
            trial = (*smallest[:axis], mid * s, *smallest[axis + 1:])
            if fits(trial):
                largest, lo = mid * s, mid + 1
            else:
                hi = mid - 1
        per_axis.append(axis_sizes(v, s, largest, k))
    out: list[Shape] = []

    def walk(prefix: Shape) -> None:
        axis = len(prefix)
        if axis == len(per_axis):
            out.append(prefix)
            return
        for size in per_axis[axis]:
            trial = (*prefix, size, *smallest[axis + 1:])
            if not fits(trial):
                break  # sizes ascend: larger ones fit even less
            walk((*prefix, size))

    walk(())
    return out or [smallest]


def ranked(volume: Sequence[int], step: Sequence[int], context: Sequence[int], chunks: Sequence[int],
           memory: int, features: int, outputs: int, coefficients: Coefficients = CPU,
           workers: int = 1, live: Live | None = None) -> list[Terms]:
    """:func:`candidates` by predicted cost, cheapest first (ties: fewer voxels per block, then
    the shape itself, so the order is the same for the same numbers); ``live``: see :func:`terms`."""
    found = [terms(volume, w, context, chunks, live)
             for w in candidates(volume, step, context, chunks, memory, features, outputs)]
    return sorted(found, key=lambda t: (t.cost(coefficients, workers), math.prod(t.write), t.write))
