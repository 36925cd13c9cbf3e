"""``output.tracker_maps``: what trackers that take foreground and contour maps read (Ultrack's
``foreground`` and ``contours``), made from the labels block by block.

``foreground`` is 1 where a voxel belongs to an object; ``contours`` is 1 on the objects' inner
boundaries: a voxel of an object with a face neighbour of another label or of background, the same
as scikit-image's ``find_boundaries(labels, connectivity=1, mode="inner")`` on the whole volume (a
block is read with one voxel around it, none beyond the volume's edge). Both uint8, (t, z, y, x) for a
time-lapse (one time point written at a time), like the segmentation otherwise; same chunks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..geometry import Box
from ..volume.io import create_array, open_group, write_region

FOREGROUND, CONTOURS = "foreground", "contours"


def inner_boundaries(labels: np.ndarray) -> np.ndarray:
    """True on object voxels with a face neighbour of another label (background included)."""
    edge = np.zeros(labels.shape, bool)
    for axis in range(labels.ndim):
        a = [slice(None)] * labels.ndim
        b = [slice(None)] * labels.ndim
        a[axis], b[axis] = slice(1, None), slice(None, -1)
        differs = labels[tuple(a)] != labels[tuple(b)]
        edge[tuple(a)] |= differs
        edge[tuple(b)] |= differs
    return edge & (labels > 0)


def maps_of(labels: np.ndarray, inner: tuple[slice, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Foreground and contours of ``labels[inner]``, from ``labels`` read around it."""
    return (labels[inner] > 0).astype(np.uint8), inner_boundaries(labels)[inner].astype(np.uint8)


def create_maps(group: Path, seg: zarr.Array, timepoints: int | None) -> None:
    """The two arrays of ``group`` for labels like ``seg`` (a (t, ...) stack of ``timepoints``)."""
    lead = (timepoints,) if timepoints else ()
    dims = ("t", *"zyx"[-seg.ndim:]) if timepoints else tuple("zyx"[-seg.ndim:])
    for name in (FOREGROUND, CONTOURS):
        create_array(open_group(group), name, (*lead, *seg.shape), (*((1,) if lead else ()), *seg.chunks), "uint8",
                     overwrite=True, dims=dims)


def write_maps(boxes: Sequence[Box], seg_path: str, group: str, t: int | None) -> int:
    """Task: the maps of ``boxes`` (chunks of the segmentation at ``seg_path``) into ``group``'s
    arrays (at time point ``t`` of a stack); how many voxels."""
    seg = zarr.open_array(seg_path, mode="r")
    out = {n: zarr.open_array(str(Path(group) / n), mode="r+") for n in (FOREGROUND, CONTOURS)}
    volume = Box.from_shape(tuple(seg.shape))
    done = 0
    for box in boxes:
        grown = box.grow(1).intersect(volume)
        labels = np.asarray(seg[grown.to_slices()])
        fg, edge = maps_of(labels, box.to_slices(relative_to=grown))
        lead = (slice(t, t + 1),) if t is not None else ()
        for name, data in ((FOREGROUND, fg), (CONTOURS, edge)):
            write_region(out[name], (*lead, *box.to_slices()), data[None] if lead else data)
        done += box.size
    return done


def tracker_maps(engine: Any, seg_path: Path, group: Path, t: int | None = None, per_task: int = 8) -> None:
    """Write the maps of the segmentation at ``seg_path`` (chunk by chunk, ``per_task`` chunks a task)."""
    seg = zarr.open_array(str(seg_path), mode="r")
    chunks = tuple(seg.chunks)
    grid = [range(0, n, c) for n, c in zip(seg.shape, chunks, strict=True)]
    boxes = [Box(o, tuple(min(c, n - a) for a, c, n in zip(o, chunks, seg.shape, strict=True)))
             for o in np.array(np.meshgrid(*grid, indexing="ij")).reshape(seg.ndim, -1).T.tolist()]
    batches = [boxes[i:i + per_task] for i in range(0, len(boxes), per_task)]
    for _ in engine.map(write_maps, batches, str(seg_path.resolve()), str(group), t, desc="tracker maps"):
        pass


__all__ = ["CONTOURS", "FOREGROUND", "create_maps", "inner_boundaries", "maps_of", "tracker_maps"]
