"""The ``fragments`` stage: predict each block (GPU task), cluster it (CPU task), write
block-unique fragment ids and the evidence on the block's faces; return a small summary
per block.

Fragment ids are ``block.linear * stride + local`` (``stride`` = voxels per write box),
so no block waits for another's numbering.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..audit import BlockRecord, save_record
from ..blocks import Block
from ..clustering import Method
from ..engine import Engine
from ..merge import fragment_ids, local_ids
from ..store import FRAGMENTS
from .base import MODEL, BlockStage, Task
from .predict import output_bytes, predict_blocks


def summary(linear: int, local: np.ndarray) -> dict[str, Any]:
    """What the client keeps of a block: its fragment count and their voxel counts."""
    sizes = np.bincount(local.ravel())[1:] if local.size else np.zeros(0, np.int64)
    return {"linear": linear, "count": int(local.max()) if local.size else 0, "sizes": sizes.astype(np.int64)}


class FragmentsStage(BlockStage):
    """Predicts blocks in tasks holding the ``model`` resource; clusters them in tasks on
    any thread of the worker that holds the embeddings (never written to disk)."""

    name = "fragments"
    load_resources = MODEL

    def __init__(self, task: Task, method: Method, embed_dim: int) -> None:
        super().__init__(task)
        self.method = method
        self.embed_dim = embed_dim

    def create(self) -> None:
        self.store.create(FRAGMENTS, self.plan.volume, self.plan.write_shape, "uint64")
        self.store.create_faces(self.plan, self.embed_dim, self.task.float_dtype)

    def load(self, blocks: Sequence[Block]) -> list[tuple[np.ndarray, np.ndarray, float]]:
        t0 = time.perf_counter()
        out = predict_blocks(self.task, blocks)
        seconds = (time.perf_counter() - t0) / max(len(blocks), 1)  # per block of the batch
        return [(*o, seconds) for o in out]

    def load_bytes(self, blocks: int) -> int:
        return output_bytes(self.task, self.embed_dim, blocks)

    def process(self, blocks: Sequence[Block], loaded: Any, *args: Any) -> Iterator[tuple[Block, dict[str, Any]]]:
        frag = self.store.array(FRAGMENTS)
        for block, (emb, fg, predict_s) in zip(blocks, loaded, strict=True):
            t0 = time.perf_counter()
            local = self.method.fragments(emb, fg)
            ids = fragment_ids(local, block.linear, self.task.id_stride)
            frag[block.valid.to_slices()] = ids
            self.store.write_faces(self.plan, block, ids, self.method.face_evidence(emb, local))
            yield block, {**summary(block.linear, local), "predict_s": predict_s, "cluster_s": time.perf_counter() - t0}

    def summaries(self, engine: Engine, blocks_per_task: int, with_sizes: bool) -> tuple[np.ndarray, list[np.ndarray]]:
        """Run the stage: fragment counts per block and, ``with_sizes``, their voxel counts
        (needed only to filter whole objects by size)."""
        counts = np.zeros(len(self.plan), dtype=np.int64)
        sizes = [np.zeros(0, np.int64)] * len(self.plan)
        record = BlockRecord(len(self.plan))  # qc/blocks.npz: counts, times (NaN: resumed), flags
        for s in self.run(engine, blocks_per_task):
            counts[s["linear"]] = s["count"]
            record.add(s)
            if with_sizes:
                sizes[s["linear"]] = s["sizes"]
        save_record(self.store.qc_path("blocks.npz"), record.arrays())
        return counts, sizes

    def recover(self, blocks: Sequence[Block]) -> list[dict[str, Any]]:
        frag = self.store.array(FRAGMENTS, mode="r")
        return [summary(b.linear, local_ids(frag[b.valid.to_slices()], b.linear, self.task.id_stride)) for b in blocks]
