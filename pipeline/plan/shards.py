"""How the output's label arrays are laid out in files: one file per chunk, or zarr v3 shards (one
file holding a brick of chunks), chosen by ``output.shards``.

A cluster file system limits files per user (GPFS/Lustre quotas of 10^6-10^7 are common) and copying or
deleting millions of small files takes hours; a dense 1 TB volume in (64, 256, 256) chunks is 2 million
chunk files. Shards of :data:`SHARD_VOXELS` make it 8,192. A shard must have exactly one writer (two
tasks writing different chunks of one shard lose one's write: zarr-python reads, modifies and rewrites
the whole file), so the stages that write a sharded array give each task whole shards
(:func:`shard_batches`). Pure functions; no files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..volume.ome import task_shape

SHARD_VOXELS = 2**26  # voxels per shard for ``auto``: (256, 512, 512); 256 MiB of uint32 labels in a task
AUTO_FILES = 10_000  # ``auto`` shards an array that would have more chunk files than this


def files(shape: Sequence[int], cell: Sequence[int]) -> int:
    """Files an array of ``shape`` has when every ``cell`` (chunk or shard) holds data."""
    return math.prod(-(-n // c) for n, c in zip(shape, cell, strict=True))


def shard_shape(setting: str | Sequence[int], shape: Sequence[int], chunks: Sequence[int]) -> tuple[int, ...] | None:
    """The shard shape of an array of ``shape`` and ``chunks`` for ``output.shards`` (``none``, ``auto``, or
    voxels per axis, rounded up to whole chunks and cut to the array), or None: one file per chunk.
    ``auto`` shards only an array of more than :data:`AUTO_FILES` chunks."""
    if setting == "none":
        return None
    if setting == "auto":
        if files(shape, chunks) <= AUTO_FILES:
            return None
        shard = task_shape(chunks, shape, max(SHARD_VOXELS, math.prod(chunks)))  # chunks doubled, last axes first
    else:
        shard = tuple(min(-(-s // c), -(-n // c)) * c for s, c, n in zip(setting, chunks, shape, strict=True))
    return None if tuple(shard) == tuple(chunks) else tuple(shard)


def shard_batches(linears: Sequence[int], grid: Sequence[int], per_shard: Sequence[int]) -> list[list[int]]:
    """``linears`` (blocks of a C-order ``grid``) grouped by the shard that holds them (``per_shard``
    blocks per axis), shards in the order their first block comes, blocks in the order given: the
    batches of a stage writing a sharded array, one writer per shard."""
    ids = np.asarray(linears, dtype=np.int64)
    if ids.size == 0:
        return []
    coords = np.unravel_index(ids, tuple(grid))
    shard_grid = tuple(-(-g // p) for g, p in zip(grid, per_shard, strict=True))
    sid = np.ravel_multi_index(tuple(c // p for c, p in zip(coords, per_shard, strict=True)), shard_grid)
    first = np.unique(sid, return_index=True)[1]
    rank = np.empty(sid.max() + 1, np.int64)
    rank[sid[np.sort(first)]] = np.arange(first.size)
    order = np.argsort(rank[sid], kind="stable")
    cuts = np.flatnonzero(np.diff(rank[sid][order])) + 1
    return [part.tolist() for part in np.split(ids[order], cuts)]


def describe_files(setting: str | Sequence[int], arrays: dict[str, tuple[Sequence[int], Sequence[int]]]) -> str:
    """For ``pipeline plan``: the files each array (name -> shape, chunks) will have at most (every chunk
    holding labels), sharded per ``setting``, with the one-file-per-chunk count where it differs."""
    parts = []
    for name, (shape, chunks) in arrays.items():
        shard = shard_shape(setting, shape, chunks)
        n, plain = files(shape, shard or chunks), files(shape, chunks)
        parts.append(f"{name} {n:,}" + (f" ({list(shard)}-voxel shards; {plain:,} chunk files unsharded)" if shard else ""))
    return "; ".join(parts)
