"""Keeping corrections made in the viewer. No Qt here.

* :func:`save_label_image`: corrected labels of a box as a new OME-Zarr label image of the result
  (``labels/<name>``, never over an existing one without ``overwrite``): the original label image's
  levels are copied (chunk files, no decoding), the box is written into the segmented level, and the
  coarser levels' task boxes that the box touches are recomputed by the labels stage itself
  (:class:`pipeline.stages.labels.LabelsStage`); metadata by :mod:`pipeline.volume.ome_metadata`.
* :func:`save_crop`: a training crop for ``pipeline train``: a zarr group with ``image``, ``labels``
  and ``annotated`` (uint8, 1 = this voxel's label is known: 0 background, > 0 an object), and the
  train YAML listing every crop of the folder (``init:`` the model the labels came from).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
import zarr

from ..geometry import Box
from ..plan.labels import LabelTarget
from ..plan.region import covering_blocks
from ..runtime.store import Store
from ..stages.labels import LabelsStage, _level_plan
from ..volume.errors import OutputError
from ..volume.io import write_zarr
from ..volume.ome import plan_levels
from ..volume.ome_metadata import input_pyramid
from .result import group_attrs, ome

logger = logging.getLogger(__name__)

CROP_GLOB = "crop-*.zarr"


def annotated_mask(before: np.ndarray, after: np.ndarray, whole: bool = False, ring: int = 2) -> np.ndarray:
    """Voxels whose label a correction makes known (uint8): every voxel of each object that a
    change touched, before and after it (painted, erased, split, merged), and the background within
    ``ring`` voxels of them (whoever corrected an object saw where it ends); or the whole crop when
    the user checked all of it. Untouched objects are not known to be right, so they stay out."""
    from scipy import ndimage

    if whole:
        return np.ones(after.shape, np.uint8)
    changed = before != after
    ids_before = np.unique(before[changed])
    ids_after = np.unique(after[changed])
    known = changed | np.isin(before, ids_before[ids_before > 0]) | np.isin(after, ids_after[ids_after > 0])
    if ring and known.any():
        known |= ndimage.binary_dilation(known, iterations=ring) & (after == 0)
    return known.astype(np.uint8)


def label_target(group: Path, segmented_shape: Sequence[int], name: str) -> LabelTarget:
    """The target of a label image like ``group`` (one of ours) named ``name``: same levels, axes,
    NGFF version and key image, from ``group``'s metadata."""
    attrs = group_attrs(group)
    if not attrs or "multiscales" not in ome(attrs):
        raise OutputError(f"'{group}' is not an OME-Zarr label image")
    meta = ome(attrs)
    multiscale = meta["multiscales"][0]
    node = zarr.open_group(str(group), mode="r")
    shapes = [node[d["path"]].shape for d in multiscale["datasets"]]
    pyramid = input_pyramid(multiscale, shapes, list(range(len(shapes[0]))))
    matches = [i for i, s in enumerate(shapes) if tuple(s) == tuple(segmented_shape)]
    if not matches:
        raise OutputError(f"no level of '{group}' has the segmentation's shape {list(segmented_shape)}")
    k = matches[0]
    levels = plan_levels(pyramid[k], pyramid, k, under_image=True)
    if any(lv.kind == "up" for lv in levels):
        raise OutputError(f"'{group}' has levels finer than the segmentation (a run at input.scale_level > 0): "
                          "saving corrections into it is not supported yet; save a training crop instead")
    version = "0.4" if node.metadata.zarr_format == 2 else str(meta.get("version", "0.5"))
    source = meta.get("image-label", {}).get("source", {}).get("image")
    global_ct = multiscale.get("coordinateTransformations")
    return LabelTarget("standalone", group.parent / name, name, version, tuple(levels),
                       tuple(multiscale["axes"]), source, tuple(global_ct) if global_ct else None)


