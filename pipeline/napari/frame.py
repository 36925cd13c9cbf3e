"""Layer data and where it lies in world coordinates: :data:`LayerData` (napari's ``(data, kwargs,
layer_type)`` tuple), the segmented grid's :class:`Frame`, and an OME-Zarr multiscales group's levels
with their world scale and translation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zarr

from ..volume.ome_metadata import global_transforms, input_pyramid
from .result import group_attrs, ome

LayerData = tuple[Any, dict[str, Any], str]
AXES = ("t", "z", "y", "x")  # the viewer's axis names (napari numbers them -3, -2, -1 otherwise); t: time-lapses


def with_axis_labels(layer: LayerData, nd: int | None = None) -> LayerData:
    """``layer`` with its axes named (the last ``nd`` of t, z, y, x; ``nd``: its scale's length)."""
    data, kwargs, kind = layer
    nd = len(kwargs["scale"]) if nd is None else nd
    return data, {**kwargs, "axis_labels": AXES[-nd:]}, kind


@dataclass(frozen=True)
class Frame:
    """World coordinates of the segmented grid: voxel ``i`` at ``origin + i * voxel_size``."""

    voxel_size: tuple[float, ...]
    origin: tuple[float, ...]

    def scaled(self, factor: Sequence[float], shift: Sequence[float]) -> dict[str, list[float]]:
        """``scale``/``translate`` of a layer whose voxel ``j`` is at segmented voxel ``shift + j * factor``."""
        return {"scale": [v * f for v, f in zip(self.voxel_size, factor, strict=True)],
                "translate": [o + s * v for o, s, v in zip(self.origin, shift, self.voxel_size, strict=True)]}


def level_transforms(attrs: dict[str, Any], arrays: Sequence[Any], spatial: Sequence[int]) -> tuple[list[float], list[float]]:
    """World scale and translation of level 0 of a multiscales image (global transforms applied)."""
    multiscale = ome(attrs)["multiscales"][0]
    level = input_pyramid(multiscale, [a.shape for a in arrays], spatial)[0]
    scale, translate = list(level.scale), list(level.translation)
    for t in global_transforms(multiscale, spatial) or []:
        if t["type"] == "scale":
            scale = [s * float(g) for s, g in zip(scale, t["scale"], strict=True)]
            translate = [o * float(g) for o, g in zip(translate, t["scale"], strict=True)]
        else:
            translate = [o + float(g) for o, g in zip(translate, t["translation"], strict=True)]
    return scale, translate


def multiscale_arrays(group: Path) -> tuple[list[Any], dict[str, Any]]:
    """The levels of an OME-Zarr multiscales group (zarr arrays: lazy) and the group's attributes."""
    attrs = group_attrs(group) or {}
    node = zarr.open_group(str(group), mode="r")
    return [node[d["path"]] for d in ome(attrs)["multiscales"][0]["datasets"]], attrs

