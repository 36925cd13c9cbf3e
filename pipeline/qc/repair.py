"""``pipeline run --repair``: compute again the files of a finished output that ``pipeline verify
--integrity`` finds missing or damaged (:mod:`pipeline.qc.integrity`); the pure steps are
:mod:`pipeline.stages.repair`'s."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..plan.prepare import as_config, prepare
from ..run import ConfigLike, segment
from ..runtime.timelapse import restack, selected_timepoints, timelapse_parts
from ..stages.objects import read_objects
from ..stages.relabel import SEGMENTATION
from ..stages.repair import (
    full_ids,
    level_factors,
    recompute_level_chunk,
    relabel_with,
    repair_region,
    segmentation_path,
)
from ..volume.errors import OutputError
from ..volume.io import open_array
from .integrity import check_integrity

logger = logging.getLogger(__name__)


def repair(config: ConfigLike, client: Any = None, progress: bool = False) -> Path:
    """Compute again what :func:`pipeline.qc.integrity.check_integrity` finds missing or damaged in
    a finished output (see :mod:`pipeline.stages.repair`): segmentation chunks by a region run,
    coarser label levels from the level below; then check the manifest again. A time-lapse: each
    time point so, then its stacked label arrays put back (:func:`repair_timelapse`)."""
    cfg = as_config(config)
    timepoints = selected_timepoints(cfg)
    if timepoints is not None:
        return repair_timelapse(cfg, timepoints, client, progress)
    root = Path(cfg.output.path)
    found = check_integrity(root, restore=True)  # damaged metadata documents: their copies put back
    bad = found["damaged"]
    if not bad:
        logger.info("repair: all %d files of %s are as written; nothing to do", found["files"], root)
        return root
    if any(d["array"] is None for d in bad):  # the objects table
        raise OutputError(f"repair: {', '.join(d['path'] for d in bad if d['array'] is None)} of '{root}' cannot be made again "
                          "(made from the run's scratch, gone once the run finished): rerun with --overwrite")
    seg_rel = segmentation_path(root)
    boxes = [d["region"] for d in bad if d["array"] == seg_rel]
    for d in bad:  # a damaged chunk reads as an error, or as wrong labels: gone, it reads as the fill value
        if d["array"] == seg_rel:
            (root / d["path"]).unlink(missing_ok=True)
    if boxes:
        objects = read_objects(root)
        region = repair_region(boxes, objects, prepare(cfg).volume.shape)
        side = root.with_name(root.name + ".repair")
        logger.info("repair: %d segmentation chunk(s); computing the region %s again", len(boxes), region.describe())
        sub = cfg.model_dump(mode="json")
        sub["output"] = {**sub["output"], "path": str(side), "overwrite": True, "labels": "none"}
        segment(sub, client, progress, region=region)
        again = np.asarray(open_array(side / SEGMENTATION, mode="r")[region.to_slices()])
        seg = open_array(root / seg_rel, mode="r+")
        trusted = np.ones(region.shape, bool)
        for b in boxes:
            trusted[b.to_slices(relative_to=region)] = False
        mapping = full_ids(again, np.asarray(seg[region.to_slices()]), trusted, region.offset, objects)
        for b in boxes:
            seg[b.to_slices()] = relabel_with(again[b.to_slices(relative_to=region)], mapping, seg.dtype)
        shutil.rmtree(side, ignore_errors=True)
    for d in sorted((d for d in bad if d["array"] != seg_rel), key=lambda d: int(Path(d["array"]).name)):
        group, level = root / Path(d["array"]).parent, int(Path(d["array"]).name)
        recompute_level_chunk(group, level, d["region"], level_factors(group)[level])
    left = check_integrity(root)["damaged"]
    if left:
        raise OutputError(f"repair: {len(left)} file(s) still differ from what the run wrote (first {left[0]['path']}: "
                          f"{left[0]['why']}); the input or model changed since: rerun with --overwrite")
    logger.info("repair: %d file(s) computed again, each equal to what the run wrote (size and CRC-32)", len(bad))
    return root


def repair_timelapse(cfg: Any, timepoints: list[int], client: Any = None, progress: bool = False) -> Path:
    """A finished time-lapse: every time point's run repaired (:func:`repair`), then the stacked label
    arrays of the time points repaired or whose stacked files are damaged put back from them, and the
    objects table written again when damaged; then everything checked again."""
    root = Path(cfg.output.path)
    damaged = check_integrity(root, restore=True, timepoints=False)["damaged"]  # the stacks and the table
    again = {d["region"].offset[0] for d in damaged if d["region"] is not None}  # a stack's first axis: t
    for t, (sub, sub_cfg) in enumerate(timelapse_parts(cfg, timepoints)):
        if check_integrity(sub, restore=True)["damaged"]:
            logger.info("repair: time point %d (%s)", t, sub)
            repair(sub_cfg, client, progress)
            again.add(t)
    tables = any(d["region"] is None for d in damaged)
    restack(cfg, timepoints, sorted(again), tables)
    left = check_integrity(root)["damaged"]
    if left:
        raise OutputError(f"repair: {len(left)} file(s) still differ from what the run wrote (first {left[0]['path']}: "
                          f"{left[0]['why']}); rerun with --overwrite")
    logger.info("repair: time points %s put back; every file as the run wrote it", sorted(again) or "none")
    return root
