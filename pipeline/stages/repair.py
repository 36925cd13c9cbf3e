"""Repairing a finished output whose files were lost or damaged after it finished (``pipeline run
--repair``), without its scratch (fragments and merge tables are gone by then).

A damaged chunk of the segmentation is computed again by a *region run* (:mod:`pipeline.plan.region`)
over the chunk grown to hold every object the objects table says meets it, plus one voxel: those
objects are then clear of the computed box's edge, so the region run finds them exactly as the full
run did, only numbered otherwise. Each is given its full-run id from the intact segmentation around
the damaged chunks (any of its voxels there), or, for an object wholly inside them, from the objects
table row of the same voxel count and bounding box. The rewritten chunk is compared with the CRC-32
the manifest recorded: a repair is exact when they agree. A damaged chunk of a coarser label level
is computed again from the level below (label mode, :func:`pipeline.volume.ome.downsample_labels`).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..geometry import Box
from ..volume.errors import OutputError
from ..volume.ome import downsample_labels
from .ids import object_stats

logger = logging.getLogger(__name__)


def segmentation_path(root: Path) -> str:
    """Where the output's segmentation is written, relative to ``root`` (a linked label level)."""
    return os.path.relpath((root / "segmentation").resolve(), root.resolve())


def repair_region(boxes: Sequence[Box], objects: dict[str, np.ndarray], volume: Sequence[int]) -> Box:
    """The damaged ``boxes`` with the bounding boxes of every object that meets them, grown by one
    voxel (so those objects are clear of the region run's edge), clipped to ``volume``."""
    nd = len(volume)
    axes = "zyx"[-nd:]
    lo = np.array([b.offset for b in boxes]).min(0)
    hi = np.array([b.end for b in boxes]).max(0)
    if len(objects.get("id", ())):
        start = np.stack([objects[f"bbox_start_{a}"] for a in axes], 1)
        end = np.stack([objects[f"bbox_end_{a}"] for a in axes], 1)
        meets = np.zeros(len(start), bool)
        for b in boxes:
            meets |= np.all((start < np.array(b.end)) & (end > np.array(b.offset)), axis=1)
        if meets.any():
            lo, hi = np.minimum(lo, start[meets].min(0)), np.maximum(hi, end[meets].max(0))
    lo, hi = np.maximum(lo - 1, 0), np.minimum(hi + 1, np.array(volume))
    return Box(tuple(int(x) for x in lo), tuple(int(x) for x in hi - lo))


def full_ids(region_labels: np.ndarray, full: np.ndarray, trusted: np.ndarray, offset: Sequence[int],
             objects: dict[str, np.ndarray]) -> dict[int, int]:
    """Region-run id -> full-run id for every object of ``region_labels`` that meets an untrusted
    voxel: the full run's id where the object has trusted voxels in ``full``, else the objects
    table row with its voxel count and bounding box (``offset``: where the arrays start)."""
    wanted = np.unique(region_labels[~trusted])
    wanted = wanted[wanted > 0]
    out: dict[int, int] = {}
    seen = region_labels[trusted]
    seen_full = full[trusted]
    stats = object_stats(region_labels, tuple(offset))
    row = {int(i): k for k, i in enumerate(stats["id"])}
    nd = region_labels.ndim
    axes = "zyx"[-nd:]
    for r in wanted.tolist():
        ids = np.unique(seen_full[seen == r])
        if len(ids) == 1:
            out[r] = int(ids[0])
            continue
        if len(ids) > 1:
            raise OutputError(f"repair: a recomputed object meets full-run objects {ids[:4].tolist()}; the output "
                              "does not match its input or settings any more: rerun with --overwrite")
        k = row[r]
        same = objects["voxels"] == stats["count"][k]
        for i, a in enumerate(axes):
            same &= (objects[f"bbox_start_{a}"] == stats["lo"][k][i]) & (objects[f"bbox_end_{a}"] == stats["hi"][k][i])
        if same.sum() != 1:
            raise OutputError(f"repair: no single object of the objects table matches a recomputed one ({int(same.sum())} "
                              "found); rerun with --overwrite")
        out[r] = int(objects["id"][np.flatnonzero(same)[0]])
    return out


def relabel_with(labels: np.ndarray, mapping: dict[int, int], dtype: Any) -> np.ndarray:
    """``labels`` through ``mapping`` (ids not in it: 0), one lookup."""
    keys = np.array(sorted(mapping), dtype=np.int64)
    values = np.array([mapping[k] for k in keys.tolist()], dtype=dtype)
    pos = np.searchsorted(keys, labels)
    pos = np.minimum(pos, max(len(keys) - 1, 0))
    hit = (keys[pos] == labels) if len(keys) else np.zeros(labels.shape, bool)
    return np.where(hit, values[pos] if len(keys) else 0, 0).astype(dtype)


def level_factors(group: Path) -> list[tuple[int, ...]]:
    """Per level of the label image at ``group``, its integer factors over the level before
    (the first level: ones), from the multiscales scales."""
    meta = json.loads((group / "zarr.json").read_text()) if (group / "zarr.json").exists() else \
        json.loads((group / ".zattrs").read_text())
    attrs = meta.get("attributes", meta)
    multiscales = (attrs.get("ome") or attrs)["multiscales"][0]
    scales = [np.asarray(next(t["scale"] for t in d["coordinateTransformations"] if t["type"] == "scale"), float)
              for d in multiscales["datasets"]]
    out = [tuple(1 for _ in scales[0])]
    for a, b in itertools.pairwise(scales):
        out.append(tuple(max(1, round(float(x))) for x in b / a))
    return out


def recompute_level_chunk(group: Path, level: int, box: Box, factors: Sequence[int]) -> None:
    """Write the chunk ``box`` of label level ``level`` again from level ``level - 1``."""
    src = zarr.open_array(str(group / str(level - 1)), mode="r")
    dst = zarr.open_array(str(group / str(level)), mode="r+")
    spatial = len(factors)
    f = tuple(factors)[-spatial:]
    read = Box(tuple(o * x for o, x in zip(box.offset, f, strict=True)),
               tuple(s * x for s, x in zip(box.shape, f, strict=True))).intersect(Box.from_shape(src.shape))
    coarse = downsample_labels(np.asarray(src[read.to_slices()]), f)
    out = np.zeros(box.shape, dst.dtype)
    fit = tuple(slice(0, min(a, b)) for a, b in zip(box.shape, coarse.shape, strict=True))
    out[fit] = coarse[fit]
    dst[box.to_slices()] = out
