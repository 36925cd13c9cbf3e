"""The ``scan`` stage: which blocks are empty before any block is predicted (see
:mod:`pipeline.plan.empty`): first those whose input chunks the store does not hold (one listing,
on the client), then, from a mask or a lower pyramid level, one low-resolution read per
remaining block (:func:`listed_empty` runs first, alone, so the space check counts only the
blocks that can hold anything). The client keeps one flag per block."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from ..config import InputConfig
from ..plan.blocks import BlockPlan
from ..plan.empty import EmptySource, Listing, absent_blocks, coarse_box, is_empty
from ..runtime.engine import Batch, Engine
from ..runtime.tasks import batched
from .predict import input_volume

logger = logging.getLogger(__name__)

SCAN_BATCH = 256  # blocks per scan task


class ScanStage:
    name = "scan"

    def __init__(self, plan: BlockPlan, source: EmptySource, absent: np.ndarray | None = None) -> None:
        self.plan = plan
        self.source = source
        self.absent = absent  # blocks known empty from the store's listing (see :func:`listed_empty`)

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
        scanned when given: a region run; the listing covers every block, it costs the same)."""
        flags = np.zeros(len(self.plan), dtype=bool) if self.absent is None else self.absent.copy()
        if self.source.kind == "read":
            return flags  # the rest is decided as each block is read
        wanted = np.ones(len(self.plan), dtype=bool)
        if blocks is not None:
            wanted[:] = False
            wanted[list(blocks)] = True
        todo = np.flatnonzero(wanted & ~flags)
        for empty in engine.map(self.scan, batched(todo, SCAN_BATCH), desc=self.name):
            flags[empty] = True
        return flags


def listed_empty(plan: BlockPlan, source: EmptySource | None, input: InputConfig,
                 zoom: tuple[float, ...] | None = None, listing: Listing | None = None) -> np.ndarray | None:
    """The blocks whose input chunks the store does not hold (client side, one listing; see
    :func:`pipeline.plan.empty.absent_blocks`); None when empty space is not skipped or the store
    cannot tell."""
    if source is None:
        return None
    absent = absent_blocks(plan, input_volume(input, zoom), source.background, listing)
    if absent is not None:
        logger.info("scan: %d of %d blocks read only input chunks the store does not hold: empty, never read",
                    int(absent.sum()), len(plan))
    return absent
