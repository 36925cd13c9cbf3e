"""Zarr and OME-Zarr inputs: a zarr array, an array named by ``input.dataset`` inside a group,
or an OME-Zarr image whose ``multiscales`` give the level (``input.scale_level``), the axes and
the voxel size. Opened lazily (metadata only), like :mod:`pipeline.volume.tiff` and
:mod:`pipeline.volume.hdf5`; :func:`pipeline.volume.io.open_input` dispatches."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import zarr

from ..config import InputConfig
from .errors import InputError
from .input_volume import SPATIAL, InputVolume

logger = logging.getLogger(__name__)


def open_zarr_node(path: Path, dataset: str | None) -> Any:
    if not path.exists():
        raise InputError(f"input.path: '{path}' does not exist (give an existing zarr, OME-Zarr, TIFF or HDF5 path)")
    try:
        node = zarr.open(store=str(path), mode="r")
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"input.path: '{path}' is not a zarr array or group ({exc})") from None
    if dataset is None:
        return node
    ms = ome_multiscales(dict(node.attrs)) if isinstance(node, zarr.Group) else None
    levels = [d.get("path") for d in ms[0].get("datasets", [])] if ms else []
    try:
        found = node[dataset]
    except (KeyError, TypeError):
        names = sorted(node.keys()) if isinstance(node, zarr.Group) else []
        if ms:
            raise InputError(
                f"input.dataset: '{path}' is an OME-Zarr image (levels {', '.join(map(str, levels))}) with no "
                f"'{dataset}'; remove input.dataset (input.scale_level picks a level)") from None
        raise InputError(
            f"input.dataset: no array '{dataset}' in '{path}' (available: {', '.join(names) or 'none'})"
        ) from None
    if dataset in levels:
        logger.warning("input.dataset '%s' is level %d of the OME-Zarr image '%s', read as a bare array (no voxel "
                       "size, pyramid or label image under the image); remove input.dataset and set "
                       "input.scale_level: %d", dataset, levels.index(dataset), path, levels.index(dataset))
    return found


def ome_multiscales(attrs: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The ``multiscales`` of OME-Zarr group attributes (NGFF 0.4, or 0.5 under ``ome``); None: none."""
    if "ome" in attrs and isinstance(attrs["ome"], dict):
        attrs = attrs["ome"]
    ms = attrs.get("multiscales")
    return ms if isinstance(ms, list) and ms else None


def open_zarr(cfg: InputConfig, where: str) -> InputVolume:
    """The zarr array or OME-Zarr image level ``cfg`` names (all channels)."""
    node = open_zarr_node(Path(cfg.path), cfg.dataset)
    ome = None
    if isinstance(node, zarr.Group):
        ms = ome_multiscales(dict(node.attrs))
        if ms is None:
            names = sorted(node.keys())
            raise InputError(
                f"input {where} is a zarr group without OME-Zarr multiscales; set input.dataset "
                f"to one of its arrays: {', '.join(names) or '(none)'}"
            )
        meta = ms[0]
        datasets = meta.get("datasets", [])
        if cfg.scale_level >= len(datasets):
            raise InputError(
                f"input.scale_level {cfg.scale_level} does not exist in {where}: it has "
                f"{len(datasets)} levels (0..{len(datasets) - 1})"
            )
        level = datasets[cfg.scale_level]
        array = node[level["path"]]
        axes_meta = meta.get("axes") or [{"name": n} for n in "tczyx"[-array.ndim :]]
        names = [(a["name"] if isinstance(a, dict) else str(a)).lower() for a in axes_meta]
        scale = None
        for t in level.get("coordinateTransformations", []):
            if t.get("type") == "scale":
                scale = t["scale"]
        units = [a.get("unit") if isinstance(a, dict) else None for a in axes_meta]
        axes = "".join(n if n in "tczyx" else "?" for n in names)
        if "?" in axes or len(axes) != array.ndim:
            raise InputError(f"input {where}: unsupported OME-Zarr axes {names} (use names among t, c, z, y, x)")
        sp = [i for i, a in enumerate(axes) if a in SPATIAL]
        voxel = tuple(float(scale[i]) for i in sp) if scale else None
        ome = {"multiscales": ms, "axes": [axes_meta[i] for i in sp]}
        vol = InputVolume(str(cfg.path), array, axes, voxel, tuple(units[i] for i in sp), ome)
    else:
        array = node
        named = getattr(array.metadata, "dimension_names", None)
        if named and all(n is not None for n in named):  # zarr v3 dimension_names: they say which axis is what
            axes = "".join(str(n).lower() for n in named)
            if not set(axes) >= {"y", "x"} or not set(axes) <= set("tczyx") or len(set(axes)) != len(axes):
                raise InputError(f"input {where} has dimension_names {list(named)}; name its axes among t, c, z, "
                                 "y, x (each once, y and x among them), or leave them unset")
            return InputVolume(str(cfg.path), array, axes)
        if array.ndim not in (2, 3, 4):
            raise InputError(
                f"input {where} has {array.ndim} dimensions {list(array.shape)}; expected 2D (yx), "
                "3D (zyx) or 4D (czyx), or zarr v3 dimension_names among t, c, z, y, x (e.g. t, z, y, x)"
            )
        axes = {2: "yx", 3: "zyx", 4: "czyx"}[array.ndim]
        vol = InputVolume(str(cfg.path), array, axes)
    return vol
