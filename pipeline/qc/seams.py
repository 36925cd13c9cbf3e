"""Seams: a region predicted tile by tile with any tiling, and the discontinuity measure of
Rumberger et al. (ICCV 2021, supplementary Fig. 1c): the embedding gradient magnitude
across tile borders relative to inside the tiles. Pure numpy on arrays; the network and
the input reader are passed in as functions.

A tile whose size is a multiple of the network's ``step`` and that starts on the step grid
is *aligned*: the stitched output equals one pass over the whole region to round-off. A
tile of another size (the supplementary's 52 for ``step`` 16) is *naive*: the network
predicts the next multiple of ``step`` at the tile's start and keeps the tile's part, so
tiles start off the step grid and seams appear.

The gradient ratio compares, per axis, the mean gradient magnitude across the planes where
tiles meet with its mean across the other planes *of the same phase modulo step* (a network
with pooling has a period-``step`` pattern of its own, and aligned seams always fall on one
phase): about 1.0 when stitching is exact, clearly above 1 with seams.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..geometry import Box, Coord

Predict = Callable[[np.ndarray], np.ndarray]  # raw (C, *read) -> output (E + 1, *write)
Read = Callable[[Box], np.ndarray]  # input (C, *box), reflected outside the volume


def network_tile(tile: Sequence[int], step: Sequence[int]) -> Coord:
    """The output the network computes for a tile: its size rounded up to ``step``."""
    return tuple(-(-t // s) * s for t, s in zip(tile, step, strict=True))


def is_aligned(tile: Sequence[int], step: Sequence[int], offset: Sequence[int] | None = None) -> bool:
    offset = offset or (0,) * len(tile)
    return all(t % s == 0 and o % s == 0 for t, s, o in zip(tile, step, offset, strict=True))


def predict_tiles(predict: Predict, read: Read, region: Box, tile: Sequence[int], step: Sequence[int],
                  context: Sequence[int], anchor: Sequence[int] | None = None) -> np.ndarray:
    """The network's output over ``region`` (channels first, float64), stitched from tiles of
    ``tile`` on a grid anchored at ``anchor`` (default ``region.offset``; the volume origin
    reproduces a run's blocks); tiles overhanging the region are cropped."""
    out_tile = network_tile(tile, step)
    result: np.ndarray | None = None
    anchor = region.offset if anchor is None else tuple(anchor)
    starts = [range(a + (o - a) // t * t, o + n, t) for a, o, n, t in zip(anchor, region.offset, region.shape, tile, strict=True)]
    for offset in itertools.product(*starts):
        write = Box(offset, out_tile)
        y = predict(read(write.grow(tuple(context))))
        if result is None:
            result = np.zeros((y.shape[0], *region.shape), np.float64)
        keep = Box(offset, tuple(tile)).intersect(region)
        result[(slice(None), *keep.to_slices(relative_to=region))] = y[(slice(None), *keep.to_slices(relative_to=write))]
    assert result is not None, "empty region"
    return result


def gradient_profile(emb: np.ndarray, axis: int) -> np.ndarray:
    """``p[i]``: mean over the plane of the embedding gradient magnitude between planes
    ``i`` and ``i + 1`` along spatial ``axis`` of ``emb`` ``(E, *S)``."""
    d = np.diff(emb.astype(np.float64), axis=axis + 1)
    mag = np.sqrt((d**2).sum(axis=0))
    return mag.mean(axis=tuple(a for a in range(mag.ndim) if a != axis))


def seam_planes(length: int, tile: int, offset: int = 0) -> list[int]:
    """Planes ``i`` (region coordinates) where a tile starts inside the region: the seam lies
    between ``i - 1`` and ``i``; ``offset``: the region's start relative to the tile grid's anchor."""
    return [i for i in range(1, length) if (i + offset) % tile == 0]


def seam_ratio(emb: np.ndarray, axis: int, tile: int, step: int, offset: int = 0) -> dict[str, Any] | None:
    """Gradient across the seams along ``axis`` vs across same-phase planes inside tiles; None
    without a seam (one tile) or without a same-phase reference plane."""
    profile = gradient_profile(emb, axis)
    length = emb.shape[axis + 1]
    seams = seam_planes(length, tile, offset)
    if not seams:
        return None
    refs = [[j for j in range(1, length) if j % step == i % step and j not in seams] for i in seams]
    if not all(refs):
        return None
    seam = float(np.mean([profile[i - 1] for i in seams]))
    inside = float(np.mean([np.mean([profile[j - 1] for j in r]) for r in refs]))
    return {"axis": axis, "seams": len(seams), "seam": seam, "inside": inside, "ratio": seam / inside if inside else None}


def seam_ratios(emb: np.ndarray, tile: Sequence[int], step: Sequence[int], offset: Sequence[int] | None = None) -> dict[str, Any]:
    """:func:`seam_ratio` on every axis with seams, and their seam-count weighted pool."""
    offset = offset or (0,) * len(tile)
    axes = [r for a in range(emb.ndim - 1) if (r := seam_ratio(emb, a, tile[a], step[a], offset[a])) is not None]
    if not axes:
        return {"axes": [], "ratio": None}
    seam = sum(r["seam"] * r["seams"] for r in axes)
    inside = sum(r["inside"] * r["seams"] for r in axes)
    return {"axes": axes, "ratio": seam / inside if inside else None}


def seam_profile(emb: np.ndarray, axis: int, seam: int, width: int) -> np.ndarray:
    """Gradient magnitude across planes ``seam - width .. seam + width - 1`` (the seam is
    between ``seam - 1`` and ``seam``): the picture of supplementary Fig. 1c."""
    profile = gradient_profile(emb, axis)
    lo, hi = max(seam - width, 1), min(seam + width, len(profile) + 1)
    return np.array([profile[i - 1] for i in range(lo, hi)])
