"""The chunk cache (pipeline.volume.cache) and the block order (blocks.sweep_axes): reads through the
cache equal uncached reads bit for bit, it stays within its bound, concurrent readers get
correct data, and blocks run in sweep order decode every input chunk once."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

import pipeline.volume.input_volume
from pipeline.config import InputConfig
from pipeline.geometry import Box
from pipeline.plan.blocks import BlockPlan, in_sweep, sweep_axes, sweep_chunks
from pipeline.run import as_config, predict
from pipeline.runtime.engine import Engine
from pipeline.runtime.tasks import batched, interleave, spans_of
from pipeline.volume.cache import DECODED, ChunkCache, _cache, chunk_cache
from pipeline.volume.errors import InputReadError, collect_unreadable
from pipeline.volume.io import open_array, open_input, write_zarr
from pipeline.volume.resample import ZoomedVolume

from .conftest import make_checkpoint, random_volume

RNG = np.random.default_rng(7)
DATA = RNG.integers(0, 60000, (2, 19, 37, 45)).astype(np.uint16)  # czyx


def reference(data: np.ndarray, box: Box) -> np.ndarray:
    """``data`` (c + spatial) in ``box``, reflected at the borders like numpy.pad(mode="reflect")."""
    pad = [(0, 0)] + [(max(0, -o), max(0, e - n)) for o, e, n in zip(box.offset, box.end, data.shape[1:], strict=True)]
    padded = np.pad(data, pad, mode="reflect")
    return padded[(slice(None), *(slice(o + p[0], e + p[0]) for o, e, p in zip(box.offset, box.end, pad[1:], strict=True)))]


@pytest.fixture(scope="module")
def arrays(tmp_path_factory):
    """The same data as zarr v2, zarr v3 and sharded zarr v3 arrays."""
    root = tmp_path_factory.mktemp("cache")
    zarr.create_array(str(root / "v2.zarr"), data=DATA, chunks=(1, 5, 8, 7), zarr_format=2)
    zarr.create_array(str(root / "v3.zarr"), data=DATA, chunks=(2, 4, 16, 9))
    zarr.create_array(str(root / "sharded.zarr"), data=DATA, chunks=(1, 4, 8, 9), shards=(2, 8, 16, 18))
    return root


boxes = st.tuples(st.integers(-25, 30), st.integers(-40, 50), st.integers(-50, 60),
                  st.integers(1, 30), st.integers(1, 45), st.integers(1, 55)).map(lambda t: Box(t[:3], t[3:]))


@pytest.mark.parametrize("name", ["v2.zarr", "v3.zarr", "sharded.zarr"])
@pytest.mark.parametrize("channel", [None, 1])
@settings(max_examples=25, deadline=None)
@given(box=boxes)
def test_cached_reads_equal_uncached_reads(arrays, name, channel, box):
    """Boxes anywhere (reflected beyond the borders, several times over) through a cache too
    small to hold them (evicting as it goes): bit for bit the uncached read and numpy's."""
    on = open_input(InputConfig(path=arrays / name, channel=channel, chunk_cache_mib=1))
    off = open_input(InputConfig(path=arrays / name, channel=channel, chunk_cache_mib=0))
    assert on.cached and not off.cached
    want = reference(DATA if channel is None else DATA[channel : channel + 1], box)
    got = on.read(box)
    assert got.dtype == want.dtype and np.array_equal(got, want)
    assert np.array_equal(off.read(box), want)
    assert _cache().nbytes <= 1 << 20


def test_zoomed_reads_equal_uncached(arrays):
    """input.diameter's resampled view reads its source through the cache: the same voxels."""
    on, off = (ZoomedVolume(open_input(InputConfig(path=arrays / "v3.zarr", chunk_cache_mib=m)), (1.5, 0.7, 1.3))
               for m in (1, 0))
    for box in (Box((-3, -5, -4), (20, 30, 40)), Box((10, 0, 30), (25, 26, 40))):
        assert np.array_equal(on.read(box), off.read(box))


@settings(max_examples=60, deadline=None)
@given(capacity=st.integers(0, 5000), sizes=st.lists(st.tuples(st.integers(0, 12), st.integers(0, 3000)),
                                                     min_size=1, max_size=60))
