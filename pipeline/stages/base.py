"""What every blockwise stage shares: the task context, done markers and resuming.

A stage says which arrays it creates (:meth:`BlockStage.create`) and how it processes a
batch of blocks on a worker (:meth:`BlockStage.process`). The base class marks the batch
done once every block of it is written: one file per batch (with the blocks' records, for
stages that read the input), so a run leaves files in proportion to its tasks, not to its
blocks::

    scratch/done_<stage>/
      0-7-8.json          blocks 0..7 (consecutive: the name says which, nothing is read)
      8-21-6.json         blocks 8..21 but 6 of them (the others skipped): the file lists them
                          as [start, count] runs on its first line; records on its second

Batches are runs of the blocks in :func:`~pipeline.plan.blocks.in_sweep` order (neighbours, in the
order that lets a worker's chunk cache decode each input chunk once), formed again from the
plan and the input's chunks on every run. A run stopped in the middle of a batch computes the
whole batch again (its writes are idempotent). When an interrupted run is resumed, finished
blocks are skipped once the stage has :meth:`~BlockStage.verify`-ed them, and the stage
:meth:`~BlockStage.recover`-s what the client needs of them (summaries, statistics) from what
they wrote and their records.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..cluster.deploy import torch_threads
from ..config import InputConfig
from ..network.predict import NormStats
from ..plan.blocks import Block, BlockPlan, in_sweep, sweep_axes
from ..runtime.engine import Batch, Engine
from ..runtime.integrity import owned_chunks
from ..runtime.markers import MarkerIndex
from ..runtime.store import Store
from ..runtime.tasks import batched

if TYPE_CHECKING:
    from ..plan.measure import Measure
    from ..plan.prepare import Prepared

logger = logging.getLogger(__name__)

MODEL: dict[str, float] = {"model": 1}  # the resource of workers that run the network (one per GPU)
RECOVER_BATCH = 64  # finished blocks whose results one task recovers
CHECK_MARKERS = 64  # markers whose files one task checks when resuming


@dataclass(frozen=True)
class Task:
    """Everything a block task needs; small and picklable (no model, no arrays)."""

    input: InputConfig
    store: Store
    plan: BlockPlan
    stats: NormStats
    checkpoint: str
    device: str
    precision: str
    channels_last: bool
    threads: int | None
    batch_size: int = 1  # blocks per forward pass
    background: float | None = None  # raw level: a block whose input never exceeds it is empty (None: no skipping)
    zoom: tuple[float, ...] | None = None  # the input is read resampled by this (input.diameter)
    changed_input: str = "refuse"  # output.changed_input: refuse | recompute
    resume_check: str = "metadata"  # output.resume_check: metadata | content
    sweep: tuple[int, ...] | None = None  # grid axes, slowest first, in the order blocks run (see blocks.sweep_axes)
    measure: Measure | None = None  # what the objects table measures of the input (see stages.intensity)
    shards: str | tuple[int, ...] = "none"  # output.shards: how the label arrays are laid out in files

    @classmethod
    def of(cls, run: Prepared, store: Store) -> Task:
        m, out = run.config.model, run.config.output
        return cls(run.config.input, store, run.plan, run.stats, str(run.checkpoint.path), m.device, m.precision,
                   m.channels_last, torch_threads(run.config.cluster), m.batch_size,
                   run.empty.background if run.empty else None, run.zoom, out.changed_input, out.resume_check,
                   sweep_axes(run.plan, run.grid.chunks), run.measure, out.shards)

    def set_threads(self) -> None:
        """Torch threads of this process as planned for the cluster (see deploy.torch_threads)."""
        import torch

        if self.threads and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)

    @property
    def id_stride(self) -> int:
        """Fragment ids are ``block.linear * id_stride + local``: voxels per write box."""
        return math.prod(self.plan.write_shape)

    @property
    def float_dtype(self) -> str:
        return "float64" if self.precision == "float64" else "float32"


class BlockStage(ABC):
    """A stage that processes every block once and marks it done.

    A stage may :meth:`load` its blocks in a first task that holds ``load_resources``
    (the network on the GPU); :meth:`process` then runs in a second task on any thread,
    on the loaded data that stayed in worker memory, so the GPU never waits for it.
    """

    name: ClassVar[str]
    records: ClassVar[bool] = False  # whether blocks have records (kept with their done markers)
    resources: ClassVar[dict[str, float] | None] = None
    load_resources: ClassVar[dict[str, float] | None] = None

    def __init__(self, task: Task) -> None:
        self.task = task
        self.resumed = 0  # blocks finished by an earlier run (set by :meth:`run`)
        self.computed = 0  # blocks computed by this run (set by :meth:`run`)
        self.recomputed = 0  # finished blocks computed again because their input changed
        self.skip: np.ndarray | None = None  # one flag per block: not run at all (e.g. empty space)

    @property
    def store(self) -> Store:
        return self.task.store

    @property
    def plan(self) -> BlockPlan:
        return self.task.plan

    def create(self) -> None:  # noqa: B027 - optional hook
        """Create this stage's arrays (client side, once per output)."""

    def load(self, blocks: Sequence[Block]) -> list[Any] | None:
        """What :meth:`process` needs of each block, computed in a task of its own holding
        ``load_resources``; None (the default): the stage has no such step."""
        return None

    def load_bytes(self, blocks: int) -> int:
        """Memory of :meth:`load`'s result for this many blocks (bounds the tasks in flight)."""
        return 0

    @abstractmethod
    def process(self, blocks: Sequence[Block], loaded: list[Any] | None, *args: Any) -> Iterator[tuple[Any, ...]]:
        """Compute and write ``blocks`` (worker side) from what :meth:`load` returned for
        them; yield ``(block, result)`` per block, or ``(block, result, record)`` where
        ``record`` (a small JSON-able dict) is kept with the block's done marker."""

    def recover(self, blocks: Sequence[Block], records: dict[int, dict[str, Any]]) -> list[Any]:
        """Results of blocks finished by an earlier run, from what they wrote and their
        ``records`` (by linear index; read only for stages with :attr:`records`)."""
        return [None] * len(blocks)

    def verify(self, engine: Engine, finished: list[int], stale: list[int], index: MarkerIndex) -> list[int]:
        """Client side, when resuming: the blocks among ``finished`` that must be computed again
        (what they were computed from changed); ``stale``: finished blocks now skipped; ``index``:
        the marker files that hold them. The default trusts them (stages that read only the
        output's own arrays)."""
        return []

    def forget(self, linears: Sequence[int]) -> None:
        """Finished blocks that are computed again (or now skipped): unmark them."""
        self.store.forget(self.name, linears)

    # ------------------------------------------------------------ worker side

    @property
    def has_load(self) -> bool:
        return type(self).load is not BlockStage.load

    def load_batch(self, linears: Batch) -> list[Any] | None:
        return self.load([self.plan.block_at(i) for i in linears])

    def run_batch(self, linears: Batch, loaded: list[Any] | None, *args: Any) -> list[Any]:
        self.task.set_threads()
        results, records = [], []
        blocks = [self.plan.block_at(i) for i in linears]
        for _, result, *record in self.process(blocks, loaded, *args):
            results.append(result)
            records.append(record[0] if record else None)
        if len(linears):  # every block of the batch is written: one marker for the batch, vouching for its files
            self.store.mark_done(self.name, linears, records if self.records else None, self.written(linears, blocks))
        return results

    def outputs(self) -> tuple[str, ...]:
        """The arrays this stage writes block by block (their chunks are vouched for)."""
        return ()

    def side_files(self, linears: Batch) -> list[Path]:
        """Files other than array chunks that the batch ``linears`` wrote (e.g. faces)."""
        return []

    def written(self, linears: Batch, blocks: Sequence[Block]) -> list[Path]:
        """What the batch's marker vouches for: the output chunks its blocks alone hold, and its
        side files (see :mod:`pipeline.runtime.integrity`)."""
        boxes = [b.valid for b in blocks]
        chunks = [c for name in self.outputs()
                  for c in owned_chunks(self.store.array(name, mode="r"), self.store.where(name), boxes)]
        return chunks + self.side_files(linears)

    def drop(self, names: Sequence[str]) -> None:
        """Forget the batches of damaged markers: the markers and the files named after them."""
        self.store.drop_markers(self.name, names)

    def check_files(self, engine: Engine, index: MarkerIndex) -> bool:
        """Client side, when resuming: drop the finished batches whose marker is unreadable or
        whose files are missing or damaged (they are computed again), saying so in one line.
        Whether any was."""
        damaged = damaged_markers(engine, self.store, self.name, index, self.task.resume_check == "content")
        if damaged:
            self.drop([n for n, _ in damaged])
        return bool(damaged)

    def run_unloaded(self, linears: Batch, *args: Any) -> list[Any]:
        return self.run_batch(linears, None, *args)

    def recover_batch(self, linears: Batch, files: Sequence[str]) -> list[Any]:
        records = self.store.records(self.name, linears, files) if self.records else {}
        return self.recover([self.plan.block_at(i) for i in linears], records)

    # ------------------------------------------------------------ client side

    def batches(self, todo: np.ndarray, blocks_per_task: int) -> Sequence[list[int]]:
        """The blocks ``todo`` as the batches of tasks (a stage writing shards: whole shards each)."""
        return batched(todo, blocks_per_task)

    def run(
        self, engine: Engine, blocks_per_task: int, *args: Any,
        per_batch: Callable[[Batch], tuple[Any, ...]] | None = None,
    ) -> Iterator[Any]:
        """Results of every block: recovered for finished blocks, computed for the rest."""
        if not self.store.has_markers(self.name):  # a new output, or a resumed run that stopped before this stage
            self.create()
            self.store.create_markers(self.name)
        skip = self.skip if self.skip is not None else np.zeros(len(self.plan), dtype=bool)
        index = self.store.index(self.name, len(self.plan))
        if self.check_files(engine, index):
            index = self.store.index(self.name, len(self.plan))
        marked = index.owner >= 0
        done = marked & ~skip
        stale = np.flatnonzero(marked & skip).tolist()
        changed = self.verify(engine, np.flatnonzero(done).tolist(), stale, index)
        done[changed] = False
        if changed or stale:  # markers may have been written again (see Store.forget)
            index = self.store.index(self.name, len(self.plan))
        self.recomputed = len(changed)
        todo = in_sweep(np.flatnonzero(~done & ~skip), self.plan.grid, self.task.sweep)
        finished = np.flatnonzero(done)
        self.resumed, self.computed = len(finished), len(todo)
        if len(finished):
            logger.info("%s: resuming, %d of %d blocks already done", self.name, len(finished), len(self.plan))
            for results in engine.map(self.recover_batch, index.batches(finished, RECOVER_BATCH),
                                      desc=f"{self.name} (resumed)", per_batch=index.files):
                yield from results
        first = (self.load_batch, self.load_resources) if self.has_load else None
        for results in engine.map(self.run_batch if first else self.run_unloaded, self.batches(todo, blocks_per_task),
                                  *args, desc=self.name, resources=self.resources, per_batch=per_batch,
                                  first=first, batch_bytes=self.load_bytes(blocks_per_task), unit="block",
                                  item_voxels=math.prod(self.plan.write_shape), spans=self.task.sweep is not None):
            yield from results


