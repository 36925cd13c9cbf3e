"""The ``relabel`` stage: each block's fragment ids through its lookup table into the
global ``segmentation`` (uint32, or uint64 beyond 2**32 - 1 objects); writes the block's
partial object statistics, split by id range, for the ``objects`` stage."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..blocks import Block
from ..merge import local_ids, object_stats
from ..store import FRAGMENTS
from .base import BlockStage, Task
from .objects import part_of, stats_rows

SEGMENTATION = "segmentation"


class RelabelStage(BlockStage):
    name = "relabel"

    def __init__(self, task: Task, dtype: str) -> None:
        super().__init__(task)
        self.dtype = dtype

    def write_stats(self, block: Block, labels: np.ndarray) -> None:
        """One file per block and id range it touches (a rerun of the block replaces them)."""
        rows = stats_rows(object_stats(labels, block.valid.offset))
        part = part_of(rows["id"])
        for p in np.unique(part):
            self.store.write_stats(int(p), str(block.linear), rows[part == p])

    def create(self) -> None:
        self.store.create(SEGMENTATION, self.plan.volume, self.plan.write_shape, self.dtype)

    def process(self, blocks: Sequence[Block], loaded: Any, *args: Any) -> Iterator[tuple[Block, None]]:
        (tables,) = args
        frag, seg = self.store.array(FRAGMENTS, mode="r"), self.store.array(SEGMENTATION)
        for block, table in zip(blocks, tables, strict=True):
            labels = table[local_ids(frag[block.valid.to_slices()], block.linear, self.task.id_stride)].astype(self.dtype)
            seg[block.valid.to_slices()] = labels
            self.write_stats(block, labels)
            yield block, None
