"""The ``predict`` stage: the network over every block, embeddings and foreground out.

:func:`predict_blocks` is the one place where blocks are read (halo included, the next
block's input prefetched while this one computes), predicted and cropped to the part of
their write box inside the volume; the ``fragments`` stage clusters what it returns.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import numpy as np

from ..config import InputConfig
from ..geometry import Box
from ..network.predict import get_predictor
from ..plan.blocks import Block
from ..plan.empty import is_empty
from ..runtime.engine import Batch, Engine
from ..runtime.markers import MarkerIndex
from ..runtime.memory import release_memory
from ..volume.cache import drop_chunk_cache
from ..volume.errors import InputError, collect_unreadable
from ..volume.input_volume import InputVolume, digest, stamp
from ..volume.io import input_where, open_input
from ..volume.resample import ZoomedVolume
from .base import MODEL, BlockStage, Task

logger = logging.getLogger(__name__)

PREFETCH_THREADS = 4  # input readers per process, shared by its tasks
PREFETCH_DEPTH = 4  # reads in flight per task: one block's read takes longer than a fast GPU's forward pass


@lru_cache(maxsize=8)
def input_volume(cfg: InputConfig, zoom: tuple[float, ...] | None = None) -> InputVolume | ZoomedVolume:
    """An input (or mask) opened once per process; seen resampled by ``zoom`` when given."""
    vol = open_input(cfg)
    return ZoomedVolume(vol, zoom) if zoom else vol


def input_region(vol: InputVolume | ZoomedVolume, box: Box) -> tuple[InputVolume, Box]:
    """The input volume itself and the region of it (its own coordinates, clipped) that a
    read of ``box`` reads."""
    return (vol.source if isinstance(vol, ZoomedVolume) else vol), vol.source_region(box)


def check_finite(vol: InputVolume | ZoomedVolume, box: Box, data: np.ndarray) -> None:
    """NaN/inf in the input is a user error naming where they are, in volume coordinates."""
    if data.dtype.kind != "f" or np.isfinite(data).all():
        return
    source, region = input_region(vol, box)
    bad = ~np.isfinite(source.read(region)).all(axis=0)
    where = np.nonzero(bad)
    lo = [int(w.min()) + o for w, o in zip(where, region.offset, strict=True)] if bad.any() else list(region.offset)
    hi = [int(w.max()) + 1 + o for w, o in zip(where, region.offset, strict=True)] if bad.any() else list(region.end)
    raise InputError(
        f"input {source.where or repr(source.path)} holds NaN/inf at {int(bad.sum())} voxel(s) in "
        f"{Box(tuple(lo), tuple(h - a for a, h in zip(lo, hi, strict=True))).describe(axes=source.spatial_names)}; "
        "replace them (e.g. with 0) before running")


def read_input(cfg: InputConfig, box: Box, zoom: tuple[float, ...] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """The input in ``box`` (reflected outside the volume; resampled by ``zoom``) and the block
    record of what was read: the content digest, the stamp of the files read (taken before
    reading) and the chunks read as empty (``input.unreadable: empty``). NaN/inf is a user error."""
    vol = input_volume(cfg, zoom)
    before = stamp(vol.files(box))
    with collect_unreadable() as skipped:
        data = vol.read(box)
    check_finite(vol, box, data)
    record: dict[str, Any] = {"input": digest(data), "stamp": before}
    if skipped:
        record["unreadable"] = [u.as_json() for u in skipped]
    return data, record


@lru_cache(maxsize=1)
def _prefetch_pool() -> ThreadPoolExecutor:
    """Reader threads shared by the tasks of a process (started once, not per batch)."""
    return ThreadPoolExecutor(PREFETCH_THREADS, thread_name_prefix="prefetch")


def prefetched(cfg: InputConfig, blocks: Sequence[Block], zoom: tuple[float, ...] | None = None,
               depth: int = PREFETCH_DEPTH) -> Iterator[tuple[Block, np.ndarray, dict[str, Any]]]:
    """``(block, input, record)`` in order; the next ``depth`` blocks' inputs are read in
    background threads while the caller computes on the current one (I/O overlaps compute, and
    reads overlap each other: one read at a time feeds a fast GPU too slowly)."""
    if len(blocks) == 1:  # nothing to overlap with
        yield blocks[0], *read_input(cfg, blocks[0].read, zoom)
        return
    pool = _prefetch_pool()
    ahead = deque(pool.submit(read_input, cfg, b.read, zoom) for b in blocks[:depth])
    for i, block in enumerate(blocks):
        data, record = ahead.popleft().result()
        if i + depth < len(blocks):
            ahead.append(pool.submit(read_input, cfg, blocks[i + depth].read, zoom))
        yield block, data, record


Predicted = tuple[np.ndarray, np.ndarray] | None


def predict_stream(task: Task, blocks: Sequence[Block], skip_empty: bool = False) -> Iterator[tuple[Predicted, dict[str, Any]]]:
    """``((embeddings (E, *valid), foreground (*valid)), record)`` of every block, in order, as the
    network gives them: the output cropped to the part of the write box inside the volume, and the
    block's input record (see :func:`read_input`); with ``skip_empty``, None instead of the output for
    a block whose input is background (see :mod:`pipeline.plan.empty`), not predicted. Holds the
    outputs of one forward pass (and the prefetched inputs), not the batch's."""
    pred = get_predictor(task.checkpoint, task.device, task.precision, task.channels_last, task.threads)
    records: list[dict[str, Any]] = [{}] * len(blocks)
    predicted: deque[int] = deque()
    read = 0  # blocks whose input was read (and records taken)

    def inputs() -> Iterator[np.ndarray]:
        nonlocal read
        for i, (_, data, record) in enumerate(prefetched(task.input, blocks, task.zoom)):
            records[i], read = record, i + 1
            if not (skip_empty and task.background is not None and is_empty(data, task.background)):
                predicted.append(i)
                yield data

    done = 0  # blocks yielded
    for y in pred.stream(inputs(), task.stats, task.batch_size):
        k = predicted.popleft()
        for i in range(done, k):  # empty blocks read before this one
            yield None, records[i]
        block = blocks[k]
        rel = block.valid.to_slices(relative_to=block.write)
        yield (y[(slice(0, -1), *rel)], y[(-1, *rel)]), records[k]
        done = k + 1
    for i in range(done, read):  # empty blocks after the last predicted one
        yield None, records[i]


