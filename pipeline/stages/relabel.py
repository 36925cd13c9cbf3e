"""The ``relabel`` stage: each block's fragment ids through its lookup table into the
global ``segmentation`` (uint32, or uint64 beyond 2**32 - 1 objects); returns the
block's partial object statistics for the ``objects`` stage."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..blocks import Block
from ..merge import local_ids, object_stats
from ..store import FRAGMENTS
from .base import BlockStage, Task

SEGMENTATION = "segmentation"


class RelabelStage(BlockStage):
    name = "relabel"

    def __init__(self, task: Task, dtype: str) -> None:
        super().__init__(task)
        self.dtype = dtype

    def create(self) -> None:
        self.store.create(SEGMENTATION, self.plan.volume, self.plan.write_shape, self.dtype)

    def process(self, blocks: Sequence[Block], loaded: Any, *args: Any) -> Iterator[tuple[Block, dict[str, np.ndarray]]]:
        (tables,) = args
        frag, seg = self.store.array(FRAGMENTS, mode="r"), self.store.array(SEGMENTATION)
        for block, table in zip(blocks, tables, strict=True):
            labels = table[local_ids(frag[block.valid.to_slices()], block.linear, self.task.id_stride)].astype(self.dtype)
            seg[block.valid.to_slices()] = labels
            yield block, object_stats(labels, block.valid.offset)

    def recover(self, blocks: Sequence[Block]) -> list[dict[str, np.ndarray]]:
        seg = self.store.array(SEGMENTATION, mode="r")
        return [object_stats(np.asarray(seg[b.valid.to_slices()]), b.valid.offset) for b in blocks]
