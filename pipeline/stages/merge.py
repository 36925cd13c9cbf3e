"""The ``merge`` stage: fragment pairs accepted across every block face, union-find as a
tree of tasks, then per-block lookup tables ``local id -> global id`` (``1..N``).

Each leaf task reads the upper faces of its blocks (the face layout is the store's) and
applies the clustering method's acceptance rule; :func:`pipeline.merge.components`
reduces the accepted pairs level by level. The tables stay on a worker and each relabel
task receives only its blocks' tables.
"""

from __future__ import annotations

import numpy as np

from ..clustering import Method
from ..engine import Batch, Engine, Ref, batched
from ..merge import block_table, components, global_tables
from ..store import Store, face_axes
from .base import Task

Tables = tuple[np.ndarray, np.ndarray, int]  # global_tables' (final, starts, N)


def _count(fin: Tables) -> int:
    return fin[2]


def select_tables(fin: Tables, linears: Batch) -> list[np.ndarray]:
    """The lookup tables of the given blocks."""
    return [block_table(fin[0], fin[1], i) for i in linears]


def tables(counts: np.ndarray, stride: int, mapping: np.ndarray, store: Store | None, min_size: int) -> Tables:
    """:func:`pipeline.merge.global_tables`, on a worker; with ``min_size``, the fragment sizes
    are read here from what the blocks wrote (they never pass through the client)."""
    sizes = None
    if min_size and store is not None:
        sizes = np.concatenate([np.zeros(0, np.int64)] + [store.read_sizes(b, int(c)) for b, c in enumerate(counts) if c])
    return global_tables(counts, stride, mapping, sizes, min_size)


class MergeStage:
    name = "merge"

    def __init__(self, task: Task, method: Method) -> None:
        self.task = task
        self.method = method

    def pairs(self, linears: Batch) -> np.ndarray:
        """``[node, root]`` of the fragments joined across the upper faces of these blocks."""
        plan, store = self.task.plan, self.task.store
        edges = []
        for lin in linears:
            block = plan.block_at(lin)
            for axis in face_axes(plan):
                if block.index[axis] < plan.grid[axis] - 1:
                    edges.append(self.method.accept(*store.read_face(plan, block, axis)))
        return components(edges)

    def run(self, engine: Engine, counts: np.ndarray, min_size: int, blocks_per_task: int) -> tuple[Ref, int]:
        """``(tables, N)``: a reference to the lookup tables (for :func:`select_tables`) and
        the number of objects."""
        plan = self.task.plan
        root = engine.reduce(self.pairs, components, batched(range(len(plan)), blocks_per_task), desc=self.name)
        fin = engine.call(tables, counts, self.task.id_stride, root, self.task.store if min_size else None, min_size)
        return fin, int(engine.result(engine.call(_count, fin)))


__all__ = ["MergeStage", "select_tables"]

