"""What the report looks at, chosen so that a terabyte result costs what a small one does:
windows of at most ``FOV`` voxels per axis around a position (orthogonal planes), an
overview box of at most ``OVERVIEW`` voxels (the whole volume when it is small, else a
crop around the busiest place), positions chosen from the objects table (no voxel read),
and that table read column-wise. Pure functions on shapes and arrays, plus readers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..geometry import Box, Coord

FOV = 512  # plane windows: voxels per axis
OVERVIEW = 1 << 25  # voxels read for the projections


def window(shape: Sequence[int], centre: Sequence[int], size: Sequence[int]) -> Box:
    """A box of ``size`` (clipped to the volume) centred on ``centre``, inside the volume."""
    offset, extent = [], []
    for n, c, s in zip(shape, centre, size, strict=True):
        s = min(s, n)
        o = min(max(c - s // 2, 0), n - s)
        offset.append(o)
        extent.append(s)
    return Box(tuple(offset), tuple(extent))


def plane_box(shape: Sequence[int], centre: Sequence[int], axis: int, fov: int = FOV) -> Box:
    """The window of the plane through ``centre`` normal to ``axis``."""
    size = [1 if a == axis else fov for a in range(len(shape))]
    box = window(shape, centre, size)
    offset = list(box.offset)
    offset[axis] = min(max(int(centre[axis]), 0), shape[axis] - 1)
    return Box(tuple(offset), box.shape)


def overview_box(shape: Sequence[int], centre: Sequence[int], voxels: int = OVERVIEW) -> Box:
    """The whole volume if it has at most ``voxels``, else a crop around ``centre`` as deep
    as the volume up to 64 planes, square in the other axes."""
    if math.prod(shape) <= voxels:
        return Box.from_shape(tuple(shape))
    depth = min(shape[0], 64)
    side = int(math.sqrt(voxels / depth))
    return window(shape, centre, (depth, *[side] * (len(shape) - 1)))


def busy_positions(centroids: np.ndarray, shape: Sequence[int], k: int = 2, exclude: Sequence[int] | None = None) -> list[Coord]:
    """Up to ``k`` positions where object centroids are densest: the mean centroid of the
    fullest cells of a coarse grid (at most 8 cells per axis), skipping the cell of ``exclude``."""
    if not len(centroids):
        return []
    cells = np.array([max(1, min(8, n // 16)) for n in shape])
    idx = np.minimum((centroids / np.asarray(shape) * cells).astype(np.int64), cells - 1)
    lin = np.ravel_multi_index(idx.T, cells)
    counts = np.bincount(lin, minlength=int(np.prod(cells)))
    skip = None
    if exclude is not None:
        skip = int(np.ravel_multi_index(tuple(min(int(e * c / n), c - 1) for e, c, n in zip(exclude, cells, shape, strict=True)), cells))
    out: list[Coord] = []
    for cell in np.argsort(-counts, kind="stable"):
        if counts[cell] == 0 or len(out) == k:
            break
        if cell == skip:
            continue
        out.append(tuple(int(np.round(v)) for v in centroids[lin == cell].mean(axis=0)))
    return out


def read_objects(result: Path, max_parts: int = 4) -> dict[str, np.ndarray]:
    """The objects table as columns, from its Parquet parts: all of them for results of up to
    ``max_parts`` parts (4 million objects), else that many parts spread over the id range
    (a sample for the histograms)."""
    from ..stages.objects import part_files
    from ..stages.objects import read_objects as read_parts

    parts = part_files(result)
    if len(parts) > max_parts:
        parts = [parts[round(i)] for i in np.linspace(0, len(parts) - 1, max_parts)]
    return read_parts(result, parts)


def object_columns(objects: dict[str, Any], ndim: int, voxel_size: Sequence[float] | None) -> dict[str, np.ndarray]:
    """Sizes, centroids and shape measures: bounding-box elongation (longest / shortest
    physical extent) and fill (voxels / bounding-box voxels)."""
    axes = "zyx"[-ndim:]
    if "voxels" not in objects or not len(objects["voxels"]):
        return {"voxels": np.zeros(0), "centroids": np.zeros((0, ndim)), "elongation": np.zeros(0), "fill": np.zeros(0)}
    ext = np.stack([objects[f"bbox_end_{a}"] - objects[f"bbox_start_{a}"] for a in axes], axis=1).astype(np.float64)
    phys = ext * np.asarray(voxel_size or [1.0] * ndim)
    return {"voxels": np.asarray(objects["voxels"], np.float64),
            "centroids": np.stack([objects[f"centroid_{a}"] for a in axes], axis=1).astype(np.float64),
            "elongation": phys.max(axis=1) / np.maximum(phys.min(axis=1), 1e-9),
            "fill": np.asarray(objects["voxels"], np.float64) / ext.prod(axis=1)}


def stretch(image: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """Intensities to [0, 1] between two percentiles of the image."""
    image = np.asarray(image, np.float64)
    if not image.size:
        return image
    lo, hi = np.percentile(image, [low, high])
    return np.clip((image - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)


def colours(labels: np.ndarray) -> np.ndarray:
    """An RGB colour per voxel: a fixed pseudo-random hue per id, black background."""
    ids = labels.astype(np.uint64)
    hue = ((ids * np.uint64(2654435761)) % np.uint64(1000)).astype(np.float64) / 1000.0
    h6 = hue * 6
    x = 1 - np.abs(h6 % 2 - 1)
    sector = h6.astype(np.int64) % 6
    r = np.choose(sector, [1, x, 0, 0, x, 1])
    g = np.choose(sector, [x, 1, 1, x, 0, 0])
    b = np.choose(sector, [0, 0, x, 1, 1, x])
    rgb = np.stack([r, g, b], axis=-1) * 0.9 + 0.1
    rgb[labels == 0] = 0
    return rgb


def overlay(raw: np.ndarray, labels: np.ndarray, alpha: float = 0.35) -> np.ndarray:
    """RGB: the stretched raw image in grey, labelled voxels tinted, object borders drawn."""
    grey = np.repeat(stretch(raw)[..., None], 3, axis=-1)
    fg = labels > 0
    out = grey.copy()
    out[fg] = (1 - alpha) * grey[fg] + alpha * colours(labels)[fg]
    border = np.zeros_like(fg)
    for ax in range(labels.ndim):
        d = np.diff(labels, axis=ax) != 0
        lo = [slice(None)] * labels.ndim
        hi = [slice(None)] * labels.ndim
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        border[tuple(lo)] |= d
        border[tuple(hi)] |= d
    border &= fg
    out[border] = colours(labels)[border]
    return out