def test_cache_stays_within_its_bound(capacity, sizes):
    """Whatever is asked, in whatever order: never more than ``capacity`` bytes kept, the count
    of bytes kept is exact, and every get returns what the key's loader makes."""
    cache = ChunkCache(capacity)
    for key, size in sizes:
        data = cache.get(key, lambda k=key, s=size: np.full(s, k, np.uint8))
        assert data.size in {s for k, s in sizes if k == key} and (data == key).all()
        assert cache.nbytes <= capacity
        assert cache.nbytes == sum(e[1].nbytes for e in cache._entries.values())


def test_cache_holds_most_recently_used():
    cache = ChunkCache(30)
    for key in "abc":
        cache.get(key, lambda: np.zeros(10, np.uint8))
    cache.get("a", lambda: np.ones(10, np.uint8))  # a hit: a is the most recent
    cache.get("d", lambda: np.zeros(10, np.uint8))  # evicts b, the least recent
    assert set(cache._entries) == {"a", "c", "d"}
    assert chunk_cache(0) is None and chunk_cache(3).capacity == 3 << 20


def test_concurrent_readers_decode_a_chunk_once_and_share_errors():
    cache = ChunkCache(1 << 20)
    calls: list[int] = []

    def slow() -> np.ndarray:
        calls.append(1)
        time.sleep(0.2)
        return np.arange(10)

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda _: cache.get("k", slow), range(8)))
    assert len(calls) == 1 and all(np.array_equal(g, np.arange(10)) for g in got)

    def failing() -> np.ndarray:
        time.sleep(0.2)
        raise RuntimeError("corrupt")

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(cache.get, "bad", failing) for _ in range(4)]
        errors = [f.exception() for f in futures]
    assert all(isinstance(e, RuntimeError) for e in errors) and "bad" not in cache._entries