def _check_markers(positions: Batch, store: Store, stage: str, content: bool, names: Sequence[str]) -> list[tuple[str, str]]:
    """``(marker, why)`` for the markers ``names`` of ``stage`` that cannot be trusted (a task)."""
    return [(n, why) for n in names if (why := store.check_marker(stage, n, content))]


def damaged_markers(engine: Engine, store: Store, stage: str, index: MarkerIndex, content: bool) -> list[tuple[str, str]]:
    """The markers of ``stage`` (those of ``index``) that cannot be trusted, checked in tasks of
    :data:`CHECK_MARKERS` markers (see :func:`pipeline.runtime.integrity.check_marker`), with why;
    a warning line names the first ones when there are any."""
    names = index.names
    if not names:
        return []
    damaged: list[tuple[str, str]] = []
    for found in engine.map(_check_markers, batched(range(len(names)), CHECK_MARKERS), store, stage, content,
                            desc=f"{stage} (file check)", per_batch=lambda b: ([names[k] for k in b],)):
        damaged += found
    if damaged:
        position = {n: k for k, n in enumerate(names)}
        hit = [position[n] for n, _ in damaged]
        blocks = int(np.isin(index.owner, hit).sum())
        logger.warning("%s: %d finished batch(es) (%d blocks) had missing or damaged files, computing them again: %s",
                       stage, len(damaged), blocks, "; ".join(why for _, why in damaged[:3])
                       + (f"; and {len(damaged) - 3} more" if len(damaged) > 3 else ""))
    return damaged
