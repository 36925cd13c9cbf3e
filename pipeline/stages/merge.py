"""The ``merge`` stage: fragment pairs accepted across every block face, union-find as a
tree of tasks, then per-block lookup tables ``local id -> global id`` (``1..N``).

Each leaf task reads the upper faces of its blocks (the face layout is the store's) and
applies the clustering method's acceptance rule; :func:`pipeline.stages.ids.components`
reduces the accepted pairs level by level. The tables stay on a worker and each relabel
task receives only its blocks' tables.

Each leaf task also records what it saw on its faces (the seam audit, :mod:`pipeline.qc.audit`)
in ``qc/seams/<first block>.npz``; once the tables exist, a task summarises the records
into ``qc/seam_audit.json``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..clustering import Method
from ..plan.blocks import BlockPlan
from ..qc.audit import batch_record, face_audit, iter_records, save_record, summarise
from ..runtime.engine import Batch, Engine
from ..runtime.faces import face_axes
from ..runtime.markers import MarkerIndex
from ..runtime.store import Store
from ..runtime.tasks import Ref, batched
from .base import Task
from .fragments import FragmentsStage
from .ids import block_table, components, global_tables

SEAMS = "seams"
Tables = tuple[np.ndarray, np.ndarray, int]  # global_tables' (final, starts, N)


class BlockTables:
    """``tables[b]``: block ``b``'s lookup table, made on demand from :data:`Tables`."""

    def __init__(self, fin: Tables) -> None:
        self.final, self.starts = fin[0], fin[1]

    def __getitem__(self, linear: int) -> np.ndarray:
        return block_table(self.final, self.starts, int(linear))


def _count(fin: Tables) -> int:
    return fin[2]


def audit_summary(fin: Tables, store: Store, stride: int, rule: dict[str, Any]) -> dict[str, Any]:
    """``qc/seam_audit.json`` from the merge tasks' records (a task next to the tables)."""
    # the records are saved again with the objects cut by each face
    audit = summarise(iter_records(store.qc_path(SEAMS), rewrite=True), BlockTables(fin), stride, rule, fin[2])
    store.qc_path("seam_audit.json").write_text(json.dumps(audit, indent=1))
    return {k: v for k, v in audit.items() if not isinstance(v, list | dict)}


def select_tables(fin: Tables, linears: Batch) -> list[np.ndarray]:
    """The lookup tables of the given blocks."""
    return [block_table(fin[0], fin[1], i) for i in linears]


def tables(counts: np.ndarray, stride: int, mapping: np.ndarray, store: Store | None, min_size: int) -> Tables:
    """:func:`pipeline.stages.ids.global_tables`, on a worker; with ``min_size``, the fragment sizes
    are read here from the records the blocks kept (they never pass through the client)."""
    sizes = None
    if min_size and store is not None:
        sizes = store.fragment_sizes("fragments", counts)
    return global_tables(counts, stride, mapping, sizes, min_size)


def face_files(plan: BlockPlan, index: MarkerIndex, linears: Sequence[int]) -> list[str]:
    """The faces files (fragments markers) that hold the blocks ``linears`` and their upper
    neighbours: what a merge task over them reads."""
    ids = np.asarray(linears, dtype=np.int64)
    need = [ids]
    coords = np.stack(np.unravel_index(ids, plan.grid))
    for axis in face_axes(plan):
        up = coords.copy()
        up[axis] += 1
        inside = up[axis] < plan.grid[axis]
        need.append(np.ravel_multi_index(tuple(up[:, inside]), plan.grid))
    return index.files(np.unique(np.concatenate(need)))[0]


class MergeStage:
    name = "merge"

    def __init__(self, task: Task, method: Method) -> None:
        self.task = task
        self.method = method
        self.audit: dict[str, Any] = {}  # the seam audit's totals (set by :meth:`run`)

    def pairs(self, batch: tuple[Batch, Sequence[str]]) -> np.ndarray:
        """``[node, root]`` of the fragments joined across the upper faces of these blocks
        (``batch``: the blocks, and the faces files that hold them and their upper neighbours)."""
        plan, store = self.task.plan, self.task.store
        linears, files = batch
        held = store.faces(files)
        edges, faces = [], []
        for lin in linears:
            block = plan.block_at(lin)
            for axis in face_axes(plan):
                if block.index[axis] < plan.grid[axis] - 1:
                    face = held.face(plan, block, axis)
                    edges.append(self.method.accept(*face))
                    faces.append((lin, axis, face[0], face[1], face_audit(*face, edges[-1])))
        if faces:
            save_record(store.qc_path(f"{SEAMS}/{linears[0]}.npz"), batch_record(faces))
        return components(edges)

    def run(self, engine: Engine, counts: np.ndarray, min_size: int, blocks_per_task: int,
            blocks: Sequence[int] | None = None) -> tuple[Ref, int]:
        """``(tables, N)``: a reference to the lookup tables (for :func:`select_tables`) and
        the number of objects. Only the upper faces of blocks that hold fragments are read (a
        face with background on one side joins nothing: empty space costs no task), of
        ``blocks`` only when given (a region run: the other blocks wrote no faces)."""
        shutil.rmtree(self.task.store.qc_path(SEAMS), ignore_errors=True)  # records of an interrupted run
        held = counts > 0
        todo = np.flatnonzero(held).tolist() if blocks is None else [b for b in blocks if held[b]]
        index = self.task.store.index(FragmentsStage.name, len(self.task.plan))  # its markers name the faces files
        work = [(b, face_files(self.task.plan, index, b)) for b in batched(todo, blocks_per_task)]
        root = engine.reduce(self.pairs, components, work, desc=self.name)
        fin = engine.call(tables, counts, self.task.id_stride, root, self.task.store if min_size else None, min_size)
        rule = {"method": self.method.name, **self.method.describe()}
        self.audit = engine.result(engine.call(audit_summary, fin, self.task.store, self.task.id_stride, rule))
        return fin, int(engine.result(engine.call(_count, fin)))


__all__ = ["MergeStage", "audit_summary", "select_tables"]

