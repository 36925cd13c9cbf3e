"""The ``scan`` stage: which blocks are empty, from a mask or a lower pyramid level (see
:mod:`pipeline.empty`), one low-resolution read per block, before any block is predicted.
The client keeps one flag per block."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..blocks import BlockPlan
from ..empty import EmptySource, coarse_box, is_empty
from ..engine import Batch, Engine, batched
from .predict import input_volume

SCAN_BATCH = 256  # blocks per scan task


class ScanStage:
    name = "scan"

    def __init__(self, plan: BlockPlan, source: EmptySource) -> None:
        self.plan = plan
        self.source = source

    def scan(self, linears: Batch) -> list[int]:
        """The empty blocks among ``linears``: a mask is 0 over the block's write box, a
        pyramid level is background over its read box (the halo's objects count)."""
        src = self.source
        assert src.array is not None
        vol = input_volume(src.array)
        mask = src.kind == "mask"
        boxes = ((b.valid if mask else b.read) for b in map(self.plan.block_at, linears))
        return [i for i, box in zip(linears, boxes, strict=True)
                if is_empty(vol.read(coarse_box(box, self.plan.volume, src.factors, vol.shape)), None if mask else src.background)]

    def run(self, engine: Engine, blocks: Sequence[int] | None = None) -> np.ndarray:
        """One flag per block (linear order): True where the block is empty (only ``blocks`` are
        scanned when given: a region run)."""
        flags = np.zeros(len(self.plan), dtype=bool)
        if self.source.kind == "read":
            return flags  # decided as each block is read
        todo = range(len(self.plan)) if blocks is None else blocks
        for empty in engine.map(self.scan, batched(todo, SCAN_BATCH), desc=self.name):
            flags[empty] = True
        return flags
