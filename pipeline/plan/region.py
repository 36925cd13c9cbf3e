"""Segmenting a region of a volume exactly as a full run would: the geometry.

A region run computes only the blocks of the *global* block plan (the one a full run uses)
that intersect the region, with the normalisation of the whole input and halos read from
the real volume (reflected only at the volume's own border). What it writes is therefore
what a full run writes there, up to what the merge across block faces and ``min_size``
see of the rest of the volume::

    volume  +-----------------------------------------------+
            |   computed box (whole blocks of the global    |
            |   +---------------------------+  grid)        |
            |   |  region  +-------+        |               |
            |   |          |       |   A    |  B            |
            |   |          +-------+       -|--             |
            |   +---------------------------+               |
            +-----------------------------------------------+

Fragments of a block depend on its read box alone, and whether two fragments merge depends
on the two faces they touch on alone, so the fragments of the computed blocks and the pairs
accepted between them are the full run's. An object of the full run is a connected set of
accepted pairs; if it has no voxel on the *edge* of the computed box (its outer planes that
are not the volume's own border), none of its fragments touches a block outside, so all of
its pairs lie between computed blocks and the region run finds the same object, of the
same size (so ``min_size`` decides the same). Objects on the edge (``B``) may be cut, and a
cut piece below ``min_size`` may be missing. A region run records the ids of the objects on
the edge (:func:`edge_planes`); every other object of its labels is exact (``A``), and every
object of the full run inside the computed box and clear of its edge is among them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from ..geometry import Box
from .blocks import BlockPlan

REGION = "region"  # the key of a region run's record in the output's ``pipeline`` attributes


class RegionError(UsageError):
    """A region that does not fit the volume."""


def parse_region(text: str, shape: Sequence[int]) -> Box:
    """``Z0:Z1,Y0:Y1,X0:X1`` (empty bounds: the volume's; negative: from the end) as a box inside ``shape``."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != len(shape) or any(p.count(":") != 1 for p in parts):
        raise RegionError(f"region '{text}' must be {len(shape)} ranges start:stop separated by commas, e.g. "
                          + ",".join(f"0:{n}" for n in shape))
    try:
        bounds = [slice(*(int(v) if v.strip() else None for v in p.split(":"))) for p in parts]
    except ValueError:
        raise RegionError(f"region '{text}': bounds must be integers, e.g. "
                          + ",".join(f"0:{n}" for n in shape)) from None
    return region_box([s.indices(n)[:2] for s, n in zip(bounds, shape, strict=True)], shape)


def region_box(bounds: Sequence[Sequence[int]], shape: Sequence[int]) -> Box:
    """``[(start, stop), ...]`` as a box, clipped to ``shape``; an empty result is an error."""
    if len(bounds) != len(shape):
        raise RegionError(f"region {[list(b) for b in bounds]} has {len(bounds)} axes, the volume {list(shape)} "
                          f"has {len(shape)}")
    start = [max(0, int(b[0])) for b in bounds]
    stop = [min(n, int(b[1])) for b, n in zip(bounds, shape, strict=True)]
    if any(e <= s for s, e in zip(start, stop, strict=True)):
        raise RegionError(f"region {[[int(b[0]), int(b[1])] for b in bounds]} holds no voxel of the volume "
                          f"{list(shape)}; give start < stop inside it on every axis")
    return Box(tuple(start), tuple(e - s for s, e in zip(start, stop, strict=True)))


def block_range(plan: BlockPlan, region: Box) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """First and last + 1 block index per axis of the blocks whose write box meets ``region``."""
    lo = tuple(o // w for o, w in zip(region.offset, plan.write_shape, strict=True))
    hi = tuple(min(g, -(-e // w)) for e, w, g in zip(region.end, plan.write_shape, plan.grid, strict=True))
    return lo, hi


def covering_blocks(plan: BlockPlan, region: Box) -> list[int]:
    """Linear indices (ascending) of the plan's blocks whose write box meets ``region``."""
    lo, hi = block_range(plan, region)
    out = []
    for idx in itertools.product(*(range(a, b) for a, b in zip(lo, hi, strict=True))):
        linear = 0
        for i, g in zip(idx, plan.grid, strict=True):
            linear = linear * g + i
        out.append(linear)
    return out


def computed_box(plan: BlockPlan, region: Box) -> Box:
    """The part of the volume the covering blocks write: whole blocks, clipped to the volume."""
    lo, hi = block_range(plan, region)
    start = tuple(a * w for a, w in zip(lo, plan.write_shape, strict=True))
    stop = tuple(min(b * w, n) for b, w, n in zip(hi, plan.write_shape, plan.volume, strict=True))
    return Box(start, tuple(e - s for s, e in zip(start, stop, strict=True)))


def edge_planes(box: Box, volume: Sequence[int]) -> list[Box]:
    """The one-voxel planes of ``box`` on its edge: its outer planes that are not the volume's border."""
    planes = []
    for axis in range(box.ndim):
        for at, inner in ((box.offset[axis], box.offset[axis] > 0), (box.end[axis] - 1, box.end[axis] < volume[axis])):
            if inner:
                offset = list(box.offset)
                shape = list(box.shape)
                offset[axis], shape[axis] = at, 1
                planes.append(Box(tuple(offset), tuple(shape)))
    return planes


def zoomed_region(region: Box, zoom: Sequence[float], zoomed: Sequence[int]) -> Box:
    """``region`` (input voxels) on the grid resampled by ``zoom`` (``input.diameter``): the
    resampled voxels its voxels take their labels from (see :func:`pipeline.volume.resample.nearest_indices`)."""
    start = [min(n - 1, math.floor((o + 0.5) * z)) for o, z, n in zip(region.offset, zoom, zoomed, strict=True)]
    stop = [min(n, math.floor((e - 0.5) * z) + 1) for e, z, n in zip(region.end, zoom, zoomed, strict=True)]
    return Box(tuple(start), tuple(max(1, e - s) for s, e in zip(start, stop, strict=True)))


def input_box(box: Box, zoom: Sequence[float], shape: Sequence[int], zoomed: Sequence[int]) -> Box:
    """The input voxels (of ``shape``) whose labels come from the resampled voxels (of ``zoomed``) in
    ``box``, the inverse of :func:`zoomed_region`: voxel ``j`` takes resampled voxel
    ``min(floor((j + 0.5) * zoom), zoomed - 1)``."""
    start = [max(0, math.ceil(o / z - 0.5)) if o else 0 for o, z in zip(box.offset, zoom, strict=True)]
    stop = [n if e >= m else min(n, math.ceil(e / z - 0.5))
            for e, z, n, m in zip(box.end, zoom, shape, zoomed, strict=True)]
    return Box(tuple(start), tuple(max(0, e - s) for s, e in zip(start, stop, strict=True)))


def edge_ids(array: Any, box: Box, volume: Sequence[int]) -> np.ndarray:
    """Sorted ids (> 0) of ``array`` on the edge planes of ``box``."""
    found = [np.unique(np.asarray(array[p.to_slices()])) for p in edge_planes(box, volume)]
    ids = np.unique(np.concatenate([np.zeros(0, np.uint64), *[f.astype(np.uint64) for f in found]]))
    return ids[ids > 0]


@dataclass(frozen=True)
class RegionRecord:
    """What a region run records (``attrs["pipeline"]["region"]`` of its output)."""

    requested: Box  # the region asked for, input voxels
    computed: Box  # the voxels the covering blocks wrote, input voxels (labels are 0 elsewhere)
    blocks: int  # blocks computed
    edge: tuple[int, ...]  # ids of the objects on the edge of the computed box: maybe cut

    def to_json(self) -> dict[str, Any]:
        return {"requested": [list(self.requested.offset), list(self.requested.shape)],
                "computed": [list(self.computed.offset), list(self.computed.shape)],
                "blocks": self.blocks, "edge_ids": [int(i) for i in self.edge]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RegionRecord:
        return cls(Box(*data["requested"]), Box(*data["computed"]), int(data["blocks"]),
                   tuple(int(i) for i in data["edge_ids"]))


def read_record(result: str | Path) -> RegionRecord:
    """The region record of a region run's output group."""
    from ..volume.errors import OutputError
    from ..volume.io import open_group

    meta = dict(open_group(result, mode="r").attrs).get("pipeline", {})
    if REGION not in meta:
        raise OutputError(f"'{result}' is not the output of a region run (no '{REGION}' in its attributes)")
    return RegionRecord.from_json(meta[REGION])


def exact_mask(labels: np.ndarray, edge: Sequence[int]) -> np.ndarray:
    """True where ``labels`` (of a region run's computed box) belong to an object clear of the edge."""
    return (labels > 0) & ~np.isin(labels, np.asarray(edge, dtype=labels.dtype))
