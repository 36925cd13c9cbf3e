"""Imaris ``.ims`` inputs (Andor/Bitplane): HDF5 holding
``DataSet/ResolutionLevel <r>/TimePoint <t>/Channel <c>/Data`` (z, y, x), read with h5py; the
LZ4 filter Imaris writes (HDF5 filter 32004) comes from ``hdf5plugin``, imported where a file is
opened. ``input.scale_level`` is the resolution level r, ``input.channel`` the channel c; with
several channels and no ``input.channel`` they are a ``c`` axis (c, z, y, x), one dataset each.
One time point is read (``input.timepoint``); a time-lapse run opens each in turn.

Imaris stores attributes as arrays of one-byte strings (``[b'5', b'1', b'2']``). The stored
``Data`` is padded to whole chunks; the image is its first ``ImageSizeZ/Y/X`` voxels (attributes
of the channel group), and only that region is presented. Voxel size: ``(ExtMax - ExtMin) / size``
of ``DataSetInfo/Image`` (x = 0, y = 1, z = 2) at level 0, times the level's downsampling."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .formats import unit_name
from .hdf5 import H5Array
from .input_volume import InputVolume

logger = logging.getLogger(__name__)

FILTERS = {32004: "LZ4", 32001: "Blosc", 32008: "bitshuffle", 32015: "Zstandard", 307: "bzip2"}


def register_filters() -> None:
    """Make hdf5plugin's filters (LZ4 among them) available to HDF5 in this process, if installed."""
    try:
        import hdf5plugin  # noqa: F401 - registers the filters on import
    except ImportError:
        pass


def text(value: Any) -> str:
    """An Imaris attribute as text: an array of one-byte strings joined, or a plain string."""
    if isinstance(value, np.ndarray):
        return b"".join(v if isinstance(v, bytes) else str(v).encode() for v in value.ravel()).decode(errors="replace")
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def number(attrs: Any, key: str) -> float | None:
    """A numeric Imaris attribute (None when absent or not a number)."""
    if key not in attrs:
        return None
    try:
        return float(text(attrs[key]).strip())
    except ValueError:
        return None


def _index(key: Any, shape: tuple[int, ...]) -> tuple[Any, ...]:
    """``key`` as one bounded int or slice per axis of ``shape`` (so a read never reaches the
    padding beyond it)."""
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        at = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:at] + (slice(None),) * (len(shape) - len(key) + 1) + key[at + 1:]
    key = key + (slice(None),) * (len(shape) - len(key))
    out: list[Any] = []
    for k, n in zip(key, shape, strict=True):
        if isinstance(k, slice):
            out.append(slice(*k.indices(n)))
        else:
            i = int(k)
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of range for an axis of size {n}")
            out.append(i % n)
    return tuple(out)


class ImarisArray(H5Array):
    """The channels' ``Data`` datasets (padding cut off), stacked as a leading ``c`` axis when
    there are several; read lazily like :class:`~pipeline.volume.hdf5.H5Array`."""

    def __init__(self, path: Path, names: tuple[str, ...], shape: tuple[int, ...], dtype: np.dtype[Any],
                 chunks: tuple[int, ...], stacked: bool) -> None:
        super().__init__(path, names[0], shape, dtype, chunks)
        self.names, self.stacked = names, stacked

    def _read(self, name: str, key: tuple[Any, ...]) -> np.ndarray:
        return np.asarray(self._file[name][key])

    def __getitem__(self, key: Any) -> np.ndarray:
        import h5py

        key = _index(key, self.shape)
        with self._lock:
            if self._file is None:
                register_filters()
                self._file = h5py.File(self.path, "r")
            if not self.stacked:
                return self._read(self.name, key)
            if not isinstance(key[0], slice):
                return self._read(self.names[key[0]], key[1:])
            parts = [self._read(self.names[c], key[1:]) for c in range(*key[0].indices(len(self.names)))]
        return np.stack(parts) if parts else np.empty((0, *self.shape[1:]), self.dtype)[(slice(None), *key[1:])]

    def chunk_name(self, coords: Any) -> str:
        coords = list(coords)
        name = self.names[coords.pop(0) * self.chunks[0]] if self.stacked else self.name
        return f"HDF5 chunk {coords} of dataset '{name}' in Imaris file '{self.path}'"


def _numbered(group: Any, prefix: str) -> list[int]:
    """The numbers ``k`` of the members ``<prefix> <k>`` of ``group``."""
    return sorted(int(m.group(1)) for k in group if (m := re.fullmatch(rf"{prefix} (\d+)", k)))


def _check_filters(path: Path, ds: Any) -> None:
    """One line naming the filter when a dataset needs one HDF5 cannot load."""
    import h5py

    plist = ds.id.get_create_plist()
    for i in range(plist.get_nfilters()):
        code, _flags, _values, name = plist.get_filter(i)
        if not h5py.h5z.filter_avail(code):
            label = FILTERS.get(code) or (name.decode(errors="replace") if isinstance(name, bytes) else str(name))
            raise InputError(f"input '{path}' dataset '{ds.name}' is compressed with HDF5 filter {code} "
                             f"({label or 'unknown'}), which cannot be loaded here; install hdf5plugin "
                             "(pip install hdf5plugin) or save the file uncompressed")


