"""TIFF inputs: one (large) file read through tifffile's zarr store, page by page or tile by
tile; or a folder of 2D slices (natural name order, z = slice index), one slice file per
plane read. Voxel size from ImageJ metadata (``spacing``, X/YResolution) or OME-XML."""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .errors import InputError
from .formats import FORMATS, TIFF_SUFFIXES, unit_name
from .input_volume import InputVolume

logger = logging.getLogger(__name__)

# tifffile's axis letters -> ours (S: samples, I/Q: pages/unknown = planes)
AXES = {"T": "t", "C": "c", "S": "c", "Z": "z", "I": "z", "Q": "z", "Y": "y", "X": "x"}


def tiff_axes(letters: str, where: str) -> str:
    """Our axes (``tczyx`` letters) for tifffile's series axes, e.g. ``ZCYX`` -> ``zcyx``."""
    axes = "".join(AXES.get(a, "?") for a in letters.upper())
    if "?" in axes or len(set(axes)) != len(axes) or not axes.endswith("yx"):
        raise InputError(f"input {where}: unsupported TIFF axes '{letters}' (expected T, C/S, Z, Y, X with one of "
                         "each); save it as a ZYX or ZCYX stack")
    return axes


def _resolution(page: Any) -> tuple[float, float] | None:
    """(y, x) pixel size from the page's X/YResolution (pixels per unit), if recorded."""
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    sizes = []
    for name in ("YResolution", "XResolution"):
        num, den = tags[name].value
        if not num or not den or num == den:  # absent or the default 1 pixel per unit
            return None
        sizes.append(den / num)
    return sizes[0], sizes[1]


def _ome_voxel(xml: str, axes: str) -> tuple[tuple[float, ...] | None, tuple[str | None, ...] | None]:
    pixels = next((e for e in ET.fromstring(xml).iter() if e.tag.endswith("Pixels")), None)
    if pixels is None:
        return None, None
    sp = [a for a in axes if a in "zyx"]
    sizes = [pixels.get(f"PhysicalSize{a.upper()}") for a in sp]
    if any(s is None for s in sizes):
        return None, None
    units = tuple(unit_name(pixels.get(f"PhysicalSize{a.upper()}Unit", "µm")) for a in sp)
    return tuple(float(s) for s in sizes), units  # type: ignore[arg-type]


def tiff_voxel(tif: Any, axes: str) -> tuple[tuple[float, ...] | None, tuple[str | None, ...] | None]:
    """Spatial voxel size and units (in ``axes`` order, without t/c) from ImageJ or OME metadata."""
    if tif.is_ome and tif.ome_metadata:
        voxel, units = _ome_voxel(tif.ome_metadata, axes)
        if voxel is not None:
            return voxel, units
    meta = tif.imagej_metadata or {}
    yx = _resolution(tif.pages[0])
    if yx is None:
        return None, None
    unit = unit_name(meta.get("unit"))
    if "z" not in axes:
        return yx, (unit, unit)
    if "spacing" not in meta:
        return None, None
    return (float(meta["spacing"]), *yx), (unit, unit, unit)


def open_tiff(path: Path) -> InputVolume:
    """A TIFF file's first series as a lazily read zarr array (pages/tiles read on demand)."""
    import tifffile

    where = f"'{path}'"
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise InputError(f"input.path: '{path}' holds no image (an empty or truncated TIFF); "
                                 "write it again or give another file")
            series = tif.series[0]
            axes = tiff_axes(series.axes, where)
            voxel, units = tiff_voxel(tif, axes)
        array = zarr.open(tifffile.imread(path, aszarr=True, series=0, level=0), mode="r")
    except InputError:
        raise
    except (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError) as exc:
        raise InputError(f"input.path: '{path}' is not a readable TIFF ({exc})") from None
    logger.debug("TIFF %s: axes %s shape %s voxel %s", path, axes, array.shape, voxel)
    return InputVolume(str(path), array, axes, voxel, units)


def natural_key(name: str) -> list[Any]:
    """Sort key with digit runs compared as numbers: ``z2.tif`` before ``z10.tif``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


class TiffSlices:
    """A folder of 2D TIFF slices as a ``z(c)yx`` array; indexing reads only the slices (and,
    through each file's zarr store, the strips or tiles) it needs."""

    def __init__(self, files: list[Path], plane: tuple[int, ...], dtype: np.dtype[Any]) -> None:
        self.files = files
        self.plane = plane
        self.shape = (len(files), *plane)
        self.dtype = dtype
        self.chunks = (1, *plane)  # one slice
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        import tifffile

        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1 :]
        key = key + (slice(None),) * (self.ndim - len(key))
        zs = range(self.shape[0])[key[0]] if isinstance(key[0], slice) else [key[0]]
        planes = []
        for z in zs:
            store = tifffile.imread(self.files[z], aszarr=True, series=0, level=0)
            try:
                arr = zarr.open(store, mode="r")
                if tuple(arr.shape) != self.plane or arr.dtype != self.dtype:
                    raise InputError(f"input slice '{self.files[z]}' is {arr.dtype} {list(arr.shape)}, the first "
                                     f"slice {self.dtype} {list(self.plane)}; every slice must match")
                planes.append(np.asarray(arr[key[1:]]))
            finally:
                store.close()
        data = np.stack(planes) if planes else np.zeros((0, *self.plane), self.dtype)[(slice(None), *key[1:])]
        return data if isinstance(key[0], slice) else data[0]

    def chunk_name(self, coords: Any) -> str:
        """How a message names the chunk at ``coords``: its slice file."""
        return f"slice '{self.files[coords[0]]}'"

    def files_of(self, index: Any) -> list[str]:
        """The slice files a read of ``index`` depends on."""
        zs = range(self.shape[0])[index[0]] if isinstance(index[0], slice) else [index[0]]
        return [str(self.files[z]) for z in zs]


def open_tiff_folder(path: Path) -> InputVolume:
    """A folder of 2D TIFF slices, in natural name order (voxel size from the first slice)."""
    import tifffile

    files = sorted((p for p in path.iterdir() if p.suffix.lower() in TIFF_SUFFIXES and p.is_file()),
                   key=lambda p: natural_key(p.name))
    if not files:
        raise InputError(f"input.path: folder '{path}' holds no .tif/.tiff files and is not a zarr store; give "
                         f"{FORMATS}")
    where = f"'{files[0]}'"
    try:
        with tifffile.TiffFile(files[0]) as tif:
            series = tif.series[0]
            plane_axes = tiff_axes(series.axes, where)
            if "z" in plane_axes or "t" in plane_axes:
                raise InputError(f"input.path: '{files[0]}' is not a 2D slice (axes '{series.axes}'); a folder "
                                 "must hold one 2D image per file, or give a TIFF stack as input.path")
            plane, dtype = tuple(series.shape), np.dtype(series.dtype)
            voxel, units = tiff_voxel(tif, "z" + plane_axes)
    except tifffile.TiffFileError as exc:
        raise InputError(f"input.path: '{files[0]}' is not a readable TIFF ({exc})") from None
    logger.debug("TIFF folder %s: %d slices of %s", path, len(files), plane)
    array = TiffSlices(files, plane, dtype)
    return InputVolume(str(path), array, "z" + plane_axes, voxel, units)
