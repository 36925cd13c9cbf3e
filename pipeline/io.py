"""Reading and writing volumes: zarr v2/v3 arrays, OME-Zarr images; TIFF and HDF5 inputs
through :mod:`pipeline.formats`.

Inputs are opened lazily (metadata only) and read box by box; the output group's layout
belongs to :mod:`pipeline.store`. Reads take a
:class:`~pipeline.geometry.Box` in volume coordinates and reflect the volume at
its borders exactly like ``numpy.pad(mode="reflect")``, so border blocks are
computed at full size.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .blocks import reflect_indices
from .config import InputConfig
from .errors import UsageError
from .geometry import Box

logger = logging.getLogger(__name__)


class InputError(UsageError):
    """An input the user must fix (missing, wrong shape or dtype, ...)."""


class OutputError(UsageError):
    """An output that cannot be written without losing data or permission."""


SPATIAL = "zyx"


@dataclass(frozen=True)
class InputVolume:
    """A lazily read input image: an array (zarr, or a TIFF/HDF5 reader with ``shape``, ``dtype``,
    ``chunks`` and ``[slices]``) plus what its metadata says; ``channel``: the one channel read."""

    path: str
    array: Any = field(repr=False)
    axes: str  # one letter per array axis, e.g. "czyx"
    voxel_size: tuple[float, ...] | None = None
    units: tuple[str | None, ...] | None = None
    ome: dict[str, Any] | None = field(default=None, repr=False)
    channel: int | None = None

    @property
    def spatial_axes(self) -> tuple[int, ...]:
        return tuple(i for i, a in enumerate(self.axes) if a in SPATIAL)

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape."""
        return tuple(self.array.shape[i] for i in self.spatial_axes)

    @property
    def ndim(self) -> int:
        return len(self.spatial_axes)

    @property
    def channels(self) -> int:
        if "c" not in self.axes or self.channel is not None:
            return 1
        return self.array.shape[self.axes.index("c")]

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(self.array.dtype)

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self.array.chunks[i] for i in self.spatial_axes)

    def read(self, box: Box) -> np.ndarray:
        """``(C, *box.shape)`` float32 data; outside the volume the data is reflected."""
        if box.ndim != self.ndim:
            raise ValueError(f"box {box} is {box.ndim}D, volume is {self.ndim}D")
        spatial = [
            np.asarray(reflect_indices(o, o + s, n), dtype=np.int64)
            for o, s, n in zip(box.offset, box.shape, self.shape, strict=True)
        ]
        lo = [int(ix.min()) for ix in spatial]
        hi = [int(ix.max()) + 1 for ix in spatial]
        index: list[Any] = []
        it = iter(zip(lo, hi, strict=True))
        for a in self.axes:
            if a in SPATIAL:
                start, stop = next(it)
                index.append(slice(start, stop))
            elif a == "c":
                index.append(slice(None) if self.channel is None else self.channel)
            else:  # t (size 1, checked on open)
                index.append(0)
        data = np.asarray(self.array[tuple(index)])
        kept = [a for a in self.axes if a != "t" and (a != "c" or self.channel is None)]
        if "c" not in kept:
            data = data[None]
        elif kept.index("c") != 0:
            data = np.moveaxis(data, kept.index("c"), 0)
        rel = [ix - start for ix, start in zip(spatial, lo, strict=True)]
        if any(not isinstance(r, np.ndarray) or len(r) != (h - s) or not np.array_equal(r, np.arange(h - s)) for r, s, h in zip(rel, lo, hi, strict=True)):
            data = data[(slice(None), *np.ix_(*rel))]
        return data


def open_zarr_node(path: Path, dataset: str | None) -> Any:
    if not path.exists():
        raise InputError(f"input.path: '{path}' does not exist (give an existing zarr, OME-Zarr, TIFF or HDF5 path)")
    try:
        node = zarr.open(store=str(path), mode="r")
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"input.path: '{path}' is not a zarr array or group ({exc})") from None
    if dataset is None:
        return node
    ms = _multiscales(dict(node.attrs)) if isinstance(node, zarr.Group) else None
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


def _multiscales(attrs: dict[str, Any]) -> list[dict[str, Any]] | None:
    if "ome" in attrs and isinstance(attrs["ome"], dict):
        attrs = attrs["ome"]
    ms = attrs.get("multiscales")
    return ms if isinstance(ms, list) and ms else None


