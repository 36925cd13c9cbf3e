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

The same level is also checked at read time when a pyramid or mask decided first. A
network that predicts background on background gives the same segmentation either way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import zarr

from .config import Config, InputConfig
from .errors import UsageError
from .geometry import Box
from .io import InputVolume, open_input
from .predict import NormStats

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
    """Spatial shape of every level of the input's pyramid (the input's alone without one)."""
    if not vol.ome:
        return [vol.shape]
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
        mask = open_input(mask_cfg)
        if mask.ndim != vol.ndim:
            raise MaskError(f"empty.mask '{e.mask.path}' is {mask.ndim}D {list(mask.shape)}, the input is "
                            f"{vol.ndim}D {list(vol.shape)}; give a mask with the input's axes")
        return EmptySource("mask", level, mask_cfg, tuple(v / m for v, m in zip(grid, mask.shape, strict=True)))
    levels = _levels(cfg.input, vol)
    base = cfg.input.scale_level
    k = choose_level(levels, base, write) if e.level is None else e.level
    if k >= len(levels) or k < base:
        raise MaskError(f"empty.level {k} does not exist below input.scale_level {base} in '{vol.path}' "
                        f"(levels {base}..{len(levels) - 1}); leave empty.level unset to choose automatically")
    if k == base:
        return EmptySource("read", level)
    factors = tuple(b / c for b, c in zip(grid, levels[k], strict=True))
    return EmptySource("level", level, cfg.input.model_copy(update={"scale_level": k}), factors, k)
