"""A finished result as its report reads it: the run's metadata (:func:`result_meta`, or a
:class:`ReportError`), its input (:func:`open_raw`), boxes of labels and raw image, the planes and max
projection shown, and the per-block columns of ``qc/blocks.npz`` as maps over the block grid."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from ..geometry import Box
from ..plan.blocks import BlockPlan
from ..volume.input_volume import InputVolume
from ..volume.io import open_group
from .views import FOV, overlay, plane_box, window

logger = logging.getLogger(__name__)

AXES = "zyx"


class ReportError(UsageError):
    """A path that is not a finished segmentation result."""


def result_meta(result: Path) -> dict[str, Any]:
    try:
        attrs = dict(open_group(result, mode="r").attrs)
    except Exception:  # noqa: BLE001 - missing or not zarr: one message
        raise ReportError(f"'{result}' is not a zarr group; give the output.path of a `pipeline run`") from None
    if "pipeline" not in attrs or not (result / "segmentation").exists():
        raise ReportError(f"'{result}' holds no segmentation made by `pipeline run`; give the output.path of a run")
    if not attrs.get("complete"):
        logger.warning("report: '%s' is not complete (an interrupted run); showing what is there", result)
    return dict(attrs["pipeline"])


def open_raw(config: dict[str, Any], result: Path) -> InputVolume | None:
    """The run's input, found as recorded or relative to the result's folder; None if gone."""
    from ..config import InputConfig
    from ..volume.io import open_input

    recorded = Path(config["input"]["path"])
    for path in (recorded, result.parent / recorded, result.parent / recorded.name):
        if path.exists():
            try:
                return open_input(InputConfig(path=path, dataset=config["input"].get("dataset"),
                                              scale_level=config["input"].get("scale_level", 0),
                                              channel=config["input"].get("channel"),
                                              timepoint=config["input"].get("timepoint")))
            except UsageError as exc:
                logger.warning("report: input '%s' cannot be read (%s)", path, exc)
                return None
    logger.warning("report: input '%s' not found; labels are shown without the raw image", recorded)
    return None


def read_box(seg: Any, raw: InputVolume | None, box: Box) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(seg[box.to_slices()])
    image = raw.read(box)[0] if raw is not None else np.zeros(labels.shape, np.float32)
    return image, labels


def plane_panels(seg: Any, raw: InputVolume | None, centre: tuple[int, ...], voxel: list[float]) -> list[tuple[str, np.ndarray, float]]:
    """The orthogonal planes through ``centre`` (3D), or the window (2D), as overlays."""
    shape = tuple(seg.shape)
    if len(shape) == 2:
        image, labels = read_box(seg, raw, window(shape, centre, (FOV, FOV)))
        return [("image", overlay(image, labels), voxel[0] / voxel[1])]
    panels = []
    for axis in range(3):
        box = plane_box(shape, centre, axis)
        image, labels = read_box(seg, raw, box)
        rest = [a for a in range(3) if a != axis]
        aspect = voxel[rest[0]] / voxel[rest[1]]
        panels.append((f"{AXES[axis]} = {box.offset[axis]} ({AXES[rest[0]]} down, {AXES[rest[1]]} across)",
                       overlay(image.squeeze(axis), labels.squeeze(axis)), aspect))
    return panels


def max_projection(seg: Any, raw: InputVolume | None, box: Box, slab: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Max projections along the first axis of the raw image and of the labels, read in slabs."""
    raw_mip = lab_mip = None
    for z in range(box.offset[0], box.offset[0] + box.shape[0], slab):
        part = Box((z, *box.offset[1:]), (min(slab, box.offset[0] + box.shape[0] - z), *box.shape[1:]))
        image, labels = read_box(seg, raw, part)
        raw_mip = image.max(0) if raw_mip is None else np.maximum(raw_mip, image.max(0))
        lab_mip = labels.max(0) if lab_mip is None else np.maximum(lab_mip, labels.max(0))
    assert raw_mip is not None and lab_mip is not None
    return raw_mip, lab_mip


def block_columns(result: Path, plan: BlockPlan) -> dict[str, np.ndarray]:
    """``qc/blocks.npz`` reshaped to the block grid (empty when the run kept none)."""
    path = result / "qc" / "blocks.npz"
    if not path.exists():
        return {}
    with np.load(path) as z:
        return {k: z[k].reshape(plan.grid) for k in z.files if z[k].size == len(plan)}


def block_maps(cols: dict[str, np.ndarray]) -> tuple[list[tuple[str, np.ndarray, str]], str]:
    """Maps over the (y, x) block grid, summed over the z layers of blocks."""
    def flat(a: np.ndarray) -> np.ndarray:
        return np.nansum(a, axis=0) if a.ndim == 3 else a

    time_s = np.nansum([cols[k] for k in ("predict_s", "cluster_s") if k in cols], axis=0) if cols else None
    maps = [("seconds (predict + cluster)", flat(np.asarray(time_s, np.float64)), "viridis"),
            ("fragments", flat(cols["count"].astype(np.float64)), "magma")]
    skipped = cols.get("skipped")
    maps.append(("skipped blocks", flat(skipped.astype(np.float64) if skipped is not None
                                        else np.zeros_like(cols["count"], np.float64)), "Oranges"))
    grid = cols["count"].shape
    note = (f"block grid {list(grid)}" + (f", summed over the {grid[0]} z layers of blocks" if len(grid) == 3 else "")
            + ("" if skipped is not None else "; this run records no skipped blocks"))
    return maps, note