def test_threads_reading_overlapping_boxes_get_correct_data(arrays, monkeypatch):
    """Eight threads, 200 overlapping boxes, one cache a fifth of the array (evicting meanwhile)."""
    monkeypatch.setattr(pipeline.volume.input_volume, "chunk_cache", lambda mib: ChunkCache(DATA.nbytes // 5))
    vol = open_input(InputConfig(path=arrays / "v3.zarr"))
    rng = np.random.default_rng(1)
    todo = [Box(tuple(int(v) for v in rng.integers(-10, 20, 3)), tuple(int(v) for v in rng.integers(5, 30, 3)))
            for _ in range(200)]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(vol.read, todo))
    assert all(np.array_equal(g, reference(DATA, box)) for g, box in zip(got, todo, strict=True))


def test_a_changed_chunk_is_read_again(tmp_path):
    """A chunk rewritten after it was cached is decoded again (its file's identity changed)."""
    data = np.arange(4 * 8 * 8, dtype=np.uint16).reshape(4, 8, 8)
    arr = zarr.create_array(str(tmp_path / "a.zarr"), data=data, chunks=(2, 4, 4))
    vol = open_input(InputConfig(path=tmp_path / "a.zarr", chunk_cache_mib=4))
    box = Box((0, 0, 0), (4, 8, 8))
    assert np.array_equal(vol.read(box)[0], data)
    arr[0:2, 0:4, 0:4] = 7
    data[0:2, 0:4, 0:4] = 7
    assert np.array_equal(vol.read(box)[0], data)


def test_unreadable_chunks_through_the_cache(tmp_path):
    """A truncated chunk: named (unreadable: error), or read as empty and reported by every read
    that touches it (never cached as data)."""
    data = np.arange(1, 1 + 8 * 8 * 8, dtype=np.uint16).reshape(8, 8, 8)
    zarr.create_array(str(tmp_path / "a.zarr"), data=data, chunks=(4, 4, 4))
    chunk = tmp_path / "a.zarr" / "c" / "1" / "0" / "1"
    chunk.write_bytes(chunk.read_bytes()[:10])
    box = Box((2, 0, 0), (4, 8, 8))
    strict = open_input(InputConfig(path=tmp_path / "a.zarr", chunk_cache_mib=4))
    with pytest.raises(InputReadError, match="c/1/0/1' .*z 4:8, y 0:4, x 4:8.* cannot be read"):
        strict.read(box)
    lenient = open_input(InputConfig(path=tmp_path / "a.zarr", chunk_cache_mib=4, unreadable="empty"))
    want = data[2:6].copy()
    want[2:, 0:4, 4:8] = 0
    for _ in range(2):
        with collect_unreadable() as found:
            got = lenient.read(box)[0]
        assert np.array_equal(got, want) and [u.chunk for u in found] == [f"chunk file '{chunk}'"]


def test_blockwise_prediction_equal_with_and_without_cache(tmp_path):
    """Blockwise prediction (blocks spanning several input chunks, borders reflected): the same
    embeddings and foreground, bit for bit, with the cache and without."""
    ckpt = make_checkpoint(tmp_path / "m.pt", ndim=3, downsample=[[2, 2, 2], [2, 2, 2]])
    write_zarr(tmp_path / "in.zarr", random_volume((13, 18, 11), dtype="uint16"), chunks=(3, 5, 4), name="raw")
    out = {}
    for mib in (0, None):
        predict(as_config({
            "input": {"path": str(tmp_path / "in.zarr"), "dataset": "raw", "chunk_cache_mib": mib},
            "output": {"path": str(tmp_path / f"out{mib}.zarr")}, "model": {"checkpoint": str(ckpt)},
            "blocks": {"write_shape": [4, 8, 4]}, "cluster": {"kind": "serial"}}))
        out[mib] = [open_array(tmp_path / f"out{mib}.zarr" / name)[...] for name in ("embeddings", "foreground")]
    for a, b in zip(out[0], out[None], strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_the_cache_is_emptied_when_the_input_stage_ends(tmp_path, client1):
    """No stage after the one reading the input reads it: its cached chunks are dropped on every
    worker (and here) when it ends, their memory left to merge, relabel, objects and labels."""
    ckpt = make_checkpoint(tmp_path / "m.pt", ndim=3, downsample=[[2, 2, 2]])
    write_zarr(tmp_path / "in.zarr", random_volume((16, 24, 24), dtype="uint16"), chunks=(4, 8, 8), name="raw")
    sizes = []
    orig = ChunkCache.clear

    def clear(self):
        sizes.append(self.nbytes)
        orig(self)

    import pipeline.volume.cache as cache

    cache.ChunkCache.clear = clear  # (this process; the worker reports its own size below)
    try:
        predict(as_config({"input": {"path": str(tmp_path / "in.zarr"), "dataset": "raw"},
                           "output": {"path": str(tmp_path / "out.zarr")}, "model": {"checkpoint": str(ckpt)},
                           "blocks": {"write_shape": [8, 8, 8]}, "cluster": {"kind": "local"}}), client=client1)
    finally:
        cache.ChunkCache.clear = orig
    assert sizes, "the cache was not emptied here"
    held = client1.run(lambda: __import__("pipeline.volume.cache", fromlist=["_cache"])._cache().nbytes)
    assert held and all(v == 0 for v in held.values()), held


def test_sweep_order_is_a_deterministic_permutation():
    plan = BlockPlan((128, 1024, 1024), (64, 64, 64), (12, 20, 20), (4, 4, 4))
    axes = sweep_axes(plan, (64, 256, 256))
    assert axes == (1, 2, 0)  # y slowest (a slab of 2 x 2 x 4 chunks), then x, z fastest
    assert sweep_chunks(plan, (64, 256, 256)) == 16
    order = in_sweep(range(len(plan)), plan.grid, axes).tolist()
    assert sorted(order) == list(range(len(plan))) and order == in_sweep(order[::-1], plan.grid, axes).tolist()
    idx = np.array(np.unravel_index(order, plan.grid)).T
    steps = np.abs(np.diff(idx, axis=0)).sum(axis=1)
    assert (steps[: plan.grid[0] - 1] == 1).all()  # consecutive blocks: neighbours along z
    assert in_sweep([5, 3, 9], plan.grid, None).tolist() == [3, 5, 9]


def decoded_reading(vol, plan: BlockPlan, order: list[int]) -> int:
    DECODED.reset()
    for i in order:
        vol.read(plan.block_at(i).read)
    return DECODED.bytes


def test_sweep_order_decodes_every_chunk_once(tmp_path, monkeypatch):
    """With a cache of blocks.sweep_chunks chunks, blocks in sweep order decode each input chunk
    exactly once (the volume's bytes); C order with the same cache decodes more, and no cache
    decodes every chunk each block's read box touches."""
    shape, chunks = (16, 64, 64), (4, 16, 16)
    data = np.random.default_rng(0).integers(0, 1000, shape).astype(np.uint16)
    zarr.create_array(str(tmp_path / "a.zarr"), data=data, chunks=chunks)
    plan = BlockPlan(shape, (4, 4, 4), (1, 2, 2), (1, 1, 1))
    slab = sweep_chunks(plan, chunks) * int(np.prod(chunks)) * 2
    vol = open_input(InputConfig(path=tmp_path / "a.zarr"))
    off = open_input(InputConfig(path=tmp_path / "a.zarr", chunk_cache_mib=0))
    touched = sum(vol.decoded_bytes(vol._selection(plan.block_at(i).read)[0]) for i in range(len(plan)))
    uncached = decoded_reading(off, plan, list(range(len(plan))))
    monkeypatch.setattr(pipeline.volume.input_volume, "chunk_cache", lambda mib: ChunkCache(slab))  # a fresh cache per read: none
    assert decoded_reading(vol, plan, [0]) == decoded_reading(off, plan, [0])
    cache = ChunkCache(slab)
    monkeypatch.setattr(pipeline.volume.input_volume, "chunk_cache", lambda mib: cache)
    sweep = decoded_reading(vol, plan, in_sweep(range(len(plan)), plan.grid, sweep_axes(plan, chunks)))
    cache.clear()
    c_order = decoded_reading(vol, plan, list(range(len(plan))))
    assert sweep == data.nbytes  # each chunk once: 1.0x the output's bytes
    assert c_order > 1.5 * sweep
    assert uncached == touched > 10 * data.nbytes


def ran_on(batch):
    from distributed import get_worker

    return [(i, get_worker().address) for i in batch]


def test_spans_give_each_worker_a_contiguous_run_of_batches(client2):
    """Batches that share input chunks (consecutive in sweep order) go to one worker: each worker
    gets a contiguous span, and the spans are submitted in turn (both workers start at once)."""
    assert spans_of(10, 3) == [range(0, 3), range(3, 6), range(6, 10)] and spans_of(2, 5) == [range(0, 1), range(1, 2)]
    assert interleave(spans_of(5, 2)).tolist() == [0, 2, 1, 3, 4]
    ran = dict(x for r in Engine(client2).map(ran_on, [[i] for i in range(16)], desc="spans", spans=True) for x in r)
    assert sorted(ran) == list(range(16))
    lazy = dict(x for r in Engine(client2).map(ran_on, batched(range(16), 1), desc="spans", spans=True) for x in r)
    assert sorted(lazy) == list(range(16))  # the lazy batches, spread the same way
    workers = sorted(client2.scheduler_info()["workers"])
    on_own = sum(ran[k] == workers[w] for w, span in enumerate(spans_of(16, 2)) for k in span)
    assert on_own >= 12  # the scheduler may still move a few (work stealing balances the load)


def test_a_configured_cache_too_small_for_the_order_is_a_warning(caplog):
    from pipeline.plan.sizing import warn_cache

    with caplog.at_level("WARNING", logger="pipeline.plan.prepare"):
        warn_cache(None, 1 << 40)  # automatic: no warning (the workers' memory is not known here)
        warn_cache(0, 1 << 40)  # off: asked for
        warn_cache(128, 128 << 20)
        assert not caplog.records
        warn_cache(64, 128 << 20)
    assert len(caplog.records) == 1 and "input.chunk_cache_mib 64 holds less than the 128 MiB" in caplog.text


def test_lazy_batches_equal_lists_and_keep_one_array():
    """Batches are made as asked for from one int64 array (8 bytes a block), equal to the list of
    lists they replace, in any order the engine spreads them in."""
    import tracemalloc

    from pipeline.runtime.tasks import Batches, items_in

    ids = np.arange(1000, 0, -3)
    lazy, eager = batched(ids, 7), [ids[i:i + 7].tolist() for i in range(0, len(ids), 7)]
    assert len(lazy) == len(eager) and list(lazy) == eager and lazy[-1] == eager[-1] and lazy[2:4] == eager[2:4]
    assert items_in(lazy) == len(ids) == items_in(eager)
    spans = spans_of(len(lazy), 3)
    order = interleave(spans)
    assert sorted(order.tolist()) == list(range(len(lazy)))
    assert order[:3].tolist() == [s.start for s in spans]  # every span starts at once
    again = lazy.reordered(order)
    assert list(again) == [eager[k] for k in order] and list(again.reordered(np.arange(len(again))[::-1])) == \
        [eager[k] for k in order[::-1]]
    tracemalloc.start()
    many = Batches(np.arange(10**6), 1)
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(many) == 10**6 and many[123456] == [123456] and held < 10 * 10**6  # ~8 MB, not ~100 MB of lists
