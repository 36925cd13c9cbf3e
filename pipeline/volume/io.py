"""Reading and writing volumes: zarr v2/v3 arrays, OME-Zarr images; TIFF and HDF5 inputs
through :mod:`pipeline.volume.formats`.

Inputs are opened lazily (metadata only) and read box by box; the output group's layout
belongs to :mod:`pipeline.runtime.store`. Reads take a
:class:`~pipeline.geometry.Box` in volume coordinates and reflect the volume at
its borders exactly like ``numpy.pad(mode="reflect")``, so border blocks are
computed at full size.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..config import InputConfig
from ..errors import UsageError
from ..geometry import Box
from ..plan.blocks import reflect_indices
from .cache import DECODED, chunk_cache, file_stamp

logger = logging.getLogger(__name__)


class InputError(UsageError):
    """An input the user must fix (missing, wrong shape or dtype, ...)."""


class OutputError(UsageError):
    """An output that cannot be written without losing data or permission."""


class InputReadError(InputError):
    """Voxel data of the input that cannot be read: a corrupt, truncated or unreadable chunk,
    TIFF page or HDF5 chunk."""


SPATIAL = "zyx"
UNREADABLE_HINT = ("copy the file again from its source; or set input.unreadable: empty to read unreadable chunks "
                   "as empty (their regions are recorded in the result), or give empty.mask to skip the region")


@dataclass(frozen=True)
class Unreadable:
    """A chunk of the input read as empty (``input.unreadable: empty``): what it is and where."""

    chunk: str  # the chunk file, TIFF page or HDF5 chunk
    region: Box  # spatial, in volume coordinates, clipped to the volume

    def as_json(self) -> list[Any]:
        return [self.chunk, [v for o, e in zip(self.region.offset, self.region.end, strict=True) for v in (o, e)]]

    @classmethod
    def from_json(cls, item: Sequence[Any]) -> Unreadable:
        ranges = item[1]
        return cls(str(item[0]), Box(tuple(ranges[0::2]), tuple(e - o for o, e in zip(ranges[0::2], ranges[1::2],
                                                                                        strict=True))))


_UNREADABLE: ContextVar[list[Unreadable] | None] = ContextVar("unreadable", default=None)


@contextmanager
def collect_unreadable() -> Iterator[list[Unreadable]]:
    """The chunks that reads in this context (this thread) read as empty."""
    found: list[Unreadable] = []
    token = _UNREADABLE.set(found)
    try:
        yield found
    finally:
        _UNREADABLE.reset(token)


def digest(data: np.ndarray) -> str:
    """Content digest of an array (dtype, shape and bytes): 128 bits of SHA-256."""
    h = hashlib.sha256(f"{data.dtype.str}{data.shape}".encode())
    h.update(memoryview(np.ascontiguousarray(data)).cast("B"))
    return h.hexdigest()[:32]


def stamp(files: Sequence[str] | None) -> str | None:
    """Digest of the size and modification time (ns) of ``files`` (a missing file counts as
    such); None when the input's storage has no files to look at."""
    if files is None:
        return None
    h = hashlib.sha256()
    for name in files:
        try:
            st = os.stat(name)
            h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except FileNotFoundError:
            h.update(f"{name}\0-\n".encode())
    return h.hexdigest()[:32]


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
    where: str = ""  # how messages name it, e.g. "'in.zarr' dataset 'raw'"
    unreadable: str = "error"  # input.unreadable: error | empty
    cache_mib: int | None = 0  # input.chunk_cache_mib (None: automatic; 0: no cache)

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

    def _selection(self, box: Box) -> tuple[tuple[Any, ...], list[np.ndarray], list[int], list[int]]:
        """The array index that reads ``box`` (its part inside the volume), the reflected voxel
        indices per spatial axis, and the read's spatial start and stop."""
        if box.ndim != self.ndim:
            raise ValueError(f"box {box.describe()} is {box.ndim}D, volume is {self.ndim}D")
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
        return tuple(index), spatial, lo, hi

    def source_region(self, box: Box) -> Box:
        """The region of the volume a read of ``box`` touches (its reflected halo included)."""
        _, _, lo, hi = self._selection(box)
        return Box(tuple(lo), tuple(h - a for a, h in zip(lo, hi, strict=True)))

    def read(self, box: Box) -> np.ndarray:
        """``(C, *box.shape)`` data in the input's dtype; outside the volume the data is reflected.
        A chunk that cannot be read is an :class:`InputReadError` naming it, or with
        ``input.unreadable: empty`` reads as the fill value (see :func:`collect_unreadable`)."""
        index, spatial, lo, hi = self._selection(box)
        data = self._get(index)
        kept = [a for a in self.axes if a != "t" and (a != "c" or self.channel is None)]
        if "c" not in kept:
            data = data[None]
        elif kept.index("c") != 0:
            data = np.moveaxis(data, kept.index("c"), 0)
        rel = [ix - start for ix, start in zip(spatial, lo, strict=True)]
        if any(not isinstance(r, np.ndarray) or len(r) != (h - s) or not np.array_equal(r, np.arange(h - s)) for r, s, h in zip(rel, lo, hi, strict=True)):
            data = data[(slice(None), *np.ix_(*rel))]
        return data

    # ------------------------------------------------------------ chunks: cached, unreadable

    def _ranges(self, index: tuple[Any, ...]) -> list[tuple[int, int, bool]]:
        """Per array axis of ``index``: start, stop, and whether the axis is kept (a slice)."""
        return [(*k.indices(n)[:2], True) if isinstance(k, slice) else (int(k), int(k) + 1, False)
                for k, n in zip(index, self.array.shape, strict=True)]

    def decoded_bytes(self, index: tuple[Any, ...]) -> int:
        """Bytes of the chunks (clipped to the array) that reading ``index`` decodes."""
        total = np.dtype(self.array.dtype).itemsize
        for (a, b, _), c, n in zip(self._ranges(index), self.array.chunks, self.array.shape, strict=True):
            total *= min(n, -(-b // c) * c) - a // c * c
        return total

    @property
    def cached(self) -> bool:
        """Whether reads go through the process's chunk cache: zarr arrays in a local store (whose
        chunk files tell when they change), unless ``input.chunk_cache_mib`` is 0."""
        store = getattr(getattr(self.array, "store_path", None), "store", None)
        return self.cache_mib != 0 and isinstance(self.array, zarr.Array) and isinstance(store, zarr.storage.LocalStore)

    def _get(self, index: tuple[Any, ...]) -> np.ndarray:
        if self.cached:
            return self._get_by_chunk(index, cache=True)
        try:
            data = np.asarray(self.array[index])
        except UsageError:
            raise
        except Exception:  # noqa: BLE001 - find the chunk that fails, and say which
            return self._get_by_chunk(index)
        DECODED.add(self.decoded_bytes(index))
        return data

    def _chunk(self, coords: tuple[int, ...]) -> np.ndarray:
        """The whole chunk at ``coords`` (clipped to the array), through the process's cache."""
        arr = self.array
        whole = tuple(slice(j * c, min((j + 1) * c, n)) for j, c, n in zip(coords, arr.chunks, arr.shape, strict=True))
        cache = chunk_cache(self.cache_mib)
        if cache is None:
            return np.asarray(arr[whole])
        base = Path(arr.store_path.store.root) / arr.store_path.path
        return cache.get((str(base), coords), lambda: np.asarray(arr[whole]),
                         file_stamp(str(base / self.storage_key(coords))))

    def _get_by_chunk(self, index: tuple[Any, ...], cache: bool = False) -> np.ndarray:
        """``array[index]`` read chunk by chunk (``cache``: whole chunks through the process's
        chunk cache, cut): an unreadable chunk raises :class:`InputReadError` naming it, or reads as
        the fill value (``unreadable: empty``)."""
        arr, chunks = self.array, tuple(self.array.chunks)
        ranges = self._ranges(index)
        out = np.empty(tuple(b - a for a, b, keep in ranges if keep), dtype=np.dtype(arr.dtype))
        cells = [range(a // c, (b - 1) // c + 1) for (a, b, _), c in zip(ranges, chunks, strict=True)]
        for coords in itertools.product(*cells):
            src, dst, cut = [], [], []
            for (a, b, keep), c, j in zip(ranges, chunks, coords, strict=True):
                start, stop = max(a, j * c), min(b, (j + 1) * c)
                src.append(slice(start, stop) if keep else start)
                cut.append(slice(start - j * c, stop - j * c) if keep else start - j * c)
                if keep:
                    dst.append(slice(start - a, stop - a))
            try:
                if cache:
                    out[tuple(dst)] = self._chunk(coords)[tuple(cut)]
                else:
                    piece = np.asarray(arr[tuple(src)])
                    DECODED.add(self.decoded_bytes(tuple(src)))
                    out[tuple(dst)] = piece
            except UsageError:
                raise
            except Exception as exc:  # noqa: BLE001 - reported in one line, or read as empty
                bad = Unreadable(self.chunk_name(coords), self.chunk_region(coords))
                if self.unreadable != "empty":
                    reason = (str(exc).strip().splitlines() or [""])[0]
                    raise InputReadError(
                        f"input {self.where or repr(self.path)}: {bad.chunk} ({bad.region.describe(axes=self.spatial_names)}) "
                        f"cannot be read ({type(exc).__name__}: {reason}); {UNREADABLE_HINT}") from None
                out[tuple(dst)] = getattr(arr, "fill_value", None) or 0
                found = _UNREADABLE.get()
                if found is None:
                    logger.warning("input %s: %s (%s) cannot be read; read as empty (input.unreadable: empty)",
                                   self.where or repr(self.path), bad.chunk, bad.region.describe(axes=self.spatial_names))
                else:
                    found.append(bad)
        return out

    @property
    def spatial_names(self) -> str:
        return "".join(a for a in self.axes if a in SPATIAL)

    def chunk_region(self, coords: Sequence[int]) -> Box:
        """The spatial region of the array chunk at ``coords``, clipped to the volume."""
        chunks = self.array.chunks
        box = Box(tuple(coords[i] * chunks[i] for i in self.spatial_axes), tuple(chunks[i] for i in self.spatial_axes))
        return box.intersect(Box.from_shape(self.shape))

    def chunk_name(self, coords: Sequence[int]) -> str:
        """How a message names the chunk at ``coords``: its file, its TIFF page, its HDF5 chunk."""
        named = getattr(self.array, "chunk_name", None)
        if named is not None:  # TIFF slices, HDF5 (pipeline.volume.formats)
            return str(named(coords))
        store = getattr(getattr(self.array, "store_path", None), "store", None)
        if type(store).__name__ == "ZarrTiffStore":  # pages: the planes before y
            before = self.axes.index("y")
            grid = [-(-n // c) for n, c in zip(self.array.shape, self.array.chunks, strict=True)]
            page = int(np.ravel_multi_index(tuple(coords[:before]), tuple(grid[:before]))) if before else 0
            tiled = self.array.chunks[before] < self.array.shape[before]
            return f"page {page}" + (f" (tile {list(coords[before:])})" if tiled else "")
        key = self.storage_key(coords)
        if isinstance(store, zarr.storage.LocalStore):
            return f"chunk file '{Path(store.root) / self.array.store_path.path / key}'"
        return f"chunk '{key}'"

    def storage_key(self, coords: Sequence[int]) -> str:
        """The zarr store key of the chunk at ``coords`` (its shard's, for a sharded array)."""
        shards = getattr(self.array, "shards", None)
        if shards:
            coords = tuple(j * c // s for j, c, s in zip(coords, self.array.chunks, shards, strict=True))
        return str(self.array.metadata.encode_chunk_key(tuple(coords)))

    # ------------------------------------------------------------ what a read depends on

    def files(self, box: Box) -> list[str] | None:
        """The files a read of ``box`` depends on (chunk files and the array's metadata; the one
        TIFF or HDF5 file; the TIFF slices), for :func:`stamp`; None: not files on a disk."""
        own = getattr(self.array, "files_of", None)
        index = self._selection(box)[0]
        if own is not None:  # TIFF slices, HDF5 (pipeline.volume.formats)
            return list(own(index))
        store = getattr(getattr(self.array, "store_path", None), "store", None)
        if type(store).__name__ == "ZarrTiffStore":
            return [str(self.path)]
        if not isinstance(store, zarr.storage.LocalStore):
            return None
        grid_chunks = getattr(self.array, "shards", None) or self.array.chunks
        cells = []
        for k, n, c in zip(index, self.array.shape, grid_chunks, strict=True):
            a, b = k.indices(n)[:2] if isinstance(k, slice) else (int(k), int(k) + 1)
            cells.append(range(a // c, (b - 1) // c + 1))
        base = Path(store.root) / self.array.store_path.path
        meta = "zarr.json" if self.array.metadata.zarr_format == 3 else ".zarray"
        keys = (str(self.array.metadata.encode_chunk_key(coords)) for coords in itertools.product(*cells))
        return [str(base / meta), *(str(base / key) for key in keys)]


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


def input_where(cfg: InputConfig) -> str:
    """How messages name an input: its path, and its dataset when one is set."""
    return f"'{cfg.path}'" + (f" dataset '{cfg.dataset}'" if cfg.dataset else "")


def open_input(cfg: InputConfig) -> InputVolume:
    """Open the input described by ``cfg`` (metadata only, no voxel data read): zarr here,
    TIFF and HDF5 in :mod:`pipeline.volume.formats`; ``cfg.channel`` selects one channel."""
    from .formats import open_format, select_channel  # they import this module

    where = input_where(cfg)
    vol = open_format(cfg) or select_channel(_open_zarr(cfg, where), cfg.channel, where)
    vol = replace(vol, where=where, unreadable=cfg.unreadable, cache_mib=cfg.chunk_cache_mib)
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
