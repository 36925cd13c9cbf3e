"""Input formats: which reader a path needs (:func:`kind_of`: zarr, a TIFF file, a folder of
TIFF slices, HDF5, a BigDataViewer XML, N5, Imaris), and what the readers share: channel selection and
unit names from the formats' metadata.

The readers are :mod:`pipeline.volume.zarr_input`, :mod:`pipeline.volume.tiff`,
:mod:`pipeline.volume.hdf5`, :mod:`pipeline.volume.n5` and :mod:`pipeline.volume.imaris`; :func:`pipeline.volume.io.open_input` dispatches to them. They read
lazily, box by box (``array[slices]``), never whole, and reopen their files in the process that
reads, so an :class:`~pipeline.config.InputConfig` is all a worker needs.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from .errors import InputError
from .input_volume import InputVolume

Kind = Literal["zarr", "tiff", "tiff-folder", "hdf5", "bdv-xml", "n5", "ims", "czi"]

TIFF_SUFFIXES = (".tif", ".tiff")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
IMARIS_SUFFIXES = (".ims",)
CZI_SUFFIXES = (".czi",)
ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup", ".zattrs")
FORMATS = "a zarr array, an OME-Zarr image, a TIFF file, a folder of 2D TIFF slices, an HDF5 file, an Imaris .ims file or an N5 container"


def kind_of(path: Path) -> Kind:
    """Which reader a path needs, from its name (and a folder's contents)."""
    suffix = path.suffix.lower()
    if path.is_file() and suffix in TIFF_SUFFIXES:
        return "tiff"
    if path.is_file() and suffix in HDF5_SUFFIXES:
        return "hdf5"
    if path.is_file() and suffix in IMARIS_SUFFIXES:
        return "ims"
    if path.is_file() and suffix in CZI_SUFFIXES:
        return "czi"
    if path.is_file() and suffix == ".xml":
        return "bdv-xml"
    if is_n5(path):
        return "n5"
    if path.is_dir() and not any((path / m).exists() for m in ZARR_MARKERS) and suffix != ".zarr":
        return "tiff-folder"
    return "zarr"


def is_n5(path: Path) -> bool:
    """Whether ``path`` is (or lies in) an N5 container: named ``*.n5``, or a folder holding N5's
    ``attributes.json`` and no zarr metadata, or a folder below an ``*.n5`` one."""
    if path.suffix.lower() == ".n5":
        return True
    if not path.is_dir() or any((path / m).exists() for m in ZARR_MARKERS):
        return False
    return (path / "attributes.json").is_file() or any(p.suffix.lower() == ".n5" for p in path.parents)


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
