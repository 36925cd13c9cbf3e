"""Reading the viewer: what a layer records (its source on disk, its result, an edited copy), its
level-0 data and world frame, and the box of it the canvas shows or a drawn shape covers. No Qt here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from ..geometry import Box
from ..plan.region import region_box
from .frame import Frame


def pipeline_meta(layer: Any) -> dict[str, Any]:
    return (getattr(layer, "metadata", None) or {}).get("pipeline", {})


def source_of(layer: Any) -> dict[str, Any] | None:
    """The input config (path, dataset, ...) an image layer was read from, when it records one."""
    return pipeline_meta(layer).get("input")


def result_labels(layer: Any) -> bool:
    """A Labels layer of a result (not an edited copy)."""
    meta = pipeline_meta(layer)
    return layer._type_string == "labels" and bool(meta.get("result")) and not meta.get("edit")


def opened_result(layer: Any) -> Path | None:
    """The result a layer was opened from (its labels, or its input image shown beside them)."""
    meta = pipeline_meta(layer)
    where = meta.get("result") or meta.get("opened_from")
    return Path(where) if where else None


def free_path(path: Path) -> Path:
    """``path``, else ``<stem>-2<suffix>``, ``<stem>-3<suffix>``, ... beside it: the first that does not exist."""
    k = 2
    found = path
    while found.exists():
        found = path.with_name(f"{path.stem}-{k}{path.suffix}")
        k += 1
    return found


def proposed_path(layer: Any | None, name: str) -> Path:
    """Where a widget proposes to write for ``layer``: ``<result stem>-<name>`` beside the result it was
    opened from (the current folder when it records none), a name that is free."""
    result = opened_result(layer) if layer is not None else None
    if result is None:
        return free_path(Path.cwd() / name)
    return free_path(result.parent / f"{result.name.removesuffix('.zarr')}-{name}")


def level0(layer: Any) -> Any:
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def layer_frame(layer: Any) -> Frame:
    return Frame(tuple(float(s) for s in layer.scale), tuple(float(t) for t in layer.translate))


def view_box(viewer: Any, layer: Any) -> Box:
    """The part of ``layer`` (level 0 voxels) shown on the canvas: the displayed axes' corner pixels,
    the current plane on the others."""
    shape = level0(layer).shape
    corners = np.asarray(layer.corner_pixels, dtype=float)
    if getattr(layer, "multiscale", False):
        corners = corners * np.asarray(layer.downsample_factors[layer.data_level])
    point = np.asarray(layer.world_to_data(viewer.dims.point), dtype=float)
    bounds = []
    for axis, n in enumerate(shape):
        if axis in viewer.dims.displayed:
            bounds.append((int(np.floor(corners[0, axis])), int(np.ceil(corners[1, axis])) + 1))
        else:
            at = int(np.clip(np.round(point[axis]), 0, n - 1))
            bounds.append((at, at + 1))
    return region_box(bounds, shape)


def shapes_box(shapes: Any, layer: Any, viewer: Any) -> Box:
    """The last shape of a Shapes layer, as a box of ``layer`` (level 0 voxels); a planar shape
    takes the plane it was drawn on."""
    if not len(shapes.data):
        raise UsageError(f"the Shapes layer '{shapes.name}' has no shape; draw a rectangle first")
    verts = np.asarray(shapes.data[-1], dtype=float)
    world = np.asarray([shapes.data_to_world(v) for v in verts])
    data = np.asarray([layer.world_to_data(w) for w in world])
    shape = level0(layer).shape
    nd = len(shape)
    data = data[:, -nd:] if data.shape[1] >= nd else np.concatenate(
        [np.tile(np.asarray(layer.world_to_data(viewer.dims.point))[: nd - data.shape[1]], (len(data), 1)), data], 1)
    lo, hi = np.floor(data.min(0)).astype(int), np.ceil(data.max(0)).astype(int) + 1
    return region_box(list(zip(lo.tolist(), hi.tolist(), strict=True)), shape)

