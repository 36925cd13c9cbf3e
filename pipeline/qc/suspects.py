"""Objects to check: where a model most likely erred, so a person knows where to annotate.

:func:`pick` takes the extremes of the objects table: the largest objects for their median
size (two nuclei merged?), the smallest (a fragment, debris?), the least compact (voxels /
bounding box: merged, or grown into background?) and those spanning the most blocks (merged
across many block faces). :func:`disagreement` then scores each against the model's own
foreground, predicted again around it: the share of the object the model calls background,
plus the foreground next to it that no object claims. Pure functions on numpy arrays; the
report reads the boxes and runs the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from ..geometry import Box


@dataclass(frozen=True)
class Suspect:
    id: int
    reason: str
    bbox: Box
    centroid: tuple[float, ...]
    voxels: int


def pick(objects: dict[str, Any], ndim: int, per_reason: int = 2) -> list[Suspect]:
    """Up to ``per_reason`` objects for each reason (an object once, under its first reason)."""
    axes = "zyx"[-ndim:]
    if "voxels" not in objects or len(objects["voxels"]) < 2:
        return []
    voxels = np.asarray(objects["voxels"], np.float64)
    lo = np.stack([np.asarray(objects[f"bbox_start_{a}"]) for a in axes], 1).astype(np.int64)
    hi = np.stack([np.asarray(objects[f"bbox_end_{a}"]) for a in axes], 1).astype(np.int64)
    fill = voxels / np.prod(hi - lo, axis=1)
    median = float(np.median(voxels))
    blocks = np.asarray(objects.get("blocks", np.ones(voxels.size)), np.float64)
    ranked = [(lambda i: f"{voxels[i] / median:.1f}x the median size: merged nuclei?", -voxels, voxels > 0),
              (lambda i: f"{voxels[i] / median:.2f}x the median size: a fragment or debris?", voxels, voxels > 0),
              (lambda i: f"fills {fill[i]:.0%} of its box: merged, or grown into background?", fill, voxels > 0),
              (lambda i: f"spans {int(blocks[i])} blocks: merged across block faces", -blocks, blocks > 1)]
    chosen: dict[int, str] = {}
    for describe, key, eligible in ranked:
        order = [int(i) for i in np.argsort(key, kind="stable") if eligible[i] and int(i) not in chosen]
        for i in order[:per_reason]:
            chosen[i] = describe(i)
    cent = np.stack([np.asarray(objects[f"centroid_{a}"]) for a in axes], 1)
    return [Suspect(int(objects["id"][i]), reason, Box(tuple(lo[i]), tuple(hi[i] - lo[i])), tuple(cent[i]),
                    int(voxels[i])) for i, reason in chosen.items()]


def view_box(s: Suspect, shape: tuple[int, ...], margin: int = 4, fov: int = 128) -> Box:
    """The object's bounding box grown by ``margin``, at most ``fov`` per axis (around its
    centroid), inside the volume."""
    box = s.bbox.grow(margin).intersect(Box.from_shape(shape))
    offset, extent = [], []
    for o, n, c, size in zip(box.offset, box.shape, s.centroid, shape, strict=True):
        if n > fov:
            o, n = int(min(max(0, round(c) - fov // 2), size - fov)), fov
        offset.append(o)
        extent.append(n)
    return Box(tuple(offset), tuple(extent))


def disagreement(labels: np.ndarray, obj: int, foreground: np.ndarray, threshold: float, near: int = 2) -> float:
    """Share of the object and its foreground surroundings on which labels and model disagree:
    object voxels with foreground below ``threshold``, plus foreground voxels within ``near``
    voxels of the object that no object claims, over the union of the object and that foreground."""
    mine = labels == obj
    fg = foreground > threshold
    around = ndimage.binary_dilation(mine, iterations=near) & fg
    union = int((mine | around).sum())
    if union == 0:
        return 0.0
    return float(((mine & ~fg).sum() + (around & (labels == 0)).sum()) / union)
