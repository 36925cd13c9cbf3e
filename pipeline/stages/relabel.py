"""The ``relabel`` stage: each block's fragment ids through its lookup table into the
global ``segmentation`` (uint32, or uint64 beyond 2**32 - 1 objects); writes the block's
partial object statistics, split by id range, for the ``objects`` stage."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..blocks import Block, rows, span
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
        """Neighbouring blocks along the last axis are read and written together (one zarr
        operation per run instead of per block)."""
        (tables,) = args
        table_of = dict(zip((b.linear for b in blocks), tables, strict=True))
        frag, seg = self.store.array(FRAGMENTS, mode="r"), self.store.array(SEGMENTATION)
        for run in rows(blocks):
            box = span(run)
            ids = frag[box.to_slices()]
            labels = np.empty(box.shape, dtype=self.dtype)
            for block in run:
                rel = block.valid.to_slices(relative_to=box)
                labels[rel] = table_of[block.linear][local_ids(ids[rel], block.linear, self.task.id_stride)]
            seg[box.to_slices()] = labels
            for block in run:
                self.write_stats(block, labels[block.valid.to_slices(relative_to=box)])
                yield block, None
