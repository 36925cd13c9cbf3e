"""The ``relabel`` stage: each block's fragment ids through its lookup table into the
global ``segmentation`` (uint32, or uint64 beyond 2**32 - 1 objects); writes the block's
partial object statistics, split by id range, one file per batch, for the ``objects`` stage.

With ``input.diameter`` the blocks cover the resampled input: relabel writes the labels of
that grid to scratch and the ``restore`` stage maps them back to the input grid (nearest
neighbour), where the statistics are taken."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..plan.blocks import Block, BlockPlan, rows, span
from ..runtime.engine import Batch, Engine
from ..runtime.markers import batch_name, marker_name
from ..runtime.store import FRAGMENTS, ZOOMED
from ..volume.io import write_region
from ..volume.resample import nearest_indices
from .base import BlockStage, Task
from .ids import object_stats
from .objects import part_of, stats_rows
from .relabel_kernel import relabel_block

SEGMENTATION = "segmentation"


class RelabelStage(BlockStage):
    """Writes ``target`` (``segmentation``; the resampled grid's labels with ``input.diameter``)
    and, with ``stats``, the blocks' partial object statistics."""

    name = "relabel"

    def __init__(self, task: Task, dtype: str, target: str = SEGMENTATION, stats: bool = True) -> None:
        super().__init__(task)
        self.dtype, self.target, self.stats = dtype, target, stats

    def outputs(self) -> tuple[str, ...]:
        return (self.target,)

    def side_files(self, linears: Batch) -> list[Path]:
        return self.store.stats_files(batch_name(linears))

    def drop(self, names: Sequence[str]) -> None:
        super().drop(names)
        for name in names:
            for f in self.store.stats_files(name.removesuffix(".json")):
                f.unlink(missing_ok=True)

    def block_stats(self, block: Block, labels: np.ndarray) -> np.ndarray | None:
        """The block's partial object statistics (one row per object it holds), with ``stats``."""
        return stats_rows(object_stats(labels, block.valid.offset)) if self.stats else None

    def write_stats(self, blocks: Sequence[Block], rows: list[np.ndarray | None]) -> None:
        """One file per batch and id range it touches, named by the batch's marker file (a rerun
        of the batch replaces them; :meth:`run` removes those of batches never marked done)."""
        if not self.stats or not blocks:
            return
        every = np.concatenate([r for r in rows if r is not None])
        part = part_of(every["id"])
        name = marker_name(np.sort([b.linear for b in blocks])).removesuffix(".json")
        for p in np.unique(part):
            self.store.write_stats(int(p), name, every[part == p])

    def run(self, engine: Engine, blocks_per_task: int, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """:meth:`BlockStage.run`, first removing the statistics of batches that were written but
        not marked done (a run stopped in between; they are computed again, maybe batched
        otherwise). The stage never forgets single blocks: a changed fragment resets it whole."""
        if self.stats:
            names = self.store.index(self.name, len(self.plan)).names
            self.store.prune_stats({n.removesuffix(".json") for n in names})
        yield from super().run(engine, blocks_per_task, *args, **kwargs)

    def create(self) -> None:
        self.store.create(self.target, self.plan.volume, self.plan.write_shape, self.dtype)

    def process(self, blocks: Sequence[Block], loaded: Any, *args: Any) -> Iterator[tuple[Block, None]]:
        """Neighbouring blocks along the last axis are read and written together (one zarr
        operation per run instead of per block)."""
        (tables,) = args
        table_of = dict(zip((b.linear for b in blocks), tables, strict=True))
        frag, seg = self.store.array(FRAGMENTS, mode="r"), self.store.array(self.target)
        stats = []
        for run in rows(blocks):
            box = span(run)
            local = frag[box.to_slices()]
            labels = np.empty(box.shape, dtype=self.dtype)
            for block in run:
                rel = block.valid.to_slices(relative_to=box)
                table = table_of[block.linear].astype(self.dtype, copy=False)
                found = relabel_block(local[rel], block.linear, table, labels[rel], block.valid.offset)
                stats.append(stats_rows(found) if self.stats else None)
            write_region(seg, box.to_slices(), labels)
            for block in run:
                yield block, None
        self.write_stats(blocks, stats)


def restore_plan(shape: tuple[int, ...], zoomed: BlockPlan, zoom: tuple[float, ...]) -> BlockPlan:
    """Blocks of the input grid, each about one resampled block wide (no halo)."""
    write = tuple(max(1, round(w / z)) for w, z in zip(zoomed.write_shape, zoom, strict=True))
    return BlockPlan(shape, write, (0,) * len(shape), (1,) * len(shape))


class RestoreStage(RelabelStage):
    """``input.diameter``: the resampled grid's labels back onto the input grid (nearest
    neighbour, see :mod:`pipeline.volume.resample`) as ``segmentation``, with the object statistics.
    Its task's plan covers the input grid."""

    name = "restore"

    def __init__(self, task: Task, dtype: str, zoomed_shape: tuple[int, ...], zoom: tuple[float, ...]) -> None:
        super().__init__(task, dtype)
        self.zoomed_shape, self.zoom = zoomed_shape, zoom

    def process(self, blocks: Sequence[Block], loaded: Any, *args: Any) -> Iterator[tuple[Block, None]]:
        src, seg = self.store.array(ZOOMED, mode="r"), self.store.array(SEGMENTATION)
        stats = []
        for run in rows(blocks):
            box = span(run)
            idx = [nearest_indices(o, o + s, z, n) for o, s, z, n
                   in zip(box.offset, box.shape, self.zoom, self.zoomed_shape, strict=True)]
            region = src[tuple(slice(int(i[0]), int(i[-1]) + 1) for i in idx)]
            labels = np.asarray(region)[np.ix_(*(i - i[0] for i in idx))]
            seg[box.to_slices()] = labels
            for block in run:
                stats.append(self.block_stats(block, labels[block.valid.to_slices(relative_to=box)]))
                yield block, None
        self.write_stats(blocks, stats)
