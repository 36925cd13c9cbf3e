"""HDF5 inputs (h5py): a dataset named by ``input.dataset``, or the BigDataViewer layout
``t<time>/s<setup>/<level>/cells`` where ``input.scale_level`` is the BDV level and
``input.channel`` the setup. Voxel size from the dataset's ``element_size_um`` attribute
(ilastik, Fiji) or, for BDV, the ``voxelSize`` of the XML beside the file times the level's
``s<setup>/resolutions`` factors. Files are opened per process, reads hold a lock."""

from __future__ import annotations

import logging
import re
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .formats import select_channel, unit_name
from .input_volume import InputVolume

logger = logging.getLogger(__name__)

BDV_CELLS = re.compile(r"^/?t(\d+)/s(\d+)/(\d+)/cells$")


class H5Array:
    """A read-only HDF5 dataset opened on first read in the reading process; h5py handles are
    not thread-safe, so reads of one instance are serialised. Pickles without its handle."""

    def __init__(self, path: Path, name: str, shape: tuple[int, ...], dtype: np.dtype[Any],
                 chunks: tuple[int, ...], view: np.dtype[Any] | None = None) -> None:
        self.path, self.name, self.shape, self.chunks = path, name, shape, chunks
        self.view = view  # BDV stores uint16 as int16: reinterpret the bits
        self.dtype = view if view is not None else dtype
        self.ndim = len(shape)
        self._lock = threading.Lock()
        self._file: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_file")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock(), _file=None)

    def __getitem__(self, key: Any) -> np.ndarray:
        import h5py

        with self._lock:
            if self._file is None:
                self._file = h5py.File(self.path, "r")
            data = np.asarray(self._file[self.name][key])
        return data.view(self.view) if self.view is not None else data

    def chunk_name(self, coords: Any) -> str:
        """How a message names the chunk at ``coords`` (chunk indices)."""
        return f"HDF5 chunk {list(coords)} of dataset '{self.name}' in '{self.path}'"

    def files_of(self, index: Any) -> list[str]:
        """The files a read of ``index`` depends on."""
        return [str(self.path)]


def _datasets(f: Any) -> list[str]:
    import h5py

    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


def _wrap(path: Path, ds: Any, view: np.dtype[Any] | None = None) -> H5Array:
    shape = tuple(int(s) for s in ds.shape)
    chunks = tuple(ds.chunks) if ds.chunks else (1,) * (len(shape) - 2) + shape[-2:]  # contiguous: by plane
    return H5Array(path, ds.name, shape, np.dtype(ds.dtype), chunks, view)


def _axes(ds: Any, where: str) -> str:
    """Axes from ilastik's ``axistags``, else by dimensionality like a zarr array."""
    import json

    tags = ds.attrs.get("axistags")
    if tags is not None:
        keys = "".join(a["key"] for a in json.loads(tags)["axes"]).lower()
        if set(keys) <= set("tczyx") and len(keys) == ds.ndim:
            return keys
    if ds.ndim not in (2, 3, 4):
        raise InputError(f"input {where} has {ds.ndim} dimensions {list(ds.shape)}; expected 2D (yx), 3D (zyx) or "
                         "4D (czyx)")
    return {2: "yx", 3: "zyx", 4: "czyx"}[ds.ndim]


def bdv_xml_voxel(xml: Path, setup: int) -> tuple[tuple[float, ...], str | None] | None:
    """(x, y, z) voxel size and unit of ``setup`` in a BigDataViewer XML, if it records one."""
    for vs in ET.parse(xml).getroot().iter("ViewSetup"):
        if vs.findtext("id", "").strip() == str(setup) and vs.find("voxelSize") is not None:
            size = vs.findtext("voxelSize/size", "").split()
            return tuple(float(v) for v in size), unit_name(vs.findtext("voxelSize/unit"))
    return None


def bdv_h5_path(xml: Path) -> Path:
    """The HDF5 file a BigDataViewer XML points to."""
    node = ET.parse(xml).getroot().find(".//ImageLoader/hdf5")
    if node is None or not (node.text or "").strip():
        raise InputError(f"input.path: '{xml}' is not a BigDataViewer XML with an HDF5 image loader; give the .h5 "
                         "file or the XML of a BDV HDF5 dataset")
    h5 = Path(node.text.strip())
    return h5 if node.get("type") == "absolute" or h5.is_absolute() else xml.parent / h5


def bdv_times(f: Any) -> list[str]:
    """The time point groups of a BDV HDF5 file (``t00000``, ...), in order."""
    return sorted(k for k in f if re.fullmatch(r"t\d+", k))


