"""Stages writing a sharded array (``output.shards``): one writer per shard file.

zarr-python writes a chunk of a shard by reading, modifying and rewriting the whole shard file, so two
tasks writing different chunks of one shard lose one's write. A stage writing a sharded array therefore
gives each task whole shards (:func:`batches_for`), buffers a batch's blocks (:class:`Output`) and writes
each shard once, from one buffer, at the end of the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..geometry import Box
from ..plan.blocks import Block, BlockPlan
from ..plan.shards import shard_batches
from ..runtime.tasks import batched
from ..volume.io import write_region


def shards_of(arr: Any) -> tuple[int, ...] | None:
    """The shard shape of a zarr array, or None (one file per chunk, or zarr v2)."""
    shards = getattr(arr, "shards", None)
    return tuple(shards) if shards else None


def blocks_per_shard(plan: BlockPlan, shards: Sequence[int]) -> list[int]:
    """Blocks per axis in one shard of an array chunked by the plan's write shape."""
    return [s // w for s, w in zip(shards, plan.write_shape, strict=True)]


def batches_for(arr: Any, plan: BlockPlan, todo: np.ndarray, blocks_per_task: int) -> list[list[int]]:
    """The blocks ``todo`` as the batches of tasks writing ``arr``: whole shards each when it is sharded
    (one writer per shard file, blocks in the order given), else runs of ``blocks_per_task``."""
    shards = shards_of(arr)
    if not shards:
        return batched(todo, blocks_per_task)
    return shard_batches(todo, plan.grid, blocks_per_shard(plan, shards))


def shard_mates(plan: BlockPlan, shards: Sequence[int], linears: Sequence[int]) -> np.ndarray:
    """Every block (sorted linear indices) of the shards that hold ``linears``: what is computed again
    when one of them is (a shard is rewritten whole, by one task)."""
    ids = np.asarray(linears, dtype=np.int64)
    if ids.size == 0:
        return ids
    per = np.asarray(blocks_per_shard(plan, shards))
    grid = np.asarray(plan.grid)
    first = np.unique(np.stack(np.unravel_index(ids, plan.grid), axis=1) // per, axis=0) * per  # each shard's first block
    offsets = np.stack(np.meshgrid(*(np.arange(p) for p in per), indexing="ij"), -1).reshape(-1, len(per))
    every = (first[:, None, :] + offsets[None]).reshape(-1, len(per))
    every = every[np.all(every < grid, axis=1)]
    return np.unique(np.ravel_multi_index(tuple(every.T), plan.grid))


class Output:
    """Where a batch's blocks go: into the array box by box; for a sharded array, into one buffer over
    the batch's blocks (whole shards, see :func:`batches_for`), written once by :meth:`close`. Where the
    batch's blocks do not tile the buffer's box (a block of the shard not in the batch), the box is read
    first, so that the blocks not computed again keep what they hold."""

    def __init__(self, arr: Any, blocks: Sequence[Block], dtype: Any) -> None:
        self.arr, self.box, self.buffer = arr, None, None
        if shards_of(arr) and blocks:
            lo = np.min([b.valid.offset for b in blocks], axis=0)
            hi = np.max([b.valid.end for b in blocks], axis=0)
            self.box = Box(tuple(int(v) for v in lo), tuple(int(v) for v in hi - lo))
            if sum(math.prod(b.valid.shape) for b in blocks) == math.prod(self.box.shape):
                self.buffer = np.zeros(self.box.shape, dtype)
            else:
                self.buffer = np.asarray(arr[self.box.to_slices()], dtype=dtype)

    def put(self, box: Box, labels: np.ndarray) -> None:
        if self.buffer is None or self.box is None:
            write_region(self.arr, box.to_slices(), labels)
        else:
            self.buffer[box.to_slices(relative_to=self.box)] = labels

    def close(self) -> None:
        if self.buffer is not None and self.box is not None:
            write_region(self.arr, self.box.to_slices(), self.buffer)
