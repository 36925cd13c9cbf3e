"""What every blockwise stage shares: the task context, done markers and resuming.

A stage says which arrays it creates (:meth:`BlockStage.create`) and how it processes a
batch of blocks on a worker (:meth:`BlockStage.process`). The base class marks each
block done as soon as it is written, skips finished blocks when an interrupted run is
resumed, and asks the stage to :meth:`~BlockStage.recover` what the client needs of
those blocks (summaries, statistics) from what they wrote.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..blocks import Block, BlockPlan
from ..config import InputConfig
from ..deploy import torch_threads
from ..engine import Batch, Engine, batched
from ..predict import NormStats
from ..store import Store

if TYPE_CHECKING:
    from ..prepare import Prepared

logger = logging.getLogger(__name__)

MODEL: dict[str, float] = {"model": 1}  # the resource of workers that run the network (one per GPU)
RECOVER_BATCH = 64  # finished blocks whose results one task recovers


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

    @classmethod
    def of(cls, run: Prepared, store: Store) -> Task:
        m = run.config.model
        return cls(run.config.input, store, run.plan, run.stats, str(run.checkpoint.path), m.device, m.precision,
                   m.channels_last, torch_threads(run.config.cluster))

    @property
    def float_dtype(self) -> str:
        return "float64" if self.precision == "float64" else "float32"


class BlockStage(ABC):
    """A stage that processes every block once and marks it done."""

    name: ClassVar[str]
    resources: ClassVar[dict[str, float] | None] = None

    def __init__(self, task: Task) -> None:
        self.task = task
        self.resumed = 0  # blocks finished by an earlier run (set by :meth:`run`)

    @property
    def store(self) -> Store:
        return self.task.store

    @property
    def plan(self) -> BlockPlan:
        return self.task.plan

    def create(self) -> None:  # noqa: B027 - optional hook
        """Create this stage's arrays (client side, once per output)."""

    @abstractmethod
    def process(self, blocks: Sequence[Block], *args: Any) -> Iterator[tuple[Block, Any]]:
        """Compute and write ``blocks`` (worker side); yield ``(block, result)`` per block."""

    def recover(self, blocks: Sequence[Block]) -> list[Any]:
        """Results of blocks finished by an earlier run, from what they wrote."""
        return [None] * len(blocks)

    # ------------------------------------------------------------ worker side

    def run_batch(self, linears: Batch, *args: Any) -> list[Any]:
        results = []
        for block, result in self.process([self.plan.block_at(i) for i in linears], *args):
            self.store.mark_done(self.name, block)
            results.append(result)
        return results

    def recover_batch(self, linears: Batch) -> list[Any]:
        return self.recover([self.plan.block_at(i) for i in linears])

    # ------------------------------------------------------------ client side

    def run(
        self, engine: Engine, blocks_per_task: int, *args: Any,
        per_batch: Callable[[Batch], tuple[Any, ...]] | None = None,
    ) -> Iterator[Any]:
        """Results of every block: recovered for finished blocks, computed for the rest."""
        if not self.store.has_markers(self.name):  # a new output, or a resumed run that stopped before this stage
            self.create()
            self.store.create_markers(self.name)
        done = self.store.done(self.name, len(self.plan))
        todo = [i for i in range(len(self.plan)) if not done[i]]
        finished = [i for i in range(len(self.plan)) if done[i]]
        self.resumed = len(finished)
        if finished:
            logger.info("%s: resuming, %d of %d blocks already done", self.name, len(finished), len(self.plan))
            for results in engine.map(self.recover_batch, batched(finished, RECOVER_BATCH), desc=f"{self.name} (resumed)"):
                yield from results
        for results in engine.map(self.run_batch, batched(todo, blocks_per_task), *args, desc=self.name,
                                  resources=self.resources, per_batch=per_batch):
            yield from results
