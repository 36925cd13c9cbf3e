"""The ``fragments`` stage: predict each block (GPU task), cluster it (CPU task), write
block-unique fragment ids and the evidence on the block's faces; return a small summary
per block.

Fragment ids are ``block.linear * stride + local`` (``stride`` = voxels per write box),
so no block waits for another's numbering. ``scratch/fragments`` keeps the local ids (in
the smallest dtype for ``stride``); the faces carry the global ids.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..clustering import Method
from ..plan.blocks import Block
from ..qc.audit import BlockRecord, save_record
from ..runtime.engine import Batch, Engine
from ..runtime.faces import Faces, face_blob
from ..runtime.markers import batch_name
from ..runtime.store import FACES, FRAGMENTS
from ..volume.io import write_region
from .base import MODEL, Task
from .ids import fragment_dtype
from .predict import InputStage, output_bytes, predict_blocks


def summary(linear: int, local: np.ndarray) -> dict[str, Any]:
    """What the client keeps of a block: its fragment count (O(blocks) numbers in all)."""
    return {"linear": linear, "count": int(local.max()) if local.size else 0, "empty": False}


class FragmentsStage(InputStage):
    """Predicts blocks in tasks holding the ``model`` resource; clusters them in tasks on
    any thread of the worker that holds the embeddings (never written to disk)."""

    name = "fragments"
    load_resources = MODEL

    def __init__(self, task: Task, method: Method, embed_dim: int) -> None:
        super().__init__(task)
        self.method = method
        self.embed_dim = embed_dim
        self.keep_sizes = bool(method.params.min_size)  # fragment sizes, for min_size on whole objects

    def create(self) -> None:
        self.store.create(FRAGMENTS, self.plan.volume, self.plan.write_shape, fragment_dtype(self.task.id_stride))
        self.store.create_faces()

    def load(self, blocks: Sequence[Block]) -> list[tuple[tuple[np.ndarray, np.ndarray, float] | None, dict[str, Any]]]:
        t0 = time.perf_counter()
        out = predict_blocks(self.task, blocks, skip_empty=True)
        seconds = (time.perf_counter() - t0) / max(len(blocks), 1)  # per block of the batch
        return [(None if o is None else (*o, seconds), record) for o, record in out]

    def load_bytes(self, blocks: int) -> int:
        return output_bytes(self.task, self.embed_dim, blocks)

    def process(self, blocks: Sequence[Block], loaded: Any, *args: Any) -> Iterator[tuple[Block, dict[str, Any], dict[str, Any]]]:
        frag = self.store.array(FRAGMENTS)
        faces: dict[int, bytes] = {}
        for block, (predicted, record) in zip(blocks, loaded, strict=True):
            unreadable = {"unreadable": record["unreadable"]} if "unreadable" in record else {}
            if predicted is None:  # empty space: nothing written, the arrays' fill value stands
                yield block, {"linear": block.linear, "count": 0, "empty": True, **unreadable}, record
                continue
            emb, fg, predict_s = predicted
            t0 = time.perf_counter()
            local = self.method.fragments(emb, fg)
            write_region(frag, block.valid.to_slices(), local.astype(frag.dtype, copy=False))
            faces[block.linear] = face_blob(self.plan, block, local, self.method.face_evidence(emb, local),
                                            self.task.id_stride)
            if self.keep_sizes:  # kept with the block's done marker
                record = {**record, "sizes": np.bincount(local.ravel())[1:].tolist()}
            yield block, {**summary(block.linear, local), "predict_s": predict_s, "cluster_s": time.perf_counter() - t0,
                          **unreadable}, record
        self.store.write_faces([b.linear for b in blocks], faces)  # one file, before the batch is marked done

    def summaries(self, engine: Engine, blocks_per_task: int) -> tuple[np.ndarray, np.ndarray]:
        """Run the stage: the number of fragments of every block, and which blocks were
        empty space (those in :attr:`skip`, and those found empty as they were read)."""
        counts = np.zeros(len(self.plan), dtype=np.int64)
        empty = np.zeros(len(self.plan), dtype=bool) if self.skip is None else self.skip.copy()
        record = BlockRecord(len(self.plan))  # qc/blocks.npz: counts, times (NaN: resumed), flags
        for s in self.run(engine, blocks_per_task):
            counts[s["linear"]] = s["count"]
            empty[s["linear"]] = s["empty"]
            record.add(s)
        save_record(self.store.qc_path("blocks.npz"), {**record.arrays(), "skipped": empty})
        return counts, empty

    def recover_batch(self, linears: Sequence[int], files: Sequence[str]) -> list[dict[str, Any]]:
        records = self.store.records(self.name, linears, files)
        return self.recover([self.plan.block_at(i) for i in linears], records, self.store.faces(files))

    def recover(self, blocks: Sequence[Block], records: dict[int, dict[str, Any]],
                faces: Faces | None = None) -> list[dict[str, Any]]:
        frag = self.store.array(FRAGMENTS, mode="r")
        out = []
        for b in blocks:
            unreadable = {"unreadable": records[b.linear]["unreadable"]} if "unreadable" in records[b.linear] else {}
            if faces is not None and not faces.has(b.linear):  # found empty when it was read
                out.append({"linear": b.linear, "count": 0, "empty": True, **unreadable})
            else:
                out.append({**summary(b.linear, frag[b.valid.to_slices()]),
                            **unreadable})
        return out

    def outputs(self) -> tuple[str, ...]:
        return (FRAGMENTS,)

    def side_files(self, linears: Batch) -> list[Path]:
        return [Path(self.store.path) / FACES / batch_name(linears)]

    def drop(self, names: Sequence[str]) -> None:
        super().drop(names)
        for name in names:
            (Path(self.store.path) / FACES / name.removesuffix(".json")).unlink(missing_ok=True)

    def forget(self, linears: Sequence[int]) -> None:
        """Unmark the blocks (their records go, sizes included); the faces of the other blocks of
        their batches follow their markers (the forgotten blocks' are no longer read: they are
        computed again, or skipped and count no fragments)."""
        self.store.forget(self.name, linears, follow=FACES)