def bdv_dataset(f: Any, path: Path, scale_level: int, channel: int | None, timepoint: int | None = None) -> str:
    """The BDV cells dataset of ``scale_level``, setup ``channel`` and time point ``timepoint`` (None: the first)."""
    times = bdv_times(f)
    setups = sorted(k for k in f[times[0]] if re.fullmatch(r"s\d+", k))
    if channel is None and len(setups) > 1:
        raise InputError(f"input '{path}' is BigDataViewer HDF5 with {len(setups)} setups ({', '.join(setups)}); set "
                         f"input.channel to the setup index (0..{len(setups) - 1}) or input.dataset")
    if (timepoint or 0) >= len(times):
        raise InputError(f"input.timepoint {timepoint} is out of range: '{path}' holds {len(times)} time point(s) "
                         f"({times[0]}..{times[-1]}); set input.timepoint to one of 0..{len(times) - 1}")
    time = times[timepoint or 0]
    setup = setups[0] if channel is None else f"s{channel:02d}"
    if setup not in setups:
        raise InputError(f"input.channel {channel} is out of range: '{path}' has the BDV setups "
                         f"{', '.join(setups)}; set input.channel to one of 0..{len(setups) - 1}")
    if setup not in f[time]:
        raise InputError(f"input '{path}' has no setup {setup} at time point {time}; BigDataViewer files with "
                         "setups missing at some time points are not read")
    levels = sorted(int(k) for k in f[time][setup] if k.isdigit())
    if scale_level not in levels:
        raise InputError(f"input.scale_level {scale_level} does not exist in '{path}': it has {len(levels)} BDV "
                         f"levels (0..{len(levels) - 1})")
    return f"{time}/{setup}/{scale_level}/cells"


def open_hdf5(path: Path, dataset: str | None, scale_level: int, channel: int | None,
              timepoint: int | None = None) -> InputVolume:
    """An HDF5 dataset as a lazily read array (BDV: the setup and level asked for)."""
    import h5py

    xml = path if path.suffix.lower() == ".xml" else path.with_suffix(".xml")
    if path.suffix.lower() == ".xml":
        path = bdv_h5_path(path)
    if not path.is_file():
        raise InputError(f"input.path: '{path}' does not exist (give an existing HDF5 file)")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"input.path: '{path}' is not a readable HDF5 file ({exc})") from None
    with f:
        bdv = any(re.fullmatch(r"t\d+", k) for k in f) and any(re.fullmatch(r"s\d+", k) for k in f)
        times = 1
        if dataset is None and bdv:
            dataset = bdv_dataset(f, path, scale_level, channel, timepoint)
            channel, times = None, len(bdv_times(f))  # the setup is the channel
        elif dataset is None:
            names = _datasets(f)
            if len(names) != 1:
                raise InputError(f"input '{path}' holds {len(names)} datasets; set input.dataset to one of: "
                                 f"{', '.join(names[:20]) or '(none)'}")
            dataset = names[0]
        if dataset not in f or not isinstance(f[dataset], h5py.Dataset):
            names = _datasets(f)
            raise InputError(f"input.dataset: no dataset '{dataset}' in '{path}' (available: "
                             f"{', '.join(names[:20]) or 'none'}{', ...' if len(names) > 20 else ''})")
        ds = f[dataset]
        where = f"'{path}' dataset '{dataset}'"
        m = BDV_CELLS.match(dataset)
        if m and bdv:
            setup, level = int(m.group(2)), int(m.group(3))
            view = np.dtype(np.uint16) if ds.dtype == np.int16 else None
            array, axes = _wrap(path, ds, view), "zyx"
            res = f"s{setup:02d}/resolutions"
            factors = np.asarray(f[res][level], float) if res in f else np.ones(3)
            found = bdv_xml_voxel(xml, setup) if xml.is_file() else None
            base, unit = found if found else ((1.0, 1.0, 1.0), None)
            voxel = tuple(float(v) for v in (np.asarray(base) * factors)[::-1])  # xyz -> zyx
            units: tuple[str | None, ...] | None = (unit,) * 3
        else:
            if scale_level:
                raise InputError(f"input.scale_level {scale_level}: HDF5 dataset {where} has one level (0); "
                                 "remove input.scale_level")
            array, axes = _wrap(path, ds), _axes(ds, where)
            voxel, units = _element_size(ds, axes)
    logger.debug("HDF5 %s: axes %s shape %s voxel %s", where, axes, array.shape, voxel)
    vol = InputVolume(str(path), array, axes, voxel, units, timepoint=(timepoint or 0) if times > 1 else 0, timepoints=times)
    return select_channel(vol, channel, where)


def _element_size(ds: Any, axes: str) -> tuple[tuple[float, ...] | None, tuple[str | None, ...] | None]:
    """``element_size_um`` (ilastik, Fiji's HDF5 plugin): one value per spatial axis, or per axis."""
    size = ds.attrs.get("element_size_um")
    spatial = [i for i, a in enumerate(axes) if a in "zyx"]
    if size is None:
        return None, None
    size = [float(v) for v in np.ravel(size)]
    if len(size) == len(axes) and len(axes) != len(spatial):
        size = [size[i] for i in spatial]
    if len(size) != len(spatial):
        logger.warning("HDF5 element_size_um %s does not match the axes %s; voxel size ignored", size, axes)
        return None, None
    return tuple(size), ("micrometer",) * len(spatial)
