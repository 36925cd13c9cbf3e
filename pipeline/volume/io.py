"""Opening inputs of every format, and writing zarr outputs.

:func:`open_input` opens the input an :class:`~pipeline.config.InputConfig` describes (metadata
only): zarr and OME-Zarr through :mod:`pipeline.volume.zarr_input`, TIFF through
:mod:`pipeline.volume.tiff`, HDF5 through :mod:`pipeline.volume.hdf5`, N5 through
:mod:`pipeline.volume.n5`, Imaris through :mod:`pipeline.volume.imaris` (which reader:
:func:`pipeline.volume.formats.kind_of`); it returns an
:class:`~pipeline.volume.input_volume.InputVolume`, read box by box. :func:`read_image`
(training) and :func:`open_label_array` (evaluation) read every format. The output group's
layout belongs to :mod:`pipeline.runtime.store`; here are the zarr v2/v3 arrays it is made of.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..config import InputConfig
from .czi import open_czi
from .errors import InputError
from .formats import kind_of, select_channel
from .hdf5 import open_hdf5
from .imaris import open_imaris
from .input_volume import SPATIAL, InputVolume
from .n5 import open_n5
from .tiff import open_tiff, open_tiff_folder
from .zarr_input import ome_multiscales, open_zarr, open_zarr_node


def input_where(cfg: InputConfig) -> str:
    """How messages name an input: its path, and its dataset when one is set."""
    return f"'{cfg.path}'" + (f" dataset '{cfg.dataset}'" if cfg.dataset else "")


def open_input(cfg: InputConfig) -> InputVolume:
    """Open the input described by ``cfg`` (metadata only, no voxel data read): zarr in
    :mod:`pipeline.volume.zarr_input`, TIFF, HDF5, N5 and Imaris through :func:`open_format`; ``cfg.channel``
    selects one channel."""
    where = input_where(cfg)
    vol = open_format(cfg) or select_channel(open_zarr(cfg, where), cfg.channel, where)
    vol = replace(vol, where=where, unreadable=cfg.unreadable, cache_mib=cfg.chunk_cache_mib)
    check_dtype(vol.dtype, where)
    vol = select_timepoint(vol, cfg.timepoint, where)
    if any(s == 0 for s in vol.shape):
        raise InputError(f"input {where} is empty: shape {list(vol.shape)}")
    return vol


def select_timepoint(vol: InputVolume, timepoint: int | None, where: str) -> InputVolume:
    """``vol`` reading time point ``timepoint`` (a format that keeps time points apart opened it
    already); an input of several time points read without one is refused (a run segments them all,
    see :mod:`pipeline.timelapse`)."""
    if "t" in vol.axes:
        vol = replace(vol, timepoints=vol.array.shape[vol.axes.index("t")], timepoint=timepoint or 0)
    if timepoint is not None and timepoint >= vol.timepoints:
        raise InputError(f"input.timepoint {timepoint} is out of range: input {where} has {vol.timepoints} time "
                         f"point(s); set input.timepoint to one of 0..{vol.timepoints - 1}")
    if timepoint is None and vol.timepoints > 1:
        raise InputError(f"input {where} has {vol.timepoints} time points; `pipeline run` segments each of them "
                         "(input.timepoints), other commands read one: set input.timepoint (0.."
                         f"{vol.timepoints - 1})")
    return vol


def timepoint_count(cfg: InputConfig) -> int:
    """How many time points the input holds (1: no time axis); reads metadata only."""
    return open_input(cfg.model_copy(update={"timepoint": 0, "timepoints": "all"})).timepoints


def open_format(cfg: InputConfig) -> InputVolume | None:
    """The volume at ``cfg.path`` if it is a TIFF, TIFF folder, HDF5, N5, Imaris or CZI input, else None (zarr)."""
    path = Path(cfg.path)
    kind = kind_of(path)
    if kind == "zarr":
        return None
    if kind in ("tiff", "tiff-folder"):
        if cfg.dataset is not None:
            raise InputError(f"input.dataset '{cfg.dataset}' is given but '{path}' is TIFF, which holds one "
                             "image; remove input.dataset")
        if cfg.scale_level:
            raise InputError(f"input.scale_level {cfg.scale_level}: TIFF input '{path}' has one level (0); "
                             "remove input.scale_level")
        vol = open_tiff(path) if kind == "tiff" else open_tiff_folder(path)
        return select_channel(vol, cfg.channel, f"'{path}'")
    if kind == "n5":
        return open_n5(path, cfg.dataset, cfg.scale_level, cfg.channel, cfg.timepoint)
    if kind == "ims":
        return open_imaris(path, cfg.dataset, cfg.scale_level, cfg.channel, cfg.timepoint)
    if kind == "czi":
        return open_czi(path, cfg.dataset, cfg.scale_level, cfg.channel, cfg.timepoint)
    return open_hdf5(path, cfg.dataset, cfg.scale_level, cfg.channel, cfg.timepoint)  # selects the channel (BDV: setup)


def check_dtype(dtype: np.dtype[Any], where: str) -> None:
    if dtype.kind not in "uif":
        raise InputError(
            f"input {where} has dtype {dtype}; expected a numeric type (uint8, uint16, float32, ...)"
        )


# ---------------------------------------------------------------- whole images, labels


def read_image(path: str | Path, dataset: str | None = None) -> np.ndarray:
    """Read a whole (small) image from TIFF, HDF5, N5 or zarr into memory (training)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"image '{p}' does not exist (give an existing TIFF, HDF5, N5 or zarr path)")
    if kind_of(p) == "tiff":
        import tifffile

        return np.asarray(tifffile.imread(p))
    if kind_of(p) == "zarr":
        node = open_zarr_node(p, dataset)
        if not isinstance(node, zarr.Group):
            return np.asarray(node[...])
    return np.asarray(open_input(InputConfig(path=p, dataset=dataset)).array[...])


