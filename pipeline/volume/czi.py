"""Zeiss CZI inputs (Lightsheet 7, LSM, Axioscan: files of up to terabytes) through ``pylibCZIrw``, Zeiss's
own Python binding of libCZI (the optional extra ``czi``: ``pip install 'pipeline[czi]'``).

A CZI is a collection of 2D subblocks placed in a plane by their (x, y) and indexed by Z, C, T, scene; it has
no 3D chunks. libCZI composes any rectangle of one plane from the subblocks it meets, so a block's read is
one ``read(roi, plane)`` call per z plane (and channel) of the block: the file is read plane by plane, each
plane only within the block's (y, x) box, never whole (measured in RESULTS.md). bioio's CZI plugin wraps
the same library behind dask arrays of whole planes; reading libCZI directly gives the box reads.

``input.channel`` is the C index (several channels and none chosen: a ``c`` axis), ``input.scale_level``
must be 0 (libCZI's pyramids are 2D zooms, not levels), one scene is read (more are refused) and one time
point, ``input.timepoint`` (a time-lapse run opens each ``T`` in turn). The voxel size comes from the metadata's ``Scaling/Items/Distance`` (meters, given
in micrometers). The "chunks" presented are one z plane of (at most) 1024 x 1024: the unit a read costs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .input_volume import InputVolume

PLANE_CHUNK = 1024  # the (y, x) size presented as a chunk: one read call's natural unit
PIXEL_TYPES = {"Gray8": np.uint8, "Gray16": np.uint16, "Gray32Float": np.float32}


def _library() -> Any:
    try:
        from pylibCZIrw import czi
    except ImportError:
        raise InputError("CZI input needs the optional extra 'czi' (Zeiss's pylibCZIrw): "
                         "pip install 'pipeline[czi]'; or convert the file to OME-Zarr first") from None
    return czi


class CziArray:
    """``(c, z, y, x)`` (``c`` only with several channels read) of one scene and time point, read with
    ``[...]`` plane by plane through libCZI (see the module)."""

    def __init__(self, path: Path, channels: list[int], z: int, box: Any, dtype: np.dtype[Any], t: int = 0) -> None:
        self.path, self.channels, self.box, self.t = path, channels, box, t
        self.dtype = np.dtype(dtype)
        self.shape = ((len(channels),) if len(channels) > 1 else ()) + (z, box.h, box.w)
        self.chunks = ((1,) if len(channels) > 1 else ()) + (1, min(box.h, PLANE_CHUNK), min(box.w, PLANE_CHUNK))
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        ranges, keep = [], []
        for k, n in zip(key, self.shape, strict=True):
            if isinstance(k, slice):
                start, stop, step = k.indices(n)
                if step != 1:
                    raise ValueError("CZI reads take contiguous boxes")
                ranges.append((start, stop))
                keep.append(True)
            else:
                ranges.append((int(k), int(k) + 1))
                keep.append(False)
        cs = ranges[0] if len(self.channels) > 1 else (0, 1)
        (z0, z1), (y0, y1), (x0, x1) = ranges[-3:]
        out = np.zeros((cs[1] - cs[0], z1 - z0, y1 - y0, x1 - x0), self.dtype)
        if out.size:
            czi = _library()
            roi = (self.box.x + x0, self.box.y + y0, x1 - x0, y1 - y0)
            with czi.open_czi(str(self.path)) as reader:
                for i, c in enumerate(range(*cs)):
                    for j, z in enumerate(range(z0, z1)):
                        plane = reader.read(roi=roi, plane={"C": self.channels[c], "Z": z, "T": self.t})
                        out[i, j] = plane[..., 0] if plane.ndim == 3 else plane
        if len(self.channels) == 1:
            out = out[0]
        return out[tuple(slice(None) if k else 0 for k in keep)]


def _voxel_size(metadata: dict[str, Any]) -> tuple[float, ...] | None:
    """(z, y, x) in micrometers from ``Scaling/Items/Distance`` (meters), None when not all three are given."""
    try:
        items = metadata["ImageDocument"]["Metadata"]["Scaling"]["Items"]["Distance"]
    except (KeyError, TypeError):
        return None
    items = items if isinstance(items, list) else [items]
    found = {d.get("@Id"): float(d.get("Value", 0) or 0) for d in items if isinstance(d, dict)}
    size = tuple(found.get(a, 0.0) * 1e6 for a in "ZYX")
    return size if all(v > 0 for v in size) else None


def open_czi(path: Path, dataset: str | None, scale_level: int, channel: int | None,
             timepoint: int | None = None) -> InputVolume:
    """A CZI file as an input volume at time point ``timepoint`` (None: the first; see the module)."""
    where = f"'{path}'"
    if dataset is not None:
        raise InputError(f"input.dataset '{dataset}' is given but {where} is CZI (one image per scene); remove it")
    if scale_level:
        raise InputError(f"input.scale_level {scale_level}: CZI input {where} is read at full resolution only; "
                         "remove input.scale_level")
    czi = _library()
    try:
        with czi.open_czi(str(path)) as reader:
            bounds, box, types = reader.total_bounding_box, reader.total_bounding_rectangle, reader.pixel_types
            metadata = reader.metadata
            scenes = reader.scenes_bounding_rectangle
    except Exception as exc:  # noqa: BLE001 - libCZI's errors name no type of ours
        raise InputError(f"input {where} cannot be read as CZI ({type(exc).__name__}: {exc}); "
                         "check the file is whole (copy it again) or export it as OME-TIFF/OME-Zarr") from None
    n = {k: v[1] - v[0] for k, v in bounds.items()}
    if len(scenes) > 1:
        raise InputError(f"input {where} has {len(scenes)} scenes; one is read: export the one to segment")
    times = n.get("T", 1)
    if (timepoint or 0) >= times:
        raise InputError(f"input.timepoint {timepoint} is out of range: {where} has {times} time point(s); "
                         f"set input.timepoint to one of 0..{times - 1}")
    kinds = {types[c] for c in types}
    if len(kinds) != 1 or next(iter(kinds)) not in PIXEL_TYPES:
        raise InputError(f"input {where} has pixel types {sorted(kinds)}; CZI input reads one of "
                         f"{', '.join(PIXEL_TYPES)} (RGB and mixed types: export one channel)")
    count = n.get("C", 1)
    if channel is not None and not 0 <= channel < count:
        raise InputError(f"input.channel {channel} is out of range: {where} has {count} channel(s); "
                         f"set input.channel to one of 0..{count - 1}")
    channels = list(range(count)) if channel is None else [channel]
    t0 = bounds.get("T", (0, 1))[0]
    array = CziArray(path, channels, n.get("Z", 1), box, PIXEL_TYPES[next(iter(kinds))], t0 + (timepoint or 0))
    axes = ("c" if len(channels) > 1 else "") + "zyx"
    voxel = _voxel_size(metadata)
    units = ("micrometer",) * 3 if voxel else None
    return InputVolume(str(path), array, axes, voxel, units, timepoint=timepoint or 0, timepoints=times)
