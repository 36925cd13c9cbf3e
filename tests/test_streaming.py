"""stream_cuda's ring buffers and events, run on the CPU with a stand-in for the CUDA calls.

:class:`FakeCuda` queues every copy and forward pass on its stream instead of running it, the
way a GPU does; queued work runs only when the policy says so: ``lazy`` (only when the host
synchronizes on an event that needs it: a host that refills a buffer too early is caught),
``eager`` (as soon as it is queued: a device that writes an output buffer the host has not
taken out yet is caught) or ``random`` (a seeded mix). Every step is logged, so the test can
say which buffer was read, written and waited for, and in which order.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from pipeline.network.model import ModelSpec, init_model
from pipeline.network.predict import NormStats, Predictor
from pipeline.network.streaming import stream_cpu, stream_cuda


class FakeStream:
    def __init__(self, name: str) -> None:
        self.name = name
        self.ops: list[Callable[[], None]] = []
        self.done = 0  # ops run so far

    def run(self, upto: int) -> None:
        while self.done < upto:
            op = self.ops[self.done]
            self.done += 1
            op()


class FakeEvent:
    ids = itertools.count()

    def __init__(self, stream: FakeStream) -> None:
        self.stream, self.at, self.id = stream, len(stream.ops), next(self.ids)

    @property
    def complete(self) -> bool:
        return self.stream.done >= self.at


class Lazy:
    """A device tensor whose value exists once the op that makes it has run."""

    value: torch.Tensor | None = None

    def get(self) -> torch.Tensor:
        assert self.value is not None, "a device tensor used before the op that makes it ran"
        return self.value


class FakeCuda:
    """Streams, events, pinned memory and transfers of :class:`pipeline.network.streaming.Cuda`, on the CPU."""

    def __init__(self, policy: str, seed: int = 0) -> None:
        self.policy, self.rng = policy, np.random.default_rng(seed)
        self.streams: list[FakeStream] = []
        self.buffers: list[torch.Tensor] = []  # pinned host buffers, by number
        self.log: list[tuple[Any, ...]] = []
        self.last_copy_in: dict[int, FakeEvent] = {}  # buffer -> event after its last copy in

    def buffer(self, t: torch.Tensor) -> int:
        ptr = t.untyped_storage().data_ptr()
        return next(i for i, b in enumerate(self.buffers) if b.untyped_storage().data_ptr() == ptr)

    def advance(self) -> None:
        """Let the device make progress after a host call, as the policy says."""
        for s in self.streams:
            if self.policy == "eager":
                s.run(len(s.ops))
            elif self.policy == "random":
                s.run(int(self.rng.integers(s.done, len(s.ops) + 1)))

    def queue(self, stream: FakeStream, op: Callable[[], None]) -> None:
        stream.ops.append(op)
        self.advance()

    # the interface of pipeline.network.streaming.Cuda

    def stream(self) -> FakeStream:
        self.streams.append(FakeStream(f"s{len(self.streams)}"))
        return self.streams[-1]

    def pinned(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        self.buffers.append(torch.full(shape, float("nan"), dtype=dtype))
        self.log.append(("pinned", len(self.buffers) - 1))
        return self.buffers[-1]

    def event(self, stream: FakeStream) -> FakeEvent:
        return FakeEvent(stream)

    def wait(self, stream: FakeStream, event: FakeEvent) -> None:
        self.queue(stream, lambda: event.stream.run(event.at))

    def synchronize(self, event: FakeEvent) -> None:
        event.stream.run(event.at)
        self.log.append(("sync", event.id))

    def copy_in(self, stream: FakeStream, host: torch.Tensor) -> Lazy:
        buf, dev, before = self.buffer(host), Lazy(), host.clone()
        previous = self.last_copy_in.get(buf)
        # the host filled `buf` just now: the copy that last read it must have run before
        self.log.append(("fill", buf, previous is None or previous.complete))

        def op() -> None:
            self.log.append(("copy_in", buf, torch.equal(host, before)))  # read what the host had queued?
            dev.value = host.clone()

        self.queue(stream, op)
        self.last_copy_in[buf] = FakeEvent(stream)
        return dev

    def compute(self, stream: FakeStream, forward: Callable[[torch.Tensor], torch.Tensor], x: Lazy) -> Lazy:
        y = Lazy()

        def op() -> None:
            y.value = forward(x.get())

        self.queue(stream, op)
        return y

    def copy_out(self, stream: FakeStream, y: Lazy, host: torch.Tensor) -> None:
        buf, batch = self.buffer(host), self.batches
        self.batches += 1

        def op() -> None:
            # the batch this buffer held before was taken out by the host: nothing is overwritten unread
            previous = self.held.get(buf)
            self.log.append(("copy_out", buf, previous is None or previous < self.taken))
            host.copy_(y.get())
            self.held[buf] = batch

        self.queue(stream, op)

    batches = 0  # copies out queued (batch k is the k-th)
    taken = 0  # batches whose every row the host has yielded
    held: dict[int, int]  # output buffer -> the batch last copied into it


def _predictor(dtype: str = "float64") -> Predictor:
    spec = ModelSpec(downsample=[[1, 2, 2]], base_features=4, embed_dim=2)
    return Predictor(init_model(spec, seed=1), device="cpu", precision=dtype)


def _blocks(pred: Predictor, n: int, seed: int = 0) -> list[np.ndarray]:
    read = tuple(w + 2 * c for w, c in zip((4, 8, 8), pred.spec.context, strict=True))
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(1, *read)).astype(np.float32) for _ in range(n)]


def _run(fake: FakeCuda, pred: Predictor, blocks: list[np.ndarray], stats: NormStats, batch: int,
         depth: int) -> list[np.ndarray]:
    """stream_cuda with the fake, telling it which batches the host has taken out."""
    fake.held = {}
    out = []
    for y in stream_cuda(pred, blocks, stats, batch, depth=depth, cuda=fake):
        out.append(y)
        fake.taken = len(out) // batch  # the stream goes on only when the next row is asked for
    return out


@pytest.mark.parametrize("policy", ["lazy", "eager", "random"])
@pytest.mark.parametrize(("n", "batch", "depth"), [(11, 2, 3), (7, 3, 2), (5, 1, 3), (2, 4, 3)])
def test_stream_cuda_logic_equals_cpu_loop(policy, n, batch, depth):
    """More batches than ring slots (reuse), a last partial batch, one batch smaller than
    batch_size: the outputs equal stream_cpu's, no pinned input is refilled before the copy
    that read it completed, and no output buffer is written before the host took it out."""
    pred, stats = _predictor(), NormStats(0.5, 2.0)
    blocks = _blocks(pred, n)
    want = list(stream_cpu(pred, blocks, stats, batch))
    fake = FakeCuda(policy, seed=n)
    got = _run(fake, pred, blocks, stats, batch, depth)

    assert len(got) == len(want) == n
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    batches = -(-n // batch)
    slots = min(depth, batches)
    assert [e for e in fake.log if e[0] == "pinned"] == [("pinned", i) for i in range(2 * slots)]  # reused
    fills = [e for e in fake.log if e[0] == "fill"]
    assert len(fills) == batches and all(ok for *_, ok in fills), "a pinned input refilled before its copy ran"
    assert all(ok for kind, _, ok in (e for e in fake.log if e[0] == "copy_in")), "a copy read a refilled buffer"
    outs = [e for e in fake.log if e[0] == "copy_out"]
    assert len(outs) == batches and all(ok for *_, ok in outs), "an output buffer overwritten unread"


def test_fake_catches_a_refill_before_its_copy(monkeypatch):
    """The check can fail: a stream that skips the wait on a slot's copy event refills an input
    buffer whose copy has not run (lazy device) and reads the wrong batch."""
    import pipeline.network.streaming as streaming

    pred, stats = _predictor(), NormStats(0.0, 1.0)
    blocks = _blocks(pred, 6)
    fake = FakeCuda("lazy")
    real_sync = fake.synchronize
    calls = itertools.count()
    monkeypatch.setattr(fake, "synchronize", lambda e: None if next(calls) < 2 else real_sync(e))
    fake.held = {}
    got = list(streaming.stream_cuda(pred, blocks, stats, 1, depth=2, cuda=fake))
    want = list(stream_cpu(pred, blocks, stats, 1))
    assert not all(ok for *_, ok in (e for e in fake.log if e[0] == "fill"))
    assert any(not np.array_equal(g, w) for g, w in zip(got, want, strict=True))


def test_stream_cuda_float32_output_dtype():
    pred = _predictor("float32")
    blocks = _blocks(pred, 4)
    got = _run(FakeCuda("random", seed=3), pred, blocks, NormStats(0.0, 1.0), 3, 3)
    want = list(stream_cpu(pred, blocks, NormStats(0.0, 1.0), 3))
    assert all(g.dtype == np.float32 for g in got)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
