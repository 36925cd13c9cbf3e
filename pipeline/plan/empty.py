"""Empty space: blocks whose input holds nothing but background are neither predicted nor
clustered; they keep the output's fill value (0) and cost about one cheap read.

A block is *empty* when no voxel of its read box (halo included, so its neighbours' objects
reaching into it are seen) exceeds the background level ``offset + threshold * scale`` of
the run's normalisation, i.e. ``threshold`` in normalised input units. The decision comes
from the cheapest source there is:

* a user-given mask (0 over a block's write box = skip), at any resolution whose ratio to
  the volume is constant;
* a lower level of the input's OME-Zarr pyramid (one low-resolution read per block, before
  any block runs, so ``pipeline plan`` can count them);
* else the block's own full-resolution input, as it is read for prediction (free).

Whatever decides, a block whose input chunks are all absent from the store (never written:
they read as the fill value) is empty when the fill value is background: known from one
listing of the store (:func:`stored_chunks`) before any task exists, never read
(:func:`absent_blocks`). Such blocks never become tasks in any stage.

The same level is also checked at read time when a pyramid or mask decided first. A
network that predicts background on background gives the same segmentation either way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import zarr

from ..config import Config, InputConfig
from ..errors import UsageError
from ..geometry import Box
from ..network.predict import NormStats
from ..volume.input_volume import InputVolume
from ..volume.io import open_input, timepoint_count
from ..volume.resample import ZoomedVolume
from .blocks import BlockPlan
from .listing import Listing, stored_chunks

MIN_COARSE_VOXELS = 4  # per block axis, at the level decided from


class MaskError(UsageError):
    """A mask that does not fit the input volume."""


@dataclass(frozen=True)
class EmptySource:
    """Where emptiness is decided: ``read`` (each block's input as it is read), ``level``
    (a lower pyramid level of the input) or ``mask``; ``array`` is read ``factors`` coarser."""

    kind: Literal["read", "level", "mask"]
    background: float  # raw intensity; a block whose input never exceeds it is empty
    array: InputConfig | None = None
    factors: tuple[float, ...] = ()
    level: int = 0

    def describe(self) -> str:
        where = {"read": "each block's input as it is read", "level": f"pyramid level {self.level}",
                 "mask": f"mask '{self.array.path if self.array else ''}'"}[self.kind]
        return f"{where}; background <= {self.background:.6g}"


def background(stats: NormStats, threshold: float) -> float:
    """The raw intensity at ``threshold`` in normalised input units."""
    return float(stats.offset + threshold * stats.scale)


def coarse_box(box: Box, volume: Sequence[int], factors: Sequence[float], coarse: Sequence[int]) -> Box:
    """The region of a ``factors`` times coarser array that covers ``box`` clipped to the volume
    (a read box's reflected halo mirrors voxels inside that clip), grown by one coarse voxel:
    downsampling may spread a bright voxel into a neighbouring coarse voxel."""
    lo, hi = [], []
    for o, s, v, f, c in zip(box.offset, box.shape, volume, factors, coarse, strict=True):
        start, stop = max(o, 0), min(o + s, v)
        lo.append(max(min(math.floor(start / f), c - 1) - 1, 0))
        hi.append(min(math.ceil(stop / f) + 1, c))
    return Box(tuple(lo), tuple(h - lo_ for h, lo_ in zip(hi, lo, strict=True)))


def is_empty(data: np.ndarray, level: float | None) -> bool:
    """No voxel above ``level`` (None: a mask, empty where it is 0 everywhere)."""
    return not data.any() if level is None else bool(data.size == 0 or data.max() <= level)


def _levels(cfg: InputConfig, vol: InputVolume) -> list[tuple[int, ...]]:
    """Spatial shape of every level of the input's OME-Zarr pyramid."""
    group = zarr.open(store=str(cfg.path), mode="r")
    group = group[cfg.dataset] if cfg.dataset else group
    return [tuple(group[d["path"]].shape[i] for i in vol.spatial_axes) for d in vol.ome["multiscales"][0]["datasets"]]


def choose_level(levels: Sequence[Sequence[int]], base: int, write: Sequence[int]) -> int:
    """The coarsest level at or below ``base`` where a block still spans ``MIN_COARSE_VOXELS``
    voxels per axis; ``base`` when none is coarser."""
    best = base
    for k in range(base + 1, len(levels)):
        factors = [b / c for b, c in zip(levels[base], levels[k], strict=True)]
        if all(w / f >= MIN_COARSE_VOXELS for w, f in zip(write, factors, strict=True)):
            best = k
    return best


def empty_source(cfg: Config, vol: InputVolume, stats: NormStats, write: Sequence[int],
                 grid: Sequence[int] | None = None) -> EmptySource | None:
    """How this run decides which blocks are empty (None: ``empty.skip`` is off); ``grid``: the
    shape the blocks cover when it is not the input's (``input.diameter`` resamples it)."""
    e = cfg.empty
    grid = tuple(grid or vol.shape)
    if not e.skip:
        return None
    level = background(stats, e.threshold)
    if e.mask is not None:
        mask_cfg = InputConfig(path=e.mask.path, dataset=e.mask.dataset)
        if cfg.input.timepoint is not None and timepoint_count(mask_cfg) > 1:  # a mask per time point
            mask_cfg = mask_cfg.model_copy(update={"timepoint": cfg.input.timepoint})
        mask = open_input(mask_cfg)
        if mask.ndim != vol.ndim:
            raise MaskError(f"empty.mask '{e.mask.path}' is {mask.ndim}D {list(mask.shape)}, the input is "
                            f"{vol.ndim}D {list(vol.shape)}; give a mask with the input's axes")
        return EmptySource("mask", level, mask_cfg, tuple(v / m for v, m in zip(grid, mask.shape, strict=True)))
    base = cfg.input.scale_level
    if not vol.ome:  # TIFF, HDF5/BDV, N5, a plain zarr array: no pyramid the test could read coarser
        if e.level not in (None, base):
            raise MaskError(f"empty.level {e.level}: '{vol.path}' is not an OME-Zarr image, so no coarser level "
                            "of it is known to test blocks on; leave empty.level unset (each block's input is "
                            "tested as it is read)")
        return EmptySource("read", level)
    levels = _levels(cfg.input, vol)
    k = choose_level(levels, base, write) if e.level is None else e.level
    if k >= len(levels) or k < base:
        raise MaskError(f"empty.level {k} does not exist below input.scale_level {base} in '{vol.path}' "
                        f"(levels {base}..{len(levels) - 1}); leave empty.level unset to choose automatically")
    if k == base:
        return EmptySource("read", level)
    factors = tuple(b / c for b, c in zip(grid, levels[k], strict=True))
    return EmptySource("level", level, cfg.input.model_copy(update={"scale_level": k}), factors, k)


# ---------------------------------------------------------------- chunks absent from the store (see .listing)


def read_ranges(plan: BlockPlan, vol: InputVolume | ZoomedVolume) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per axis, ``(lo, hi)``: the input voxels (the input's own grid, reflected halos and
    resampling included) that the reads of the blocks at each index along that axis touch."""
    first = plan.block((0,) * plan.ndim).read
    out = []
    for a in range(plan.ndim):
        bounds = []
        for i in range(plan.grid[a]):
            offset = list(first.offset)
            offset[a] += i * plan.write_shape[a]
            region = vol.source_region(Box(tuple(offset), first.shape))
            bounds.append((region.offset[a], region.end[a]))
        pairs = np.asarray(bounds, dtype=np.int64)
        out.append((pairs[:, 0], pairs[:, 1]))
    return out


def any_within(flags: np.ndarray, cell: Sequence[int], ranges: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """For every box of a grid of boxes, whether any flagged cell meets it (one bool per box,
    linear order). ``flags``: one per cell of a grid of ``cell``-sized cells from the origin;
    ``ranges[a]``: ``(lo, hi)`` voxels of the boxes along axis ``a``, per box index. One
    summed-area table and one lookup per box: no loop over boxes; computed in slabs of
    :data:`SLAB_BOXES` boxes along the first axis (a petabyte plan has 10^7-10^8 boxes)."""
    nd = flags.ndim
    shape = tuple(len(r[0]) for r in ranges)
    if not flags.any():
        return np.zeros(math.prod(shape), dtype=bool)
    counts = np.int32 if flags.size < 2**31 else np.int64
    table = np.zeros(tuple(g + 1 for g in flags.shape), dtype=counts)
    table[(slice(1, None),) * nd] = flags
    for a in range(nd):
        np.cumsum(table, axis=a, out=table)
    lo = [np.clip(r[0] // c, 0, g) for r, c, g in zip(ranges, cell, flags.shape, strict=True)]
    hi = [np.clip(-(-r[1] // c), 0, g) for r, c, g in zip(ranges, cell, flags.shape, strict=True)]
    hi = [np.where(r[1] > np.maximum(r[0], 0), np.maximum(h, low), low) for r, h, low in zip(ranges, hi, lo, strict=True)]
    out = np.empty(shape, dtype=bool)
    step = max(1, SLAB_BOXES // max(1, math.prod(shape[1:])))
    for start in range(0, shape[0], step):
        rows = slice(start, start + step)
        total = np.zeros((len(lo[0][rows]), *shape[1:]), dtype=counts)
        for corner in range(1 << nd):  # inclusion-exclusion over the box's 2**nd corners
            ends = [(hi[a] if corner >> a & 1 else lo[a])[rows if a == 0 else slice(None)] for a in range(nd)]
            part = table[np.ix_(*ends)]
            if (nd - bin(corner).count("1")) % 2:
                total -= part
            else:
                total += part
        out[rows] = total > 0
    return out.ravel()


SLAB_BOXES = 1 << 22  # boxes per slab of any_within (~16-32 MiB of counts at a time)


def absent_blocks(plan: BlockPlan, vol: InputVolume | ZoomedVolume, background: float,
                  listing: Listing | None = None) -> np.ndarray | None:
    """One flag per block: True where the block's input is only chunks the store does not hold
    and the input's fill value is background (see :func:`any_within`); None when the store
    cannot be listed or its fill value is not background. ``listing``: the store's, when already
    taken (a store of millions of chunks is listed once per run)."""
    source = vol.source if isinstance(vol, ZoomedVolume) else vol
    fill = getattr(source.array, "fill_value", None)
    if fill is None or not float(fill) <= background:  # NaN: never background
        return None
    found = listing or stored_chunks(source)
    if found is None:
        return None
    stored, cell = found
    return ~any_within(stored, cell, read_ranges(plan, vol))


MAX_COUNTED = 1 << 22  # blocks around the stored chunks (and stored chunks) beyond which none are counted


def live_counter(vol: InputVolume, listing: tuple[np.ndarray, tuple[int, ...]] | None, stats: NormStats,
                 threshold: float, context: Sequence[int]) -> Callable[[Sequence[int]], int | None] | None:
    """For the block-shape choice on a sparse volume: write shape -> how many blocks' reads (halo
    included, clipped to the volume) meet a chunk the store holds, the others being known empty and
    free (see :func:`absent_blocks`). None when nothing is known empty (no listing, every chunk
    stored, a fill value that is not background) or the stored chunks are too many to count."""
    fill = getattr(vol.array, "fill_value", None)
    if listing is None or fill is None or not float(fill) <= background(stats, threshold):
        return None
    stored, cell = listing
    cells = np.argwhere(stored)
    if stored.all() or not len(cells) or len(cells) > MAX_COUNTED // 64:  # (none stored: every block skipped anyway)
        return None
    volume = np.asarray(vol.shape)
    x0 = cells * np.asarray(cell)  # each stored cell's voxels [x0, x1)
    x1 = np.minimum(x0 + np.asarray(cell), volume)
    nd = stored.ndim

    @lru_cache(maxsize=1 << 16)
    def count(write: tuple[int, ...]) -> int | None:
        w, ctx = np.asarray(write), np.asarray(context)
        grid = -(-volume // w)
        lo = np.clip((x0 - ctx) // w, 0, grid)  # blocks j with j*w - ctx < x1 and (j+1)*w + ctx > x0
        hi = np.clip(-(-(x1 + ctx) // w), 0, grid)
        origin, extent = lo.min(0), hi.max(0) - lo.min(0)
        if math.prod(extent.tolist()) > MAX_COUNTED:
            return None
        diff = np.zeros(tuple(int(e) + 1 for e in extent), np.int32)  # the boxes' union, by corners
        for corner in range(1 << nd):
            at = tuple(np.where(corner >> a & 1, hi[:, a], lo[:, a]) - origin[a] for a in range(nd))
            np.add.at(diff, at, -1 if bin(corner).count("1") % 2 else 1)
        for a in range(nd):
            np.cumsum(diff, axis=a, out=diff)
        return int((diff > 0).sum())

    return lambda write: count(tuple(int(x) for x in write))