def open_input(cfg: InputConfig) -> InputVolume:
    """Open the input described by ``cfg`` (metadata only, no voxel data read): zarr here,
    TIFF and HDF5 in :mod:`pipeline.formats`; ``cfg.channel`` selects one channel."""
    from .formats import open_format, select_channel  # they import this module

    where = f"'{cfg.path}'" + (f" dataset '{cfg.dataset}'" if cfg.dataset else "")
    vol = open_format(cfg) or select_channel(_open_zarr(cfg, where), cfg.channel, where)
    check_dtype(vol.dtype, where)
    if "t" in vol.axes and vol.array.shape[vol.axes.index("t")] != 1:
        raise InputError(f"input {where} has {vol.array.shape[vol.axes.index('t')]} time points; select one (t must be 1)")
    if any(s == 0 for s in vol.shape):
        raise InputError(f"input {where} is empty: shape {list(vol.shape)}")
    return vol


def _open_zarr(cfg: InputConfig, where: str) -> InputVolume:
    node = open_zarr_node(Path(cfg.path), cfg.dataset)
    ome = None
    if isinstance(node, zarr.Group):
        ms = _multiscales(dict(node.attrs))
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
        if array.ndim not in (2, 3, 4):
            raise InputError(
                f"input {where} has {array.ndim} dimensions {list(array.shape)}; expected 2D (yx), "
                "3D (zyx) or 4D (czyx)"
            )
        axes = {2: "yx", 3: "zyx", 4: "czyx"}[array.ndim]
        vol = InputVolume(str(cfg.path), array, axes)
    return vol


def check_dtype(dtype: np.dtype[Any], where: str) -> None:
    if dtype.kind not in "uif":
        raise InputError(
            f"input {where} has dtype {dtype}; expected a numeric type (uint8, uint16, float32, ...)"
        )


def sample_chunks(vol: InputVolume, max_voxels: int = 1 << 23) -> np.ndarray:
    """A deterministic sample of whole chunks spread over the volume (for statistics).

    For OME-Zarr inputs the caller should prefer a coarse level; here we take up to
    ``max_voxels`` voxels from chunks on a regular lattice, never the whole volume.
    """
    chunks = vol.chunks
    grid = [-(-s // c) for s, c in zip(vol.shape, chunks, strict=True)]
    per_chunk = math.prod(chunks)
    n = max(1, min(math.prod(grid), max_voxels // max(per_chunk, 1)))
    # pick n chunk indices spread evenly through the linear chunk order
    picks = np.unique(np.linspace(0, math.prod(grid) - 1, n).round().astype(np.int64))
    parts = []
    for lin in picks:
        idx = np.unravel_index(int(lin), grid)
        box = Box(tuple(int(i) * c for i, c in zip(idx, chunks, strict=True)), chunks).intersect(
            Box.from_shape(vol.shape)
        )
        parts.append(vol.read(box).ravel())
    return np.concatenate(parts)


def percentiles(vol: InputVolume, low: float, high: float) -> tuple[float, float]:
    """Global intensity percentiles of the volume from a chunk sample (or a coarse OME level)."""
    sample = sample_chunks(vol)
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [low, high])
    return float(lo), float(hi)


# ---------------------------------------------------------------- output


def dimension_names(ndim: int, channels: bool = False) -> tuple[str, ...]:
    """Axis names of an output array: spatial ``zyx`` (``yx`` in 2D), ``c`` first with ``channels``."""
    return ("c",) * channels + tuple(SPATIAL[-ndim:])


def create_array(
    group: zarr.Group, name: str, shape: Sequence[int], chunks: Sequence[int], dtype: str, fill_value: Any = 0,
    overwrite: bool = False, dims: Sequence[str] | None = None,
) -> zarr.Array:
    """A new array of ``group``: zarr v3 arrays carry ``dims`` as their ``dimension_names``; zarr
    v2 arrays (no such field) use ``/`` between chunk indices, as OME-Zarr 0.4 requires."""
    v2 = group.metadata.zarr_format == 2
    extra: dict[str, Any] = ({"chunk_key_encoding": {"name": "v2", "separator": "/"}} if v2
                             else {"dimension_names": tuple(dims) if dims else None})
    return group.create_array(
        name, shape=tuple(shape), chunks=tuple(chunks), dtype=dtype, fill_value=fill_value, overwrite=overwrite, **extra
    )


def open_group(path: str | Path, mode: str = "r+") -> zarr.Group:
    return zarr.open_group(str(path), mode=mode)


def open_array(path: str | Path, mode: str = "r+") -> zarr.Array:
    return zarr.open_array(str(path), mode=mode)


def write_json(path: str | Path, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=2, default=str))


def write_zarr(path: str | Path, data: np.ndarray, chunks: Sequence[int] | None = None, name: str | None = None) -> None:
    """Small helper for tests, demos and TIFF import: write a numpy array as zarr v3."""
    if name is None:
        zarr.create_array(str(path), data=data, chunks=tuple(chunks) if chunks else "auto", overwrite=True)
        return
    g = zarr.open_group(str(path), mode="a")
    g.create_array(name, data=data, chunks=tuple(chunks) if chunks else "auto", overwrite=True)