def open_label_array(path: str | Path, dataset: str | None = None) -> Any:
    """A label array for evaluation, read lazily: a zarr array or ``dataset`` inside a group
    (default ``segmentation``), an OME-Zarr (label) image (its full-resolution level), a TIFF file
    or folder of slices, an HDF5 or N5 dataset."""
    p = Path(path)
    if p.exists() and kind_of(p) != "zarr":
        vol = open_input(InputConfig(path=p, dataset=dataset))
        if vol.axes not in ("zyx", "yx"):
            raise InputError(f"labels '{p}' have axes '{vol.axes}' {list(vol.array.shape)}; give a label image "
                             "with only z, y, x axes")
        return vol.array
    node = open_zarr_node(p, dataset)
    if isinstance(node, zarr.Group):
        seg = (p / dataset if dataset else p) / "segmentation"
        if seg.exists():  # a result: maybe a link to its label image's level 0 (any zarr format)
            return zarr.open_array(str(seg), mode="r")
        multiscales = ome_multiscales(dict(node.attrs))
        if multiscales and multiscales[0].get("datasets"):  # an OME-Zarr (label) image: level 0
            level = node[multiscales[0]["datasets"][0]["path"]]
            if level.ndim not in (2, 3):
                raise InputError(f"labels '{p}' level 0 has shape {list(level.shape)}; give a label image with "
                                 "only z, y, x axes")
            return level
        raise InputError(f"'{path}' is a group: name the label array with --pred-dataset/--gt-dataset")
    return node


# ---------------------------------------------------------------- output


def dimension_names(ndim: int, channels: bool = False) -> tuple[str, ...]:
    """Axis names of an output array: spatial ``zyx`` (``yx`` in 2D), ``c`` first with ``channels``."""
    return ("c",) * channels + tuple(SPATIAL[-ndim:])


def create_array(
    group: zarr.Group, name: str, shape: Sequence[int], chunks: Sequence[int], dtype: str, fill_value: Any = 0,
    overwrite: bool = False, dims: Sequence[str] | None = None, shards: Sequence[int] | None = None,
) -> zarr.Array:
    """A new array of ``group``: zarr v3 arrays carry ``dims`` as their ``dimension_names`` and, with
    ``shards``, store bricks of ``chunks`` as one shard file each; zarr v2 arrays (neither field) use
    ``/`` between chunk indices, as OME-Zarr 0.4 requires."""
    v2 = group.metadata.zarr_format == 2
    extra: dict[str, Any] = ({"chunk_key_encoding": {"name": "v2", "separator": "/"}} if v2
                             else {"dimension_names": tuple(dims) if dims else None})
    if shards and not v2:
        extra["shards"] = tuple(shards)
    return group.create_array(
        name, shape=tuple(shape), chunks=tuple(chunks), dtype=dtype, fill_value=fill_value, overwrite=overwrite, **extra
    )


def write_region(arr: zarr.Array, slices: tuple[slice, ...], data: np.ndarray) -> None:
    """``arr[slices] = data``. zarr-python compares every chunk it writes with the fill value, to
    leave all-fill chunks out (over half of a label chunk's write time, measured in
    ``benchmarks/RESULTS.md``); where the fill value is 0 and every chunk the region touches holds
    a non-zero voxel of ``data``, none of them can be all fill and the test is skipped. Same
    files either way."""
    if arr.fill_value == 0 and _every_chunk_nonzero(arr.chunks, slices, data):
        arr = arr.with_config({"write_empty_chunks": True})
    arr[slices] = data


def _every_chunk_nonzero(chunks: tuple[int, ...], slices: tuple[slice, ...], data: np.ndarray) -> bool:
    from .kernels import any_nonzero

    starts = [int(s.start or 0) for s in slices]
    edges = []
    for start, n, c in zip(starts, data.shape, chunks, strict=True):
        cuts = list(range((start // c + 1) * c, start + n, c))  # chunk borders inside the region
        edges.append([0, *(x - start for x in cuts), n])
    for lo in np.ndindex(*(len(e) - 1 for e in edges)):
        part = tuple(slice(e[i], e[i + 1]) for e, i in zip(edges, lo, strict=True))
        if not any_nonzero(data[part]):
            return False
    return True


def open_group(path: str | Path, mode: str = "r+") -> zarr.Group:
    return zarr.open_group(str(path), mode=mode)


def open_array(path: str | Path, mode: str = "r+") -> zarr.Array:
    return zarr.open_array(str(path), mode=mode)


def write_json(path: str | Path, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=2, default=str))


def write_zarr(path: str | Path, data: np.ndarray, chunks: Sequence[int] | None = None, name: str | None = None,
               dims: Sequence[str] | None = None) -> None:
    """Small helper for tests, demos and TIFF import: write a numpy array as zarr v3 (``dims``: its
    dimension names, e.g. ``tzyx``)."""
    extra = {"dimension_names": tuple(dims)} if dims else {}
    if name is None:
        zarr.create_array(str(path), data=data, chunks=tuple(chunks) if chunks else "auto", overwrite=True, **extra)
        return
    g = zarr.open_group(str(path), mode="a")
    g.create_array(name, data=data, chunks=tuple(chunks) if chunks else "auto", overwrite=True, **extra)
