"""Which chunks an input's store holds, from one listing of it (nothing read): the flags every other
decision about absent chunks starts from (:mod:`.empty`: blocks that read none; :mod:`.intensity`: where
the statistics are sampled). Streamed into one flag per chunk, never a Python object per chunk."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..volume.input_volume import InputVolume


def _decoder(arr: zarr.Array) -> Callable[[str], tuple[int, ...]]:
    """Chunk key -> grid coordinates (ValueError for a key that is not a chunk's)."""
    meta = arr.metadata
    encoding = getattr(meta, "chunk_key_encoding", None)
    if encoding is None:  # zarr v2
        sep, head = meta.dimension_separator or ".", ""
    else:
        sep = encoding.separator
        head = "" if type(encoding).__name__ == "V2ChunkKeyEncoding" else f"c{sep}"

    def decode(key: str) -> tuple[int, ...]:
        if not key.startswith(head):
            raise ValueError(key)
        return tuple(int(part) for part in key[len(head):].split(sep))

    return decode


Listing = tuple[np.ndarray, tuple[int, ...]]  # (stored, cell): see stored_chunks


def stored_chunks(vol: InputVolume) -> Listing | None:
    """``(stored, size)``: one flag per chunk of the input's spatial grid (per shard for a
    sharded array), True where the store holds it, and the spatial size of a grid cell; from one
    listing of the store, nothing read. None when the input is not a zarr array (TIFF, HDF5).

    The listing is streamed into the flags: a local store is walked directory by directory
    (:func:`_walk_local`), any other store's keys decoded in batches of :data:`LIST_BATCH`; neither holds
    a Python object per chunk (a dense petabyte input lists ~10^7 keys)."""
    arr = vol.array
    store_path = getattr(arr, "store_path", None)
    if store_path is None or not hasattr(arr, "metadata") or type(store_path.store).__name__ == "ZarrTiffStore":
        return None
    cell = tuple(getattr(arr, "shards", None) or arr.chunks)
    grid = tuple(-(-n // c) for n, c in zip(arr.shape, cell, strict=True))
    stored = np.zeros(grid, dtype=bool)
    root = getattr(store_path.store, "root", None)
    if type(store_path.store).__name__ != "LocalStore" or root is None or not _walk_local(arr, Path(root) / store_path.path, stored):
        _list_keys(arr, store_path, stored)
    if "t" in vol.axes:  # the time point read: its cells only
        t = vol.axes.index("t")
        stored = np.take(stored, [vol.timepoint // cell[t]], axis=t)
    other = tuple(i for i in range(len(grid)) if i not in vol.spatial_axes)
    return (stored.any(axis=other) if other else stored), tuple(cell[i] for i in vol.spatial_axes)


LIST_BATCH = 1 << 16  # keys decoded at a time by _list_keys


def _mark(stored: np.ndarray, coords: list[tuple[int, ...]]) -> None:
    """Flag the chunks ``coords`` (those inside the grid) in ``stored``."""
    if not coords:
        return
    at = np.asarray([c for c in coords if len(c) == stored.ndim], dtype=np.int64).reshape(-1, stored.ndim)
    at = at[np.all((at >= 0) & (at < np.asarray(stored.shape)), axis=1)]
    stored[tuple(at.T)] = True


def _list_keys(arr: zarr.Array, store_path: Any, stored: np.ndarray) -> None:
    """Any store: its keys under the array, decoded batch by batch into ``stored``."""
    from zarr.core.sync import sync

    prefix = f"{store_path.path}/" if store_path.path else ""
    decode = _decoder(arr)

    async def listing() -> None:
        batch: list[tuple[int, ...]] = []
        async for key in store_path.store.list_prefix(prefix):
            try:
                batch.append(decode(key[len(prefix):]))
            except (ValueError, TypeError):
                continue  # metadata (zarr.json, .zarray), not a chunk
            if len(batch) >= LIST_BATCH:
                _mark(stored, batch)
                batch.clear()
        _mark(stored, batch)

    sync(listing())


def _walk_local(arr: zarr.Array, folder: Path, stored: np.ndarray) -> bool:
    """A local array whose chunk keys are one directory per axis (``c/z/y/x``, zarr v2 with ``/``):
    walked with ``os.scandir`` (no stat per file), each last directory's names flagged at once.
    False (nothing walked) for keys of another layout (zarr v2's ``z.y.x``)."""
    meta = arr.metadata
    encoding = getattr(meta, "chunk_key_encoding", None)
    sep = (meta.dimension_separator or ".") if encoding is None else encoding.separator
    if sep != "/" or stored.ndim == 0:
        return False
    head = folder / "c" if encoding is not None and type(encoding).__name__ != "V2ChunkKeyEncoding" else folder
    nd = stored.ndim

    def walk(path: Path, prefix: tuple[int, ...]) -> None:
        try:
            entries = list(os.scandir(path))
        except (FileNotFoundError, NotADirectoryError):
            return
        names = [e.name for e in entries if e.name.isdigit() and (e.is_file() if len(prefix) == nd - 1 else e.is_dir())]
        if len(prefix) == nd - 1:
            idx = np.asarray(names, dtype=np.int64)
            idx = idx[idx < stored.shape[-1]]
            if all(p < g for p, g in zip(prefix, stored.shape, strict=False)):
                stored[(*prefix, idx)] = True
            return
        for name in names:
            if int(name) < stored.shape[len(prefix)]:
                walk(path / name, (*prefix, int(name)))

    walk(head, ())
    return True
