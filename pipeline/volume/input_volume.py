"""The input volume: a lazily opened array plus what its metadata says, read box by box.

Reads take a :class:`~pipeline.geometry.Box` in volume coordinates and reflect the volume at
its borders exactly like ``numpy.pad(mode="reflect")``, so border blocks are computed at full
size. Zarr arrays in a local store are read through the process's chunk cache
(:mod:`pipeline.volume.cache`); a chunk that cannot be read is named in an
:class:`~pipeline.volume.errors.InputReadError`, or read as empty. Opening inputs is
:mod:`pipeline.volume.io`'s; :func:`digest` and :func:`stamp` tell when what a read depends on changed.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..errors import UsageError
from ..geometry import Box
from ..plan.blocks import reflect_indices
from .cache import DECODED, chunk_cache, file_stamp
from .errors import UNREADABLE_FOUND, UNREADABLE_HINT, InputReadError, Unreadable

logger = logging.getLogger(__name__)

SPATIAL = "zyx"


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
    timepoint: int = 0  # the time point read (an index along a t axis; formats that keep time points apart open one)
    timepoints: int = 1  # how many the input holds
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
            else:  # t
                index.append(self.timepoint)
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
                found = UNREADABLE_FOUND.get()
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
        if named is not None:  # TIFF slices, HDF5 (pipeline.volume.tiff, pipeline.volume.hdf5)
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
        if own is not None:  # TIFF slices, HDF5 (pipeline.volume.tiff, pipeline.volume.hdf5)
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
