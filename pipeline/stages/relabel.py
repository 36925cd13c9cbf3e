"""The ``relabel`` stage: each block's fragment ids through its lookup table into the
global ``segmentation`` (uint32, or uint64 beyond 2**32 - 1 objects); writes the block's
partial object statistics, split by id range, one file per batch, for the ``objects`` stage;
with ``objects.intensity`` / ``objects.channels`` the intensity statistics (:mod:`.intensity`) of the
input read for the same box. The background ring needs the labels ``objects.ring`` voxels around the
box: the fragments there are read too, and the lookup tables of the blocks they belong to come with
the batch's own (:func:`ring_linears`); empty blocks next to labelled ones are relabelled (zeros) so
their ring voxels are counted (:func:`relabel_skip`).

With ``input.diameter`` the blocks cover the resampled input: relabel writes the labels of
that grid to scratch and the ``restore`` stage maps them back to the input grid (nearest
neighbour), where the statistics are taken (the input's intensities too, on its own grid)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ..geometry import Box
from ..plan.blocks import Block, BlockPlan, rows, span
from ..plan.shards import shard_shape
from ..runtime.engine import Batch, Engine
from ..runtime.markers import batch_name, marker_name
from ..runtime.store import FRAGMENTS, ZOOMED
from ..volume.resample import nearest_indices
from .base import BlockStage, Task
from .ids import object_stats
from .intensity import block_partials, fragment_intensity, intensity_stats, ring_partials
from .merge import select_tables
from .objects import part_of, stats_rows
from .predict import input_volume
from .relabel_kernel import relabel_block
from .sharded import Output, batches_for

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

    @property
    def ring(self) -> int:
        """The background ring's width (0: none measured)."""
        m = self.task.measure
        return m.ring if self.stats and m is not None else 0

    def block_stats(self, block: Block, labels: np.ndarray, data: np.ndarray | None,
                    grown: np.ndarray | None = None, own: tuple[slice, ...] | None = None) -> np.ndarray | None:
        """The block's partial object statistics (numpy reference path), with ``stats``: ``labels`` its
        labels, ``data`` its input channels when measured, ``grown`` its labels and the ring's width
        around (``own``: the block in it) when the ring is measured."""
        if not self.stats:
            return None
        found = object_stats(labels, block.valid.offset)
        own_i = None if data is None else intensity_stats(labels, data)
        ring = None if grown is None or data is None else ring_partials(grown, own, data, self.ring, found["id"])
        return stats_rows(block_partials(found, own_i, ring), block.linear)

    def read_input(self, box: Box) -> np.ndarray | None:
        """The measured input channels in ``box`` (on the input grid), ``(C, *box.shape)``."""
        m = self.task.measure
        if not self.stats or m is None:
            return None
        cfgs = [self.task.input if c is None else self.task.input.model_copy(update={"channel": c}) for c in m.channels]
        return np.stack([input_volume(cfg).read(box)[0] for cfg in cfgs])

    def tables_of(self, engine: Engine, tables: Any) -> Callable[[Batch], tuple[Any, ...]]:
        """A batch's arguments: the blocks whose lookup tables it needs (:func:`ring_linears`) and
        those tables, selected on a worker from ``tables`` (the merge's result)."""
        def args(batch: Batch) -> tuple[Any, ...]:
            near = ring_linears(self.plan, batch, self.ring)
            return near, engine.call(select_tables, tables, near)
        return args

    def grown(self, box: Box) -> Box:
        """``box`` and the ring's width around it, inside the volume."""
        r, vol = self.ring, self.plan.volume
        lo = [max(o - r, 0) for o in box.offset]
        hi = [min(e + r, n) for e, n in zip(box.end, vol, strict=True)]
        return Box(tuple(lo), tuple(h - a for a, h in zip(lo, hi, strict=True)))

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
        shards = shard_shape(self.task.shards, self.plan.volume, self.plan.write_shape) if self.target == SEGMENTATION else None
        self.store.create(self.target, self.plan.volume, self.plan.write_shape, self.dtype, shards=shards)

    def batches(self, todo: np.ndarray, blocks_per_task: int) -> Sequence[list[int]]:
        """Whole shards per task when the target is sharded (one writer per shard file)."""
        return batches_for(self.store.array(self.target, mode="r"), self.plan, todo, blocks_per_task)

    def process(self, blocks: Sequence[Block], loaded: Any, *args: Any) -> Iterator[tuple[Block, None]]:
        """Neighbouring blocks along the last axis are read and written together (one zarr
        operation per run instead of per block)."""
        linears, tables = args  # the batch's blocks and, with a ring, the blocks around them
        table_of = dict(zip(linears, tables, strict=True))
        frag, out = self.store.array(FRAGMENTS, mode="r"), Output(self.store.array(self.target), blocks, self.dtype)
        stats = []
        for run in rows(blocks):
            box = span(run)
            grown = self.grown(box)
            local = frag[grown.to_slices()]
            labels = np.zeros(grown.shape, dtype=self.dtype)
            data = self.read_input(box)
            found = []
            for block in run:
                rel = block.valid.to_slices(relative_to=grown)
                table = table_of[block.linear].astype(self.dtype, copy=False)
                if len(table) == 1:  # no fragments this run (a block skipped as empty may hold an older run's)
                    local[rel] = 0
                found.append(relabel_block(local[rel], block.linear, table, labels[rel], block.valid.offset))
            if self.ring:
                self.halo(run, grown, local, labels, table_of)
            out.put(box, labels[box.to_slices(relative_to=grown)])
            for block, f in zip(run, found, strict=True):
                if self.stats:  # ids checked by relabel_block first
                    stats.append(stats_rows(self.partials(block, f, grown, local, labels, table_of, data, box),
                                            block.linear))
                yield block, None
        out.close()
        self.write_stats(blocks, stats)

    def halo(self, run: Sequence[Block], grown: Box, local: np.ndarray, labels: np.ndarray,
             table_of: dict[int, np.ndarray]) -> None:
        """The labels of ``grown`` outside the run's blocks, from the fragments of the blocks there."""
        own = {b.linear for b in run}
        w = self.plan.write_shape
        ranges = [range(o // s, (e - 1) // s + 1) for o, e, s in zip(grown.offset, grown.end, w, strict=True)]
        for index in np.ndindex(*(len(r) for r in ranges)):
            block = self.plan.block(tuple(r[i] for r, i in zip(ranges, index, strict=True)))
            part = block.valid.intersect(grown)
            if block.linear in own or min(part.shape) == 0:
                continue
            rel = part.to_slices(relative_to=grown)
            table = table_of[block.linear].astype(self.dtype, copy=False)
            if len(table) == 1:  # as in process: no fragments this run
                local[rel] = 0
            labels[rel] = table[local[rel]]

    def partials(self, block: Block, found: dict[str, np.ndarray], grown: Box, local: np.ndarray,
                 labels: np.ndarray, table_of: dict[int, np.ndarray], data: np.ndarray | None,
                 box: Box) -> dict[str, np.ndarray]:
        """One block's statistics (``found``, from relabel_block) and its intensity and ring partials."""
        if data is None:
            return found
        rel = block.valid.to_slices(relative_to=grown)
        values = data[(slice(None), *block.valid.to_slices(relative_to=box))]
        own = fragment_intensity(local[rel], table_of[block.linear].astype(self.dtype, copy=False), values)
        ring = None
        if self.ring:
            around = self.grown(block.valid)
            ring = ring_partials(labels[around.to_slices(relative_to=grown)],
                                 block.valid.to_slices(relative_to=around), values, self.ring, found["id"])
        return block_partials(found, own, ring)


def ring_linears(plan: BlockPlan, linears: Batch, ring: int) -> list[int]:
    """The blocks ``linears`` and, with a ring, every block within ``ring`` voxels of one of them
    (whose lookup tables a relabel task needs), sorted."""
    ids = np.asarray(linears, dtype=np.int64)
    if not ring:
        return [int(i) for i in ids]
    coords = np.stack(np.unravel_index(ids, plan.grid), axis=1)
    reach = [-(-ring // w) for w in plan.write_shape]
    shifts = np.stack(np.meshgrid(*(np.arange(-k, k + 1) for k in reach), indexing="ij"), -1).reshape(-1, plan.ndim)
    near = (coords[:, None, :] + shifts[None]).reshape(-1, plan.ndim)
    near = near[np.all((near >= 0) & (near < np.asarray(plan.grid)), axis=1)]
    return [int(i) for i in np.unique(np.ravel_multi_index(tuple(near.T), plan.grid))]


def relabel_skip(plan: BlockPlan, counts: np.ndarray, ring: int) -> np.ndarray:
    """The blocks relabel leaves alone: no fragments (the fill value, 0, stands), and with a ring no
    labelled block within ``ring`` voxels either (its voxels may be in a ring)."""
    empty = counts == 0
    if not ring:
        return empty
    reach = [-(-ring // w) for w in plan.write_shape]
    near = ndimage.binary_dilation((~empty).reshape(plan.grid), np.ones([2 * k + 1 for k in reach], bool))
    return empty & ~near.ravel()


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

    def restored(self, box: Box, src: Any) -> np.ndarray:
        """The labels of ``box`` on the input grid, from the resampled grid's (``src``)."""
        idx = [nearest_indices(o, o + s, z, n) for o, s, z, n
               in zip(box.offset, box.shape, self.zoom, self.zoomed_shape, strict=True)]
        region = src[tuple(slice(int(i[0]), int(i[-1]) + 1) for i in idx)]
        return np.asarray(region)[np.ix_(*(i - i[0] for i in idx))]

    def process(self, blocks: Sequence[Block], loaded: Any, *args: Any) -> Iterator[tuple[Block, None]]:
        src, out = self.store.array(ZOOMED, mode="r"), Output(self.store.array(SEGMENTATION), blocks, self.dtype)
        stats = []
        for run in rows(blocks):
            box = span(run)
            grown = self.grown(box)  # the box itself without a ring
            around = self.restored(grown, src)
            labels = around[box.to_slices(relative_to=grown)]
            out.put(box, labels)
            data = self.read_input(box)
            for block in run:
                rel = block.valid.to_slices(relative_to=box)
                near = self.grown(block.valid)
                stats.append(self.block_stats(
                    block, labels[rel], None if data is None else data[(slice(None), *rel)],
                    around[near.to_slices(relative_to=grown)] if self.ring else None,
                    block.valid.to_slices(relative_to=near)))
                yield block, None
        out.close()
        self.write_stats(blocks, stats)