def predict_blocks(task: Task, blocks: Sequence[Block], skip_empty: bool = False) -> list[tuple[Predicted, dict[str, Any]]]:
    """:func:`predict_stream` of ``blocks`` as a list (the batch's outputs held together)."""
    return list(predict_stream(task, blocks, skip_empty))


def changed_inputs(task: Task, stage: str, linears: Batch, content: bool, files: Sequence[str]) -> list[int]:
    """The finished blocks among ``linears`` (held by the marker ``files``, which no other task
    touches meanwhile) whose input is no longer what they were computed from. ``content``: re-read every block and compare its digest; else only blocks whose files'
    sizes or times changed (:func:`pipeline.volume.input_volume.stamp`) are re-read and compared, and those that
    read chunks as empty when ``input.unreadable`` is now ``error`` (the read says whether they
    are still unreadable). A block whose content is unchanged gets the new stamp (the next check
    is cheap again; its marker file is written again)."""
    vol = input_volume(task.input, task.zoom)
    want = {int(i) for i in linears}
    changed = []
    for name in files:
        ids, records = task.store.read_marker(stage, name)
        records = records if records is not None else [None] * len(ids)
        restamped = False
        for k, linear in enumerate(ids.tolist()):
            old = records[k] or {}
            if linear not in want:
                continue
            if "input" not in old:  # a marker without a record: nothing to trust
                changed.append(linear)
                continue
            block = task.plan.block_at(linear)
            filled = bool(old.get("unreadable")) and task.input.unreadable == "error"  # read as empty, now an error
            if not (content or filled) and old.get("stamp") is not None and stamp(vol.files(block.read)) == old["stamp"]:
                continue
            _, now = read_input(task.input, block.read, task.zoom)
            if now["input"] != old["input"]:
                changed.append(linear)
            elif now["stamp"] != old.get("stamp"):
                records[k], restamped = {**old, "stamp": now["stamp"]}, True
        if restamped:
            task.store.mark_done(stage, ids, records)
    return sorted(changed)


def output_bytes(task: Task, embed_dim: int, blocks: int) -> int:
    """Memory of :func:`predict_blocks`' result for ``blocks`` blocks."""
    return blocks * (embed_dim + 1) * math.prod(task.plan.write_shape) * (8 if task.precision == "float64" else 4)


class InputChanged(InputError):
    """Finished blocks of an interrupted run whose input changed since they were computed."""


CHECK_BATCH = 64  # finished blocks whose input one task checks


def drop_input_cache() -> None:
    """Empty this process's input chunk cache and give its memory back to the system."""
    drop_chunk_cache()
    release_memory()


