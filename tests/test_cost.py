"""The cost model behind the automatic write shape (pipeline.plan.cost) and how prepare uses it."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.cli import main
from pipeline.plan import cost
from pipeline.plan.blocks import BlockPlan
from pipeline.plan.cost import Coefficients, axis_chunks, block_bytes, candidates, ranked, terms
from pipeline.plan.prepare import prepare
from pipeline.plan.sizing import chunks_per_block, over_read

STEP, CONTEXT = (2, 4, 4), (12, 20, 20)  # the bundled model's
FEATURES, OUTPUTS = 16, 7

volumes = st.tuples(st.integers(1, 120), st.integers(1, 300), st.integers(1, 300))
chunkings = st.tuples(st.integers(1, 64), st.integers(1, 128), st.integers(1, 128))


@settings(max_examples=60, deadline=None)
@given(volumes, chunkings, st.integers(1, 2**32))
def test_every_candidate_is_step_aligned_within_the_volume_and_memory(volume, chunks, memory):
    found = candidates(volume, STEP, CONTEXT, chunks, memory, FEATURES, OUTPUTS)
    assert found and len(set(found)) == len(found)
    smallest_fits = block_bytes(STEP, CONTEXT, FEATURES, OUTPUTS) <= memory
    for w in found:
        assert all(x % s == 0 and 0 < x <= -(-v // s) * s for x, s, v in zip(w, STEP, volume, strict=True))
        assert block_bytes(w, CONTEXT, FEATURES, OUTPUTS) <= memory or (not smallest_fits and w == STEP)
    if smallest_fits:
        assert STEP in found


def brute_chunks(volume, write, context, chunk):
    """Chunks touched along an axis, summed over blocks, by listing them."""
    total = 0
    for i in range(-(-volume // write)):
        start = i * write - context
        total += len({x // chunk for x in range(start, start + write + 2 * context)})
    return total


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 200), st.integers(1, 40), st.integers(0, 30), st.integers(1, 70))
def test_axis_chunks_counts_the_chunks_each_read_touches(volume, write, context, chunk):
    assert axis_chunks(volume, write, context, chunk) == brute_chunks(volume, write, context, chunk)


def test_over_read_helpers_agree_with_the_cost_terms():
    plan = BlockPlan((40, 130, 90), (16, 64, 32), CONTEXT, STEP)
    chunks = (16, 64, 64)
    t = terms(plan.volume, plan.write_shape, plan.context, chunks)
    assert t.blocks == len(plan) and t.voxels_read == plan.voxels_read and t.redundancy == plan.redundancy
    assert math.isclose(t.over_read, over_read(chunks, plan))
    per_axis = [brute_chunks(v, w, c, k) / g for v, w, c, k, g in
                zip(plan.volume, plan.write_shape, plan.context, chunks, plan.grid, strict=True)]
    assert math.isclose(chunks_per_block(chunks, plan), math.prod(per_axis))


@settings(max_examples=40, deadline=None)
@given(st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4)), st.integers(0, 2),
       st.tuples(st.integers(1, 8), st.integers(1, 8), st.integers(1, 8)))
def test_cost_falls_with_larger_blocks_and_rises_with_context(grid, axis, units):
    """On a volume tiled exactly, doubling a block along one axis computes fewer voxels in fewer
    blocks; a larger halo costs more; a larger coefficient costs more; the growth term costs a
    voxel of the larger block more."""
    write = tuple(u * s for u, s in zip(units, STEP, strict=True))
    doubled = tuple(w * (2 if a == axis else 1) for a, w in enumerate(write))
    volume = tuple(d * g for d, g in zip(doubled, grid, strict=True))
    no_io = Coefficients(network=1e-6, growth=0.0, decompress=0.0, block=0.01)
    small, large = terms(volume, write, CONTEXT, (1, 1, 1)), terms(volume, doubled, CONTEXT, (1, 1, 1))
    assert large.blocks * 2 == small.blocks and large.voxels_read < small.voxels_read
    assert large.cost(no_io) < small.cost(no_io)
    assert large.cost(cost.CPU) < small.cost(cost.CPU)  # chunks of one voxel: decompressed == read
    wider = terms(volume, write, tuple(c + 2 for c in CONTEXT), (1, 1, 1))
    assert wider.cost(no_io) > small.cost(no_io)
    assert small.cost(Coefficients(2e-6, 0.0, 0.0, 0.01)) > small.cost(no_io)
    growth = Coefficients(1e-6, 1e-12, 0.0, 0.01)
    assert (large.cost(growth) - large.cost(no_io)) / large.voxels_read > \
        (small.cost(growth) - small.cost(no_io)) / small.voxels_read  # per voxel, growth weighs on larger blocks


def test_workers_wait_for_the_last_round():
    """Three blocks on two workers take two rounds: four half-size blocks are no slower."""
    coeff = Coefficients(network=1e-6, growth=0.0, decompress=0.0, block=0.0)
    three = terms((24, 64, 64), (8, 64, 64), (0, 0, 0), (1, 1, 1))
    four = terms((24, 64, 64), (6, 64, 64), (0, 0, 0), (1, 1, 1))
    assert three.cost(coeff, workers=1) == four.cost(coeff, workers=1)
    assert three.cost(coeff, workers=2) > four.cost(coeff, workers=2)


@pytest.mark.parametrize("volume", [(48, 128, 128), (30, 100, 70), (64, 200, 120)])
@pytest.mark.parametrize("memory", [40 << 20, 400 << 20, 4 << 30])
@pytest.mark.parametrize("workers", [1, 2])
def test_the_cheapest_candidate_is_the_cheapest_write_shape(volume, memory, workers):
    """The pruned candidates hold the cost of an exhaustive search over every step multiple."""
    chunks = (16, 64, 64)
    best = ranked(volume, STEP, CONTEXT, chunks, memory, FEATURES, OUTPUTS, workers=workers)[0]
    axes = [range(s, -(-v // s) * s + 1, s) for v, s in zip(volume, STEP, strict=True)]
    every = [terms(volume, w, CONTEXT, chunks) for w in itertools.product(*axes)
             if block_bytes(w, CONTEXT, FEATURES, OUTPUTS) <= memory]
    cheapest = min(t.cost(workers=workers) for t in every)
    assert block_bytes(best.write, CONTEXT, FEATURES, OUTPUTS) <= memory
    assert best.cost(workers=workers) <= cheapest * 1.01


def test_less_memory_forces_smaller_blocks():
    volume, chunks = (256, 1024, 1024), (64, 128, 128)
    sizes = []
    for memory in (64 << 20, 512 << 20, 4 << 30):
        w = ranked(volume, STEP, CONTEXT, chunks, memory, FEATURES, OUTPUTS)[0].write
        assert block_bytes(w, CONTEXT, FEATURES, OUTPUTS) <= memory
        sizes.append(math.prod(w))
    assert sizes[0] < sizes[1] < sizes[2]


# ------------------------------------------------------------------ prepare and `pipeline plan`


def _config(tmp_path, shape=(64, 384, 384), chunks=(16, 64, 64), **blocks):
    import zarr

    zarr.open_group(str(tmp_path / "in.zarr"), mode="a").create_array(
        "raw", shape=shape, chunks=chunks, dtype="uint16", overwrite=True)  # empty: only its shape matters
    return {"input": {"path": str(tmp_path / "in.zarr"), "dataset": "raw"},
            "output": {"path": str(tmp_path / "out.zarr")}, "model": {"checkpoint": "demo", "device": "cpu"},
            "blocks": blocks, "cluster": {"kind": "local", "n_workers": 2, "memory_limit": "2GiB"}}


def test_prepare_picks_the_cheapest_block_within_the_workers_memory(tmp_path):
    cfg = _config(tmp_path)
    run = prepare(cfg)
    w = run.plan.write_shape
    expected = ranked((64, 384, 384), STEP, CONTEXT, (16, 64, 64), (2 << 30) // 4, FEATURES, OUTPUTS, workers=2)[0]
    assert w == expected.write and block_bytes(w, CONTEXT, FEATURES, OUTPUTS) <= (2 << 30) // 4
    assert run.plan.redundancy < BlockPlan((64, 384, 384), (64, 64, 64), CONTEXT, STEP).redundancy
    assert prepare(cfg).plan.digest() == run.plan.digest()  # same config, same plan
    small = prepare({**cfg, "cluster": {**cfg["cluster"], "memory_limit": "256MiB"}}).plan.write_shape
    assert math.prod(small) < math.prod(w) and block_bytes(small, CONTEXT, FEATURES, OUTPUTS) <= (256 << 20) // 4
    batch = prepare({**cfg, "model": {**cfg["model"], "batch_size": 4}}).plan.write_shape
    assert block_bytes(batch, CONTEXT, FEATURES, OUTPUTS) * 4 <= (2 << 30) // 4


def test_explicit_write_shape_and_target_size_are_kept(tmp_path):
    cfg = _config(tmp_path)
    assert prepare({**cfg, "blocks": {"write_shape": [16, 64, 64]}}).plan.write_shape == (16, 64, 64)
    assert prepare({**cfg, "blocks": {"target_size": 64}}).plan.write_shape == (64, 64, 64)
    assert prepare({**cfg, "blocks": {"target_size": 30}}).plan.write_shape == (30, 32, 32)


def test_plan_prints_the_cost_table(tmp_path, capsys):
    cfg = _config(tmp_path)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["plan", str(tmp_path / "c.yaml")]) == 0
    out = capsys.readouterr().out
    chosen = list(prepare(cfg).plan.write_shape)
    assert re.search(r"write_shape_from +least predicted cost", out)
    assert "write shapes by predicted cost" in out
    rows = out.split("write shapes by predicted cost")[1].strip().splitlines()[1:]
    assert rows[1].split("*")[0].strip() == str(chosen) and rows[1].endswith("1.00x")
    assert len(rows) == 6 and all(float(r.split()[-1][:-1]) >= 1.0 for r in rows[2:])
    (tmp_path / "w.yaml").write_text(yaml.safe_dump({**cfg, "blocks": {"write_shape": [16, 64, 64]}}))
    assert main(["plan", str(tmp_path / "w.yaml")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"write_shape_from +blocks.write_shape", out) and "[16, 64, 64] *" in out
    rows = out.split("write shapes by predicted cost")[1].strip().splitlines()[2:]
    assert any(float(r.split()[-1][:-1]) < 1.0 for r in rows)  # a cheaper block than the one given


def test_without_the_growth_term_a_gpu_takes_the_largest_block_that_pays():
    """GPU coefficients (no growth: caches are the CPU's) take at least the CPU's block, and the whole
    volume when it fits and one device runs it."""
    volume, chunks = (256, 1024, 1024), (64, 128, 128)
    cpu = ranked(volume, STEP, CONTEXT, chunks, 40 << 30, FEATURES, OUTPUTS, cost.CPU)[0].write
    gpu = ranked(volume, STEP, CONTEXT, chunks, 40 << 30, FEATURES, OUTPUTS, cost.GPU)[0].write
    assert math.prod(gpu) > math.prod(cpu)
    small = (64, 256, 256)
    assert ranked(small, STEP, CONTEXT, chunks, 40 << 30, FEATURES, OUTPUTS, cost.GPU)[0].write == small


# ---------------------------------------------------------------- sparse volumes (issue 28, item 2)

@settings(max_examples=80, deadline=None)
@given(st.tuples(*[st.integers(5, 60)] * 3), st.tuples(*[st.integers(2, 9)] * 3), st.tuples(*[st.integers(1, 20)] * 3),
       st.tuples(*[st.integers(0, 6)] * 3), st.integers(0, 2**32 - 1))
def test_live_blocks_counted_as_a_summed_area_table_finds_them(shape, cell, write, context, seed):
    """The counter of blocks whose (clipped) reads meet a stored chunk equals the summed-area-table
    lookup per block (`pipeline.plan.empty.any_within`) that the run's skipping uses."""
    import numpy as np

    from pipeline.network.predict import NormStats
    from pipeline.plan.empty import any_within, live_counter

    grid = [-(-s // c) for s, c in zip(shape, cell, strict=True)]
    stored = np.random.default_rng(seed).random(grid) < 0.1
    vol = type("V", (), {"shape": shape, "array": type("A", (), {"fill_value": 0})()})()
    live = live_counter(vol, (stored, cell), NormStats(0.0, 1.0), 0.1, context)
    if stored.all() or not stored.any():
        assert live is None
        return
    blocks = [-(-s // w) for s, w in zip(shape, write, strict=True)]
    ranges = [(np.maximum(np.arange(n) * w - c, 0), np.minimum((np.arange(n) + 1) * w + c, s))
              for s, w, c, n in zip(shape, write, context, blocks, strict=True)]
    assert live(write) == int(any_within(stored, cell, ranges).sum())


def test_blocks_of_a_sparse_volume_chosen_knowing_it_is_empty(tmp_path):
    """One stored chunk in a large volume: the planner counts the blocks known empty as free, so
    the plan computes fewer voxels than the dense choice would, and `pipeline plan` shows the
    blocks that are not empty per candidate."""
    import numpy as np
    import zarr

    from pipeline.plan.cost import terms

    a = zarr.create_array(str(tmp_path / "s.zarr"), shape=(256, 2048, 2048), chunks=(64, 256, 256), dtype="uint16",
                          fill_value=0)
    a[64:128, 512:768, 1024:1280] = (np.random.default_rng(0).random((64, 256, 256)) * 1000).astype("uint16")
    cfg = {"input": {"path": str(tmp_path / "s.zarr")}, "output": {"path": str(tmp_path / "o.zarr")},
           "cluster": {"kind": "local", "n_workers": 2}}
    run = prepare(cfg)
    assert run.live is not None
    dense = prepare({**cfg, "empty": {"skip": False}})
    assert dense.live is None
    ours = terms(run.plan.volume, run.plan.write_shape, run.plan.context, run.grid.chunks, run.live)
    theirs = terms(dense.plan.volume, dense.plan.write_shape, dense.plan.context, dense.grid.chunks, run.live)
    computed = ours.voxels_read / ours.blocks * ours.live  # voxels through the network, blocks known empty aside
    assert computed <= theirs.voxels_read / theirs.blocks * theirs.live
    assert 0 < ours.live < ours.blocks
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "plan", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert re.search(r"write shape\s+blocks\s+not empty", out.stdout), out.stdout
