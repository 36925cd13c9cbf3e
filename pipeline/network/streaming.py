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
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:  # annotations only: Predictor.stream calls this module, never the other way round
    from .predict import NormStats, Predictor


def _batches(blocks: Iterable[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    it = iter(blocks)
    while batch := list(islice(it, size)):
        yield batch


def stream_cpu(pred: Predictor, blocks: Iterable[np.ndarray], stats: NormStats, batch_size: int) -> Iterator[np.ndarray]:
    for batch in _batches(blocks, batch_size):
        yield from pred.batch(np.stack(batch), stats)


class Cuda:
    """The CUDA calls :func:`stream_cuda` makes, one method each, so that a test can run the
    stream's ring-buffer and event logic with stand-ins for streams, events and pinned memory
    (``tests/test_streaming.py``); this class is the real thing, torch.cuda on ``device``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def stream(self) -> torch.cuda.Stream:
        return torch.cuda.Stream(self.device)

    def pinned(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, pin_memory=True)

    def event(self, stream: torch.cuda.Stream) -> torch.cuda.Event:
        """An event recorded on ``stream``: done when the work queued on it so far is."""
        event = torch.cuda.Event()
        event.record(stream)
        return event

    def wait(self, stream: torch.cuda.Stream, event: torch.cuda.Event) -> None:
        """Work queued on ``stream`` from now on starts after ``event``."""
        stream.wait_event(event)

    def synchronize(self, event: torch.cuda.Event) -> None:
        """The host waits for ``event``."""
        event.synchronize()

    def copy_in(self, stream: torch.cuda.Stream, host: torch.Tensor) -> torch.Tensor:
        with torch.cuda.stream(stream):
            return host.to(self.device, non_blocking=True)

    def compute(self, stream: torch.cuda.Stream, forward: Callable[[torch.Tensor], torch.Tensor],
                x: torch.Tensor) -> torch.Tensor:
        with torch.cuda.stream(stream):
            x.record_stream(stream)  # made on the copy-in stream, used here
            return forward(x)

    def copy_out(self, stream: torch.cuda.Stream, y: torch.Tensor, host: torch.Tensor) -> None:
        with torch.cuda.stream(stream):
            y.record_stream(stream)
            host.copy_(y, non_blocking=True)


def output_shape(pred: Predictor, read_shape: tuple[int, ...]) -> tuple[int, ...]:
    """``(E + 1, *write)`` of a block read as ``(C, *read_shape)``: valid convolutions crop
    the context on every side."""
    spec = pred.spec
    return (spec.out_channels, *(s - 2 * c for s, c in zip(read_shape, spec.context, strict=True)))


def stream_cuda(pred: Predictor, blocks: Iterable[np.ndarray], stats: NormStats, batch_size: int,
                depth: int = 3, cuda: Cuda | None = None) -> Iterator[np.ndarray]:
    """``depth`` batches in flight: one being copied in, one computing, one copied out.

    Ring slot ``k % depth`` holds batch ``k``: its input buffer is refilled only after the
    event of its last copy in, and its output buffer written only after batch ``k - depth``
    was taken out of it (``pending`` is full)."""
    cuda = cuda or Cuda(pred.device)
    copy_in, compute, copy_out = (cuda.stream() for _ in range(3))
    dtype = torch.from_numpy(np.zeros(0, pred.np_dtype)).dtype  # of the input and of forward's output
    ring_in: list[torch.Tensor] = []
    ring_out: list[torch.Tensor] = []
    in_free: list[Any] = [None] * depth  # the event after which each input buffer may be refilled
    pending: deque[tuple[Any, torch.Tensor, int]] = deque()
    for k, batch in enumerate(_batches(blocks, batch_size)):
        slot, n = k % depth, len(batch)
        if len(ring_in) < depth:
            ring_in.append(cuda.pinned((batch_size, *batch[0].shape), dtype))
            ring_out.append(cuda.pinned((batch_size, *output_shape(pred, batch[0].shape[1:])), dtype))
        if in_free[slot] is not None:
            cuda.synchronize(in_free[slot])
        host = ring_in[slot].numpy()[:n]
        np.stack(batch, out=host, casting="unsafe")  # numpy takes out= or dtype=, not both
        host -= pred.np_dtype(stats.offset)  # the same float ops as predict.normalise
        host /= pred.np_dtype(stats.scale)
        x = cuda.copy_in(copy_in, ring_in[slot][:n])
        ready = in_free[slot] = cuda.event(copy_in)
        cuda.wait(compute, ready)
        y = cuda.compute(compute, pred.forward, x)
        cuda.wait(copy_out, cuda.event(compute))
        if len(pending) == depth:
            yield from _finish(cuda, *pending.popleft())
        out = ring_out[slot]
        cuda.copy_out(copy_out, y, out[:n])
        pending.append((cuda.event(copy_out), out, n))
    while pending:
        yield from _finish(cuda, *pending.popleft())


def _finish(cuda: Cuda, copied: Any, out: torch.Tensor, n: int) -> Iterator[np.ndarray]:
    cuda.synchronize(copied)
    for i in range(n):
        yield out[i].numpy().copy()  # the pinned buffer is reused for a later batch
