"""Inputs other than zarr, read lazily without conversion: TIFF files (through tifffile's
zarr store), folders of 2D TIFF slices and HDF5 files (BigDataViewer layout included).

:func:`open_format` recognises them by path (``.tif/.tiff``, a folder of TIFFs, ``.h5``/
``.hdf5``, a BigDataViewer ``.xml``) and returns the :class:`~pipeline.volume.io.InputVolume` with
the voxel size their metadata records; zarr paths are left to :mod:`pipeline.volume.io`. Every
opened array is read box by box (``array[slices]``), never whole, and reopens its files in
the process that reads it, so an :class:`~pipeline.config.InputConfig` is all a worker needs.
:func:`read_image` (training) and :func:`open_label_array` (evaluation) read every format.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr

from ..config import InputConfig
from .io import InputError, InputVolume, open_input, open_zarr_node

Kind = Literal["zarr", "tiff", "tiff-folder", "hdf5", "bdv-xml"]

TIFF_SUFFIXES = (".tif", ".tiff")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup", ".zattrs")
FORMATS = "a zarr array, an OME-Zarr image, a TIFF file, a folder of 2D TIFF slices or an HDF5 file"


def kind_of(path: Path) -> Kind:
    """Which reader a path needs, from its name (and a folder's contents)."""
    suffix = path.suffix.lower()
    if path.is_file() and suffix in TIFF_SUFFIXES:
        return "tiff"
    if path.is_file() and suffix in HDF5_SUFFIXES:
        return "hdf5"
    if path.is_file() and suffix == ".xml":
        return "bdv-xml"
    if path.is_dir() and not any((path / m).exists() for m in ZARR_MARKERS) and suffix != ".zarr":
        return "tiff-folder"
    return "zarr"


def open_format(cfg: InputConfig) -> InputVolume | None:
    """The volume at ``cfg.path`` if it is a TIFF, TIFF folder or HDF5 input, else None (zarr)."""
    path = Path(cfg.path)
    kind = kind_of(path)
    if kind == "zarr":
        return None
    if kind in ("tiff", "tiff-folder"):
        from .tiff import open_tiff, open_tiff_folder

        if cfg.dataset is not None:
            raise InputError(f"input.dataset '{cfg.dataset}' is given but '{path}' is TIFF, which holds one "
                             "image; remove input.dataset")
        if cfg.scale_level:
            raise InputError(f"input.scale_level {cfg.scale_level}: TIFF input '{path}' has one level (0); "
                             "remove input.scale_level")
        vol = open_tiff(path) if kind == "tiff" else open_tiff_folder(path)
        return select_channel(vol, cfg.channel, f"'{path}'")
    from .hdf5 import open_hdf5

    return open_hdf5(path, cfg.dataset, cfg.scale_level, cfg.channel)  # selects the channel (BDV: setup)


def select_channel(vol: InputVolume, channel: int | None, where: str) -> InputVolume:
    """``vol`` reading only channel ``channel`` (None: all channels)."""
    if channel is None:
        return vol
    have = vol.array.shape[vol.axes.index("c")] if "c" in vol.axes else 1
    if channel >= have:
        raise InputError(f"input.channel {channel} is out of range: input {where} has {have} channel(s); "
                         f"set input.channel to one of 0..{have - 1}")
    if "c" not in vol.axes:
        return vol
    return replace(vol, channel=channel)


UNITS = {"um": "micrometer", "µm": "micrometer", "\u03bcm": "micrometer", "micron": "micrometer",
         "microns": "micrometer", "micrometer": "micrometer", "nm": "nanometer", "nanometer": "nanometer",
         "mm": "millimeter", "millimeter": "millimeter", "pixel": None, "": None}


def unit_name(unit: Any) -> str | None:
    """An OME-Zarr unit name for a unit string from TIFF/HDF5/BDV metadata (None: unknown)."""
    if unit is None:
        return None
    text = str(unit).strip().replace("\\u00B5", "\u00b5")
    return UNITS.get(text.lower(), UNITS.get(text, text or None))


# ---------------------------------------------------------------- whole images, labels


def read_image(path: str | Path, dataset: str | None = None) -> np.ndarray:
    """Read a whole (small) image from TIFF, HDF5 or zarr into memory (training)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"image '{p}' does not exist (give an existing TIFF, HDF5 or zarr path)")
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
    or folder of slices, an HDF5 dataset."""
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
        from .io import _multiscales

        multiscales = _multiscales(dict(node.attrs))
        if multiscales and multiscales[0].get("datasets"):  # an OME-Zarr (label) image: level 0
            level = node[multiscales[0]["datasets"][0]["path"]]
            if level.ndim not in (2, 3):
                raise InputError(f"labels '{p}' level 0 has shape {list(level.shape)}; give a label image with "
                                 "only z, y, x axes")
            return level
        raise InputError(f"'{path}' is a group: name the label array with --pred-dataset/--gt-dataset")
    return node
