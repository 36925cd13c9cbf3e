"""A result as napari layer data (``(data, kwargs, layer_type)`` tuples), without Qt or napari.

What a result group (``result.zarr``) holds becomes, in world coordinates (the input's voxel
size and origin; voxel units without them):

* the input image (from the run's provenance, when it can be opened): lazily, every level of an
  OME-Zarr pyramid, contrast limits = the run's normalisation range (:mod:`.image`);
* the label image (``labels/<name>``, every level; else ``segmentation``) as a Labels layer
  (:mod:`.labels`), with the objects table as its ``features`` (``index`` = object id), a sample
  of at most :data:`.features.FEATURES_LIMIT` rows read from as few Parquet parts as that takes
  (the note says so; :mod:`.features`);
* the block grid as Shapes (lines on the y-x block borders, shown on every plane), blocks
  skipped as empty space as a coarse Labels layer (one voxel per block), and the seam audit's
  rejected pairs as Points where the two fragments touched (:mod:`.grid`).

Every layer names its axes z, y, x. Where a path leads (a result group, one of our label images, an OME-Zarr image holding one) is
:mod:`.result`; world coordinates and the layer tuple are :mod:`.frame`.

Nothing is read whole: arrays stay zarr/dask, the table and the seam records are read up to
their limits, the block grid costs one line per block border. Coordinates: voxel ``i`` of the
segmented grid is centred at ``i``; with ``input.diameter`` the blocks lie on the resampled
grid, whose voxel ``i`` is centred at input coordinate ``(i + 0.5) / zoom - 0.5``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import zarr

from ..runtime.timelapse import TIMEPOINTS
from .features import FEATURES_LIMIT
from .frame import Frame, LayerData, with_axis_labels
from .grid import Grid, grid_layer, seams_layer, skipped_layer
from .image import image_layer
from .labels import label_arrays, labels_layer
from .result import group_attrs


def result_layers(result: Path, limit: int = FEATURES_LIMIT) -> list[LayerData]:
    """Every layer of a result group (see the module docstring), image first."""
    meta = (group_attrs(result) or {}).get("pipeline", {})
    if meta.get("timelapse"):  # (t, z, y, x): the input at those time points and the label image
        first = (group_attrs(result / TIMEPOINTS / "t00000") or {}).get("pipeline", {})
        image, _ = image_layer(result / TIMEPOINTS / "t00000", first, meta["timepoints"])
        arrays, coords, name = label_arrays(result, meta, None)
        note = "a time-lapse: ids are per time point, the table (columns t, id, ...) is in objects/"
        labels = (arrays if len(arrays) > 1 else arrays[0], {"name": name, **coords, "multiscale": len(arrays) > 1,
                  "metadata": {"pipeline": {"result": str(result), "features_note": note}}}, "labels")
        if image is not None:  # the label image's time step
            image[1]["scale"][0] = coords["scale"][0]
        return [with_axis_labels(layer) for layer in ([image] if image else []) + [labels]]
    image, frame = image_layer(result, meta)
    layers = [image] if image else []
    labels = labels_layer(result, meta, frame, limit)
    if frame is None:  # no input: the segmented grid's frame is the label image's (or voxels)
        frame = Frame(tuple(labels[1]["scale"]), tuple(labels[1]["translate"]))
        first = labels[0][0] if isinstance(labels[0], list) else labels[0]
        seg = zarr.open_array(str(result / "segmentation"), mode="r")
        if tuple(first.shape) != tuple(seg.shape):  # level 0 finer than the segmentation: unknown frame
            frame = Frame((1.0,) * seg.ndim, (0.0,) * seg.ndim)
    layers.append(labels)
    plan = meta.get("plan")
    if plan:
        grid = Grid.of(plan)
        if len(grid.write) >= 2:
            layers.append(grid_layer(grid, frame))
        for extra in (skipped_layer(result, grid, frame), seams_layer(result, grid, frame)):
            if extra is not None:
                layers.append(extra)
    return [with_axis_labels(layer) for layer in layers]


def describe(layers: Sequence[LayerData]) -> str:
    """One line per layer (name, type, shape): for logs and tests."""
    out = []
    for data, kwargs, kind in layers:
        first = data[0] if isinstance(data, list) and kind in ("image", "labels") else data
        shape = first.shape if hasattr(first, "shape") else (len(data),)
        out.append(json.dumps({"name": kwargs.get("name"), "type": kind, "shape": list(shape)}))
    return "\n".join(out)
