"""The label image as a Labels layer: every level of ``labels/<name>`` (else ``segmentation``) in
world coordinates, the objects table as its ``features``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zarr

from .features import FEATURES_LIMIT, objects_features
from .frame import Frame, LayerData, level_transforms, multiscale_arrays
from .result import label_image_of


def label_arrays(result: Path, meta: dict[str, Any], frame: Frame | None) -> tuple[list[Any], dict[str, Any], str]:
    """The label image's levels with its scale/translation (NGFF metadata), else ``segmentation``."""
    group = label_image_of(result, meta)
    if group is not None:
        arrays, attrs = multiscale_arrays(group)
        nd = len(arrays[0].shape)
        scale, translate = level_transforms(attrs, arrays, list(range(nd)))
        return arrays, {"scale": scale, "translate": translate}, group.name
    seg = zarr.open_array(str(result / "segmentation"), mode="r")
    f = frame or Frame((1.0,) * seg.ndim, (0.0,) * seg.ndim)
    return [seg], {"scale": list(f.voxel_size), "translate": list(f.origin)}, "segmentation"


def labels_layer(result: Path, meta: dict[str, Any], frame: Frame | None, limit: int = FEATURES_LIMIT) -> LayerData:
    arrays, coords, name = label_arrays(result, meta, frame)
    features, note = objects_features(result, limit)
    kwargs = {"name": name, **coords, "multiscale": len(arrays) > 1, "features": features,
              "metadata": {"pipeline": {"result": str(result), "features_note": note,
                                        "region": meta.get("region")}}}
    return (arrays if len(arrays) > 1 else arrays[0], kwargs, "labels")