class InputStage(BlockStage):
    """A stage that reads the input: each block's record (:func:`read_input`) is kept with its
    done marker, and a resumed run checks its finished blocks against it (:meth:`verify`).
    Results that are dicts may carry ``unreadable`` (the block's input chunks read as empty),
    gathered in :attr:`unreadable`."""

    records = True

    def __init__(self, task: Task) -> None:
        super().__init__(task)
        self.unreadable: dict[str, list[int]] = {}  # input chunks read as empty: chunk -> region (z0, z1, y0, ...)

    def run(self, engine: Engine, blocks_per_task: int, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """:meth:`BlockStage.run`; at its end every worker's input chunk cache is emptied (the input is
        read by no later stage: up to an eighth of a worker's memory is freed for them)."""
        for result in super().run(engine, blocks_per_task, *args, **kwargs):
            if isinstance(result, dict):
                self.unreadable.update((chunk, region) for chunk, region in result.get("unreadable", ()))
            yield result
        engine.everywhere(drop_input_cache)

    def check_inputs(self, linears: Batch, files: Sequence[str]) -> list[int]:
        return changed_inputs(self.task, self.name, linears, self.task.resume_check == "content", files)

    def verify(self, engine: Engine, finished: list[int], stale: list[int], index: MarkerIndex) -> list[int]:
        """Finished blocks whose input changed, and those now skipped as empty space (``stale``):
        a one-line refusal, or (``output.changed_input: recompute``) forgotten, to be computed
        again (the changed ones) or skipped (the stale ones)."""
        changed: list[int] = []
        if finished:
            t0 = time.perf_counter()
            for found in engine.map(self.check_inputs, index.batches(finished, CHECK_BATCH),
                                    desc=f"{self.name} (input check)", per_batch=index.files):
                changed += found
            logger.info("%s: input of %d finished blocks checked by %s in %.1f s; %d changed", self.name,
                        len(finished), self.task.resume_check, time.perf_counter() - t0, len(changed))
        if not changed and not stale:
            return []
        first = self.plan.block_at(min(changed + stale))
        vol, region = input_region(input_volume(self.task.input, self.task.zoom), first.read)
        parts = [f"{len(changed)} of {len(finished)} finished blocks read different data"] if changed else []
        if stale:
            parts.append(f"{len(stale)} finished blocks are now skipped as empty space (empty.mask or the input's "
                         "pyramid level changed)")
        what = (f"input {input_where(self.task.input)} changed since this output was started: {' and '.join(parts)} "
                f"(first at {region.describe(axes=vol.spatial_names)})")
        if self.task.changed_input != "recompute":
            raise InputChanged(f"{what}; restore the original input and rerun to resume, pass --recompute-changed to "
                               "recompute those blocks and every later stage, or --overwrite to start again")
        logger.warning("%s; recomputing them and every later stage (output.changed_input: recompute)", what)
        self.forget(sorted(changed + stale))
        return sorted(changed)


class PredictStage(InputStage):
    """Writes ``embeddings`` ``(E, *volume)`` and ``foreground`` ``(*volume)``: the network
    runs in tasks holding the ``model`` resource, the writing in tasks on any thread."""

    name = "predict"
    load_resources = MODEL

    def __init__(self, task: Task, embed_dim: int) -> None:
        super().__init__(task)
        self.embed_dim = embed_dim

    def create(self) -> None:
        plan, dtype = self.plan, self.task.float_dtype
        self.store.create("embeddings", (self.embed_dim, *plan.volume), (self.embed_dim, *plan.write_shape), dtype,
                          channels=True)
        self.store.create("foreground", plan.volume, plan.write_shape, dtype)

    def outputs(self) -> tuple[str, ...]:
        return ("embeddings", "foreground")

    def load(self, blocks: Sequence[Block]) -> list[tuple[Predicted, dict[str, Any]]]:
        return predict_blocks(self.task, blocks)

    def load_bytes(self, blocks: int) -> int:
        return output_bytes(self.task, self.embed_dim, blocks)

    def process(self, blocks: Sequence[Block], loaded: Any, *args: Any) -> Iterator[tuple[Block, Any, dict[str, Any]]]:
        emb, fg = self.store.array("embeddings"), self.store.array("foreground")
        for block, ((e, f), record) in zip(blocks, loaded, strict=True):
            emb[(slice(None), *block.valid.to_slices())] = e
            fg[block.valid.to_slices()] = f
            yield block, {"unreadable": record["unreadable"]} if "unreadable" in record else None, record

    def recover(self, blocks: Sequence[Block], records: dict[int, dict[str, Any]]) -> list[Any]:
        return [{"unreadable": records[b.linear]["unreadable"]} if "unreadable" in records[b.linear] else None
                for b in blocks]
