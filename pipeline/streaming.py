"""A stream of blocks through the network: batched, and on a GPU with every stage overlapped.

On CUDA, three streams run side by side so the GPU never waits for the host::

    host        read (prefetch thread), stack + normalise into a pinned buffer   batch k+2
    copy-in     pinned -> device, non-blocking                                   batch k+1
    compute     U-Net, sigmoid                                                   batch k
    copy-out    device -> pinned, non-blocking               batch k-1

Pinned host buffers are a small ring reused round robin; an event per buffer says when
its copy has finished, so a buffer is refilled only after the GPU is done with it.
On the CPU the stream is a plain loop over batches.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .predict import NormStats, Predictor


def _batches(blocks: Iterable[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    it = iter(blocks)
    while batch := list(islice(it, size)):
        yield batch


def stream_cpu(pred: Predictor, blocks: Iterable[np.ndarray], stats: NormStats, batch_size: int) -> Iterator[np.ndarray]:
    for batch in _batches(blocks, batch_size):
        yield from pred.batch(np.stack(batch), stats)


def stream_cuda(pred: Predictor, blocks: Iterable[np.ndarray], stats: NormStats, batch_size: int,
                depth: int = 3) -> Iterator[np.ndarray]:
    """``depth`` batches in flight: one being copied in, one computing, one copied out."""
    device = pred.device
    copy_in, compute, copy_out = (torch.cuda.Stream(device) for _ in range(3))
    dtype = torch.from_numpy(np.zeros(0, pred.np_dtype)).dtype
    ring_in: list[torch.Tensor] = []
    ring_out: list[torch.Tensor] = []
    in_free: list[torch.cuda.Event | None] = [None] * depth  # when each input buffer may be refilled
    pending: deque[tuple[torch.cuda.Event, torch.Tensor, int]] = deque()
    for k, batch in enumerate(_batches(blocks, batch_size)):
        slot, n = k % depth, len(batch)
        if len(ring_in) < depth:
            ring_in.append(torch.empty((batch_size, *batch[0].shape), dtype=dtype, pin_memory=True))
        if in_free[slot] is not None:
            in_free[slot].synchronize()  # type: ignore[union-attr]
        host = ring_in[slot].numpy()[:n]
        np.stack(batch, out=host, dtype=pred.np_dtype, casting="unsafe")
        host -= pred.np_dtype(stats.offset)  # the same float ops as predict.normalise
        host /= pred.np_dtype(stats.scale)
        with torch.cuda.stream(copy_in):
            x = ring_in[slot][:n].to(device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(copy_in)
            in_free[slot] = ready
        compute.wait_event(ready)
        with torch.cuda.stream(compute):
            x.record_stream(compute)
            y = pred.forward(x)
            done = torch.cuda.Event()
            done.record(compute)
        copy_out.wait_event(done)
        if len(ring_out) < depth:
            ring_out.append(torch.empty((batch_size, *y.shape[1:]), dtype=y.dtype, pin_memory=True))
        if len(pending) == depth:
            yield from _finish(*pending.popleft())
        out = ring_out[slot]
        with torch.cuda.stream(copy_out):
            y.record_stream(copy_out)
            out[:n].copy_(y, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record(copy_out)
        pending.append((copied, out, n))
    while pending:
        yield from _finish(*pending.popleft())


def _finish(copied: torch.cuda.Event, out: torch.Tensor, n: int) -> Iterator[np.ndarray]:
    copied.synchronize()
    for i in range(n):
        yield out[i].numpy().copy()  # the pinned buffer is reused for a later batch
