"""The ``fragments`` stage: predict each block (GPU task), cluster it (CPU task), write
block-unique fragment ids and the evidence on the block's faces; return a small summary
per block.

Fragment ids are ``block.linear * stride + local`` (``stride`` = voxels per write box),
so no block waits for another's numbering. ``scratch/fragments`` keeps the local ids (in
the smallest dtype for ``stride``); the faces carry the global ids.

``scratch/fragments`` is sharded as the segmentation is (``output.shards``). Then a task takes whole
shards (one writer per shard file) and streams them: it predicts block after block and clusters each as
it comes (in the worker's other threads, while the network predicts the next), holding
one shard of local ids and a few blocks of network output, not the shard's (28 bytes a voxel with six
embedding channels: 1.8 GiB for a shard of 2**26 voxels).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np

from ..clustering import Method
from ..plan.blocks import Block
from ..plan.shards import shard_shape
from ..qc.audit import BlockRecord, save_record
from ..runtime.engine import Batch, Engine
from ..runtime.faces import Faces, face_blob
from ..runtime.markers import MarkerIndex, batch_name
from ..runtime.store import FACES, FRAGMENTS
from .base import MODEL, Task
from .ids import fragment_dtype
from .predict import InputStage, output_bytes, predict_blocks, predict_stream
from .sharded import Output, batches_for, shard_mates, shards_of

Clustered = tuple[Block, dict[str, Any], dict[str, Any]]


def summary(linear: int, local: np.ndarray) -> dict[str, Any]:
    """What the client keeps of a block: its fragment count (O(blocks) numbers in all)."""
    return {"linear": linear, "count": int(local.max()) if local.size else 0, "empty": False}


def cluster_threads() -> int:
    """Threads clustering beside the network in a streamed (sharded) batch: the worker's threads but
    the one predicting (so a worker runs one network and the rest clusters, as with the two tasks of
    an unsharded batch); none outside a Dask worker (serial: one after the other)."""
    import distributed

    try:
        return distributed.get_worker().state.nthreads - 1
    except ValueError:  # not in a Dask worker
        return 0


@lru_cache(maxsize=2)
def _cluster_pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="cluster")


def in_order(jobs: Iterable[Callable[[], Clustered]], threads: int) -> Iterator[Clustered]:
    """The jobs' results in order; with ``threads``, up to that many run at once in a pool while the
    caller makes the next job (pulling the next block's prediction)."""
    if not threads:
        for job in jobs:
            yield job()
        return
    pool, running = _cluster_pool(threads), deque[Future[Clustered]]()
    for job in jobs:
        running.append(pool.submit(job))
        if len(running) >= threads:
            yield running.popleft().result()
    while running:
        yield running.popleft().result()


class FragmentsStage(InputStage):
    """Predicts blocks in tasks holding the ``model`` resource; clusters them in tasks on
    any thread of the worker that holds the embeddings (never written to disk). With sharded
    fragments, one task per shard does both, streamed (see the module's docstring)."""

    name = "fragments"
    load_resources = MODEL

    def __init__(self, task: Task, method: Method, embed_dim: int) -> None:
        super().__init__(task)
        self.method = method
        self.embed_dim = embed_dim
        self.keep_sizes = bool(method.params.min_size)  # fragment sizes, for min_size on whole objects

    def create(self) -> None:
        shards = shard_shape(self.task.shards, self.plan.volume, self.plan.write_shape)
        self.store.create(FRAGMENTS, self.plan.volume, self.plan.write_shape, fragment_dtype(self.task.id_stride),
                          shards=shards)
        self.store.create_faces()

    @property
    def shards(self) -> tuple[int, ...] | None:
        """The fragments' shard shape (None: a file per block): as created, also when resumed."""
        return shards_of(self.store.array(FRAGMENTS, mode="r"))

    @property
    def has_load(self) -> bool:  # type: ignore[override]
        return self.shards is None

    @property
    def resources(self) -> dict[str, float] | None:  # type: ignore[override]
        return MODEL if self.shards else None

    def batches(self, todo: np.ndarray, blocks_per_task: int) -> list[list[int]]:
        return batches_for(self.store.array(FRAGMENTS, mode="r"), self.plan, todo, blocks_per_task)

    def load(self, blocks: Sequence[Block]) -> list[tuple[tuple[np.ndarray, np.ndarray, float] | None, dict[str, Any]]]:
        t0 = time.perf_counter()
        out = predict_blocks(self.task, blocks, skip_empty=True)
        seconds = (time.perf_counter() - t0) / max(len(blocks), 1)  # per block of the batch
        return [(None if o is None else (*o, seconds), record) for o, record in out]

    def load_bytes(self, blocks: int) -> int:
        """The first task's output for ``blocks`` blocks, held until its second task runs; streamed
        (sharded): one shard of local ids and one forward pass (each clustering thread holds a block's
        output, as an unsharded batch's second task does)."""
        if (shards := self.shards) is None:
            return output_bytes(self.task, self.embed_dim, blocks)
        ids = math.prod(shards) * np.dtype(fragment_dtype(self.task.id_stride)).itemsize
        return ids + output_bytes(self.task, self.embed_dim, self.task.batch_size)

    def streamed(self, blocks: Sequence[Block]) -> Iterator[tuple[tuple[np.ndarray, np.ndarray, float] | None, dict[str, Any]]]:
        """:meth:`load`'s items one by one, as the network gives them (the time since the last one)."""
        t0 = time.perf_counter()
        for o, record in predict_stream(self.task, blocks, skip_empty=True):
            now = time.perf_counter()
            yield (None if o is None else (*o, now - t0)), record
            t0 = time.perf_counter()

    def cluster(self, block: Block, predicted: tuple[np.ndarray, np.ndarray, float] | None, record: dict[str, Any],
                out: Output, faces: dict[int, bytes]) -> Clustered:
        """One block: its fragments put in ``out``, its faces in ``faces``; its summary and record."""
        unreadable = {"unreadable": record["unreadable"]} if "unreadable" in record else {}
        if predicted is None:  # empty space: nothing written, the arrays' fill value stands
            return block, {"linear": block.linear, "count": 0, "empty": True, **unreadable}, record
        emb, fg, predict_s = predicted
        t0 = time.perf_counter()
        local = self.method.fragments(emb, fg)
        out.put(block.valid, local.astype(out.arr.dtype, copy=False))
        faces[block.linear] = face_blob(self.plan, block, local, self.method.face_evidence(emb, local),
                                        self.task.id_stride)
        if self.keep_sizes:  # kept with the block's done marker
            record = {**record, "sizes": np.bincount(local.ravel())[1:].tolist()}
        return block, {**summary(block.linear, local), "predict_s": predict_s, "cluster_s": time.perf_counter() - t0,
                       **unreadable}, record

    def process(self, blocks: Sequence[Block], loaded: Any, *args: Any) -> Iterator[Clustered]:
        frag = self.store.array(FRAGMENTS)
        out, faces = Output(frag, blocks, frag.dtype), {}
        items = self.streamed(blocks) if loaded is None else loaded
        jobs = (partial(self.cluster, block, predicted, record, out, faces)
                for block, (predicted, record) in zip(blocks, items, strict=True))
        yield from in_order(jobs, cluster_threads() if loaded is None else 0)
        out.close()  # a shard written once, whole
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

    def verify(self, engine: Engine, finished: list[int], stale: list[int], index: MarkerIndex) -> list[int]:
        """:meth:`InputStage.verify`; with sharded fragments, every finished block of a shard that holds a
        changed or stale block is computed again with it (a shard has one writer, its batch)."""
        changed = super().verify(engine, finished, stale, index)
        if (shards := self.shards) is None or not (changed or stale):
            return changed
        return np.intersect1d(shard_mates(self.plan, shards, changed + stale), finished).tolist()

    def forget(self, linears: Sequence[int]) -> None:
        """Unmark the blocks (their records go, sizes included); the faces of the other blocks of
        their batches follow their markers (the forgotten blocks' are no longer read: they are
        computed again, or skipped and count no fragments). Sharded: the blocks of their shards."""
        if (shards := self.shards) is not None:
            linears = shard_mates(self.plan, shards, linears).tolist()
        self.store.forget(self.name, linears, follow=FACES)