def touched_boxes(target: LabelTarget, index: int, box: Box) -> list[int]:
    """Task boxes (linear indices) of level ``index`` whose values depend on ``box`` of the segmented level."""
    factor = [1] * len(box.shape)
    for lv in target.levels[1 : index + 1]:
        factor = [f * g for f, g in zip(factor, lv.factors, strict=True)]
    level = target.levels[index]
    lo = [o // f for o, f in zip(box.offset, factor, strict=True)]
    hi = [-(-e // f) for e, f in zip(box.end, factor, strict=True)]
    plan = _level_plan(level)
    return covering_blocks(plan, Box(tuple(lo), tuple(h - q for q, h in zip(lo, hi, strict=True))))


def save_label_image(result: Path, source: Path, labels: np.ndarray, box: Box, name: str,
                     overwrite: bool = False) -> Path:
    """Write ``labels`` (the corrected voxels of ``box``, segmented grid) into a label image of
    ``result`` named ``name``: a copy of the label image ``source`` with the correction (``source``
    itself only with ``overwrite``; the run's own label image is its ``segmentation``, which then
    changes too). Returns the label image group."""
    seg = zarr.open_array(str(result / "segmentation"), mode="r")
    if labels.shape != tuple(box.shape):
        raise OutputError(f"corrected labels {list(labels.shape)} do not fit the box {list(box.shape)}")
    if not Box.from_shape(seg.shape).contains(box):
        raise OutputError(f"box {box} is not inside the segmentation {list(seg.shape)}")
    target = label_target(source, seg.shape, name)
    if target.group.exists() and not overwrite:
        raise OutputError(f"label image '{target.group}' already exists; choose another name, or overwrite it "
                          "explicitly")
    if target.group.resolve() != source.resolve():
        if target.group.exists():
            shutil.rmtree(target.group)
        shutil.copytree(source, target.group)
    k = next(i for i, lv in enumerate(target.levels) if lv.kind == "copy")
    copy = zarr.open_array(str(target.group / target.levels[k].path), mode="r+")
    if np.asarray(labels).max(initial=0) > np.iinfo(copy.dtype).max:
        raise OutputError(f"label ids above {np.iinfo(copy.dtype).max} do not fit the label image's {copy.dtype}")
    copy[box.to_slices()] = np.asarray(labels).astype(copy.dtype)
    if (result / "segmentation").is_symlink() and (result / "segmentation").resolve() == (
            target.group / target.levels[k].path).resolve():
        logger.warning("the run's own label image holds its segmentation (one array): %s now has the corrected "
                       "labels too; its objects table and QC describe the labels before the correction", result)
    with tempfile.TemporaryDirectory(prefix="pipeline-keep-") as scratch:  # the stage's done markers
        stage = LabelsStage(Store(scratch, "keep"), target, str(copy.dtype))
        for i in range(k + 1, len(target.levels)):  # coarser levels from the one before, where the box reaches
            stage.store.create_markers(stage.marker(target.levels[i]))
            stage.write(touched_boxes(target, i, box), i)
    LabelsStage(Store(str(result), "keep"), target, str(copy.dtype)).finish()  # metadata, labels/ list
    group = zarr.open_group(str(target.group), mode="r+")
    group.attrs.update({"pipeline": {**dict(group.attrs)["pipeline"], "corrected_from": source.name}})
    logger.info("corrected labels of %s written into %s", box, target.group)
    return target.group


def crop_yaml(folder: Path, init: str) -> dict[str, Any]:
    """The train YAML fragment listing every crop in ``folder`` (absolute paths: `pipeline train` reads
    paths relative to the folder it runs in)."""
    entries = [{"image": str(c.resolve()), "image_dataset": "image", "labels": str(c.resolve()), "labels_dataset": "labels",
                "annotated": str(c.resolve()), "annotated_dataset": "annotated"} for c in sorted(folder.glob(CROP_GLOB))]
    return {"init": init, "data": entries}


def save_crop(folder: Path, image: np.ndarray, labels: np.ndarray, annotated: np.ndarray, init: str,
              box: Box | None = None) -> tuple[Path, Path]:
    """A new ``crop-NNN.zarr`` in ``folder`` and the folder's ``train.yaml`` (every crop listed).
    ``image``: ``(*shape)`` or ``(C, *shape)``; ``labels`` and ``annotated``: ``shape``."""
    if labels.shape != annotated.shape or image.shape[-labels.ndim :] != labels.shape:
        raise OutputError(f"crop shapes differ: image {list(image.shape)}, labels {list(labels.shape)}, "
                          f"annotated {list(annotated.shape)}")
    folder.mkdir(parents=True, exist_ok=True)
    n = len(list(folder.glob(CROP_GLOB)))
    while (folder / f"crop-{n:03d}.zarr").exists():
        n += 1
    path = folder / f"crop-{n:03d}.zarr"
    write_zarr(path, np.asarray(image), name="image")
    write_zarr(path, np.asarray(labels).astype(np.uint32), name="labels")
    write_zarr(path, (np.asarray(annotated) > 0).astype(np.uint8), name="annotated")
    if box is not None:
        zarr.open_group(str(path), mode="r+").attrs.update(
            {"pipeline": {"box": [list(box.offset), list(box.shape)], "init": init}})
    spec = folder / "train.yaml"
    spec.write_text("# training crops saved from napari; add a run's settings (out, iterations, ...) and run:\n"
                    "# pipeline train train.yaml\n" + yaml.safe_dump(crop_yaml(folder, init), sort_keys=False))
    return path, spec


__all__ = ["annotated_mask", "crop_yaml", "label_target", "save_crop", "save_label_image"]
