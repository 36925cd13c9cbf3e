"""The ``predict`` stage: the network over every block, embeddings and foreground out.

:func:`predict_blocks` is the one place where blocks are read (halo included, the next
block's input prefetched while this one computes), predicted and cropped to the part of
their write box inside the volume; the ``fragments`` stage clusters what it returns.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import numpy as np

from ..blocks import Block
from ..config import InputConfig
from ..empty import is_empty
from ..geometry import Box
from ..io import InputError, InputVolume, open_input
from ..predict import get_predictor
from ..resample import ZoomedVolume
from .base import MODEL, BlockStage, Task

PREFETCH_THREADS = 4  # input readers per process, shared by its tasks


@lru_cache(maxsize=8)
def input_volume(cfg: InputConfig, zoom: tuple[float, ...] | None = None) -> InputVolume | ZoomedVolume:
    """An input (or mask) opened once per process; seen resampled by ``zoom`` when given."""
    vol = open_input(cfg)
    return ZoomedVolume(vol, zoom) if zoom else vol


def read_input(cfg: InputConfig, box: Box, zoom: tuple[float, ...] | None = None) -> np.ndarray:
    """The input in ``box`` (reflected outside the volume; resampled by ``zoom``); NaN/inf is
    a user error."""
    data = input_volume(cfg, zoom).read(box)
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise InputError(
            f"input '{cfg.path}' holds {bad} NaN/inf values in the region {box}; "
            "replace them (e.g. with 0) before running"
        )
    return data


@lru_cache(maxsize=1)
def _prefetch_pool() -> ThreadPoolExecutor:
    """Reader threads shared by the tasks of a process (started once, not per batch)."""
    return ThreadPoolExecutor(PREFETCH_THREADS, thread_name_prefix="prefetch")


def prefetched(cfg: InputConfig, blocks: Sequence[Block],
               zoom: tuple[float, ...] | None = None) -> Iterator[tuple[Block, np.ndarray]]:
    """``(block, input)`` pairs; the next block's input is read in a background thread
    while the caller computes on the current one (I/O overlaps compute)."""
    if len(blocks) == 1:  # nothing to overlap with
        yield blocks[0], read_input(cfg, blocks[0].read, zoom)
        return
    pool = _prefetch_pool()
    nxt = pool.submit(read_input, cfg, blocks[0].read, zoom) if blocks else None
    for i, block in enumerate(blocks):
        data = nxt.result()  # type: ignore[union-attr]
        if i + 1 < len(blocks):
            nxt = pool.submit(read_input, cfg, blocks[i + 1].read, zoom)
        yield block, data


def predict_blocks(task: Task, blocks: Sequence[Block], skip_empty: bool = False) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """``(embeddings (E, *valid), foreground (*valid))`` of every block: the network's
    output cropped to the part of the write box inside the volume; with ``skip_empty``,
    None for a block whose input is background (see :mod:`pipeline.empty`), not predicted."""
    pred = get_predictor(task.checkpoint, task.device, task.precision, task.channels_last, task.threads)
    out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(blocks)
    predicted: list[int] = []

    def inputs() -> Iterator[np.ndarray]:
        for i, (_, data) in enumerate(prefetched(task.input, blocks, task.zoom)):
            if not (skip_empty and task.background is not None and is_empty(data, task.background)):
                predicted.append(i)
                yield data

    for k, y in enumerate(pred.stream(inputs(), task.stats, task.batch_size)):
        block = blocks[predicted[k]]
        rel = block.valid.to_slices(relative_to=block.write)
        out[predicted[k]] = (y[(slice(0, -1), *rel)], y[(-1, *rel)])
    return out


def output_bytes(task: Task, embed_dim: int, blocks: int) -> int:
    """Memory of :func:`predict_blocks`' result for ``blocks`` blocks."""
    return blocks * (embed_dim + 1) * math.prod(task.plan.write_shape) * (8 if task.precision == "float64" else 4)


class PredictStage(BlockStage):
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

    def load(self, blocks: Sequence[Block]) -> list[tuple[np.ndarray, np.ndarray]]:
        return predict_blocks(self.task, blocks)

    def load_bytes(self, blocks: int) -> int:
        return output_bytes(self.task, self.embed_dim, blocks)

    def process(self, blocks: Sequence[Block], loaded: Any, *args: Any) -> Iterator[tuple[Block, None]]:
        emb, fg = self.store.array("embeddings"), self.store.array("foreground")
        for block, (e, f) in zip(blocks, loaded, strict=True):
            emb[(slice(None), *block.valid.to_slices())] = e
            fg[block.valid.to_slices()] = f
            yield block, None
