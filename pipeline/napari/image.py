"""The run's input as an Image layer: lazily, every level of an OME-Zarr pyramid, in world
coordinates, contrast limits = the run's normalisation range; the layer records its source and the
run's block settings for the widgets."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..config import InputConfig
from ..volume.io import open_input
from ..volume.ome_metadata import physical_grid
from .frame import Frame, LayerData, level_transforms, multiscale_arrays
from .result import resolve

logger = logging.getLogger(__name__)

KEPT = ("blocks", "empty", "merge")  # config sections of the run that a widget's preview or run keeps


def spatial_view(array: Any, axes: str, channel: int | None, timepoint: int = 0,
                 times: list[int] | None = None) -> tuple[Any, bool]:
    """``array`` as a lazy dask array of its spatial axes (t: ``timepoint``, or the time points
    ``times`` as a first axis; c: the run's channel, else every channel first); True when a
    channel axis is kept."""
    import dask.array as da

    chunks = getattr(array, "chunks", None)
    data = da.from_array(array, chunks=chunks if chunks else "auto")
    keep_t = times is not None and "t" in axes
    index = tuple((times if keep_t else timepoint) if a == "t" else
                  (channel if channel is not None else slice(None)) if a == "c" else slice(None) for a in axes)
    data = data[index]
    kept = [a for a in axes if (a != "t" or keep_t) and (a != "c" or channel is None)]
    if keep_t:
        data, kept = da.moveaxis(data, kept.index("t"), 0), ["t", *(a for a in kept if a != "t")]
    if "c" in kept:
        return da.moveaxis(data, kept.index("c"), 0), True
    return data, False


def image_layer(result: Path, meta: dict[str, Any], times: list[int] | None = None) -> tuple[LayerData | None, Frame | None]:
    """The run's input as an Image layer (every level of an OME-Zarr pyramid; ``times``: these
    time points as a first axis) and the segmented grid's frame; (None, None) when the input
    recorded in the provenance cannot be opened."""
    recorded = meta.get("config", {}).get("input")
    where = resolve(recorded["path"], result) if recorded else None
    if where is None:
        logger.info("the run's input '%s' is not found from here: labels only", recorded and recorded["path"])
        return None, None
    cfg = InputConfig.model_validate({**recorded, "path": str(where)})
    try:
        vol = open_input(cfg)
    except Exception as exc:  # noqa: BLE001 - moved, rewritten, unreadable: show the labels without it
        logger.info("the run's input '%s' cannot be opened (%s): labels only", where, exc)
        return None, None
    grid = physical_grid(vol, cfg.scale_level)
    frame = Frame(*grid) if grid else Frame((1.0,) * vol.ndim, (0.0,) * vol.ndim)
    if vol.ome is not None:
        group = Path(cfg.path) / cfg.dataset if cfg.dataset else Path(cfg.path)
        arrays, attrs = multiscale_arrays(group)
        scale, translate = level_transforms(attrs, arrays, vol.spatial_axes)
    else:
        arrays, scale, translate = [vol.array], list(frame.voxel_size), list(frame.origin)
    views = [spatial_view(a, vol.axes, cfg.channel, vol.timepoint, times if vol.timepoints > 1 else None) for a in arrays]
    if times is not None and vol.timepoints > 1 and "t" not in vol.axes:  # time points kept apart (Imaris, BDV): one
        return None, frame
    if times is not None and "t" in vol.axes:
        scale, translate = [1.0, *scale], [0.0, *translate]
    data = [v[0] for v in views]
    norm = meta.get("normalisation") or {}
    config = meta.get("config", {})
    kept = {k: config[k] for k in KEPT if k in config}  # a preview or a new run on this image keeps its blocks
    if (meta.get("plan") or {}).get("write_shape"):  # the plan's, also when it was chosen automatically
        kept["blocks"] = {**kept.get("blocks", {}), "write_shape": meta["plan"]["write_shape"]}
    kwargs: dict[str, Any] = {"name": Path(cfg.path).stem + (f" {cfg.dataset}" if cfg.dataset else ""),
                              "scale": scale, "translate": translate, "multiscale": len(data) > 1,
                              "metadata": {"pipeline": {"input": {**recorded, "path": str(where)}, "run": kept,
                                                        "opened_from": str(result)}}}
    if times is not None and "t" in vol.axes:  # the input's time point of each step of the layer's t axis
        kwargs["metadata"]["pipeline"]["timepoints"] = list(times)
    if "offset" in norm and "scale" in norm:  # what the network saw as 0..1
        kwargs["contrast_limits"] = [float(norm["offset"]), float(norm["offset"]) + float(norm["scale"])]
    if views[0][1]:
        kwargs["channel_axis"] = 0
    return (data if len(data) > 1 else data[0], kwargs, "image"), frame