def _image_size(group: Any, ds: Any) -> tuple[int, ...]:
    """(z, y, x): the channel group's ``ImageSizeZ/Y/X`` (an axis without one: the dataset's)."""
    sizes = [number(group.attrs, f"ImageSize{a}") for a in "ZYX"]
    return tuple(int(n) if s is None else min(int(s), int(n)) for s, n in zip(sizes, ds.shape, strict=True))


def _voxel(f: Any, base: tuple[int, ...], shape: tuple[int, ...]
           ) -> tuple[tuple[float, ...] | None, tuple[str | None, ...] | None]:
    """(z, y, x) voxel size and units at a level of ``shape`` (level 0: ``base``)."""
    info = f["DataSetInfo/Image"].attrs if "DataSetInfo/Image" in f else {}
    voxel = []
    for axis, i, n0, n in zip("ZYX", (2, 1, 0), base, shape, strict=True):
        size, lo, hi = number(info, axis), number(info, f"ExtMin{i}"), number(info, f"ExtMax{i}")
        if lo is None or hi is None or hi <= lo:
            logger.warning("Imaris DataSetInfo/Image has no extent for %s; voxel size unknown", axis)
            return None, None
        voxel.append((hi - lo) / (size or n0) * n0 / n)
    unit = unit_name(text(info["Unit"]).strip()) if "Unit" in info else None
    return tuple(voxel), (unit,) * 3


def open_imaris(path: Path, dataset: str | None, scale_level: int, channel: int | None,
                timepoint: int | None = None) -> InputVolume:
    """The Imaris image at ``scale_level`` and time point ``timepoint`` (the first when None; its
    ``timepoints`` says how many there are), one channel or every channel as a ``c`` axis."""
    import h5py

    if dataset is not None:
        raise InputError(f"input.dataset '{dataset}' is given but '{path}' is an Imaris file; remove input.dataset "
                         "(input.scale_level and input.channel select the resolution level and channel)")
    register_filters()
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"input.path: '{path}' is not a readable HDF5 (Imaris) file ({exc})") from None
    with f:
        if "DataSet" not in f or not isinstance(f["DataSet"], h5py.Group):
            raise InputError(f"input.path: '{path}' is not an Imaris file (no DataSet group); give an .ims file "
                             "written by Imaris or its converters")
        levels = _numbered(f["DataSet"], "ResolutionLevel")
        if scale_level not in levels:
            raise InputError(f"input.scale_level {scale_level} does not exist in '{path}': it has the Imaris "
                             f"resolution levels {', '.join(map(str, levels)) or 'none'}")
        level = f[f"DataSet/ResolutionLevel {scale_level}"]
        times = _numbered(level, "TimePoint")
        if not times:
            raise InputError(f"input '{path}' is not a readable Imaris file: no TimePoint group in {level.name}")
        if (timepoint or 0) >= len(times):
            raise InputError(f"input.timepoint {timepoint} is out of range: '{path}' has {len(times)} time point(s); "
                             f"set input.timepoint to one of 0..{len(times) - 1}")
        point = level[f"TimePoint {times[timepoint or 0]}"]
        channels = _numbered(point, "Channel")
        if channel is not None and channel not in channels:
            raise InputError(f"input.channel {channel} is out of range: '{path}' has {len(channels)} channel(s); "
                             f"set input.channel to one of {', '.join(map(str, channels)) or 'none'}")
        chosen = [channel] if channel is not None else channels
        names = tuple(f"{point.name}/Channel {c}/Data" for c in chosen)
        missing = [n for n in names if n not in f or not isinstance(f[n], h5py.Dataset)]
        if missing or not names:
            raise InputError(f"input '{path}' is not a readable Imaris file: no dataset '{(missing or [point.name])[0]}'")
        dsets = [f[n] for n in names]
        for ds in dsets:
            _check_filters(path, ds)
            if ds.ndim != 3:
                raise InputError(f"input '{path}' dataset '{ds.name}' has shape {list(ds.shape)}; Imaris data is 3D "
                                 "(z, y, x)")
        shapes = {_image_size(ds.parent, ds) for ds in dsets}
        if len(shapes) > 1 or len({ds.dtype for ds in dsets}) > 1:
            raise InputError(f"input '{path}' has channels of different shapes or types; set input.channel to one "
                             f"of {', '.join(map(str, channels))}")
        shape = shapes.pop()
        first = f"DataSet/ResolutionLevel 0/TimePoint {times[timepoint or 0]}/Channel {chosen[0]}"
        base = _image_size(f[first], f[first + "/Data"]) if first + "/Data" in f else shape
        voxel, units = _voxel(f, base, shape)
        ds = dsets[0]
        chunks = tuple(ds.chunks) if ds.chunks else (1, *shape[1:])
        stacked = len(names) > 1
        array = ImarisArray(path, names, (len(names), *shape) if stacked else shape, np.dtype(ds.dtype),
                            (1, *chunks) if stacked else chunks, stacked)
    axes = "czyx" if stacked else "zyx"
    logger.debug("Imaris '%s': level %d channels %s shape %s voxel %s", path, scale_level, chosen, array.shape, voxel)
    return InputVolume(str(path), array, axes, voxel, units, timepoint=timepoint or 0, timepoints=len(times))
