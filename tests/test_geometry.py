from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.geometry import Box
from pipeline.plan.blocks import BlockPlan, PlanError, check_write_shape, reflect_indices, rows, span


def test_box_basics():
    b = Box((1, 2), (3, 4))
    assert b.end == (4, 6)
    assert b.grow(1) == Box((0, 1), (5, 6))
    assert b.grow((1, 0), (0, 2)) == Box((0, 2), (4, 6))
    assert b.intersect(Box((3, 0), (10, 3))) == Box((3, 2), (1, 1))
    assert b.intersect(Box((10, 10), (1, 1))).empty
    assert b.to_slices() == (slice(1, 4), slice(2, 6))
    assert b.to_slices(relative_to=Box((1, 1), (9, 9))) == (slice(0, 3), slice(1, 5))
    assert Box((3, 5), (4, 4)).snap_to_grid(4) == Box((0, 4), (8, 8))
    assert Box((3, 5), (9, 8)).snap_to_grid(4, "shrink") == Box((4, 8), (8, 4))
    assert hash(b) == hash(Box([1, 2], [3, 4]))
    with pytest.raises(ValueError, match="non-negative"):
        Box((0,), (-1,))
    with pytest.raises(ValueError, match="dimensions"):
        Box((0, 0), (1,))


def test_bad_write_shape_names_nearest_valid():
    with pytest.raises(PlanError, match=r"axis 1: 30 -> use 28 or 32.*nearest valid: \[16, 32, 64\]"):
        check_write_shape((16, 30, 64), (4, 4, 4))
    with pytest.raises(PlanError, match=r"axis 0: 2 -> use 4"):
        check_write_shape((2, 8), (4, 4))
    with pytest.raises(PlanError, match="positive multiple"):
        BlockPlan((10, 10), (0, 8), (2, 2), (4, 4))
    with pytest.raises(PlanError, match="has 2 axes"):
        BlockPlan((10, 10, 10), (8, 8), (2, 2, 2), (4, 4, 4))


@st.composite
def plans(draw):
    ndim = draw(st.integers(1, 3))
    step = tuple(draw(st.sampled_from([1, 2, 4, 8])) for _ in range(ndim))
    write = tuple(s * draw(st.integers(1, 3)) for s in step)
    volume = tuple(draw(st.integers(1, 40)) for _ in range(ndim))
    context = tuple(draw(st.integers(0, 10)) for _ in range(ndim))
    return BlockPlan(volume, write, context, step)


@settings(max_examples=200, deadline=None)
@given(plans())
def test_plan_properties(plan):
    count = np.zeros(plan.volume, dtype=np.int32)
    for block in plan:
        # every write offset is a multiple of step and of the write shape
        assert all(o % s == 0 for o, s in zip(block.write.offset, plan.step))
        assert block.write.shape == plan.write_shape
        # the read box contains the write box, grown by exactly the context
        assert block.read.contains(block.write)
        assert block.read == block.write.grow(plan.context)
        assert block.valid == block.write.intersect(Box.from_shape(plan.volume))
        assert not block.valid.empty
        assert plan.block_at(block.linear) == block
        count[block.valid.to_slices()] += 1
    # write boxes tile the volume exactly once
    assert (count == 1).all()
    assert plan.redundancy >= 1.0 or plan.voxels_read >= 0


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 12), st.integers(-30, 30), st.integers(0, 40))
def test_reflect_matches_numpy_pad(size, start, length):
    stop = start + length
    arr = np.arange(size)
    before, after = max(0, -start), max(0, stop - size)
    mode = "reflect" if size > 1 else "edge"
    padded = np.pad(arr, (before, after), mode=mode)
    expected = padded[start + before : stop + before]
    assert list(arr[np.asarray(reflect_indices(start, stop, size), dtype=int)]) == list(expected)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 30), min_size=1, max_size=3), st.integers(0, 2**32 - 1))
def test_rows_are_runs_whose_span_is_the_union_of_their_blocks(volume, seed):

    plan = BlockPlan(tuple(volume), tuple(4 for _ in volume), tuple(0 for _ in volume), tuple(2 for _ in volume))
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(plan), rng.integers(1, len(plan) + 1), replace=False).tolist())
    runs = rows([plan.block_at(i) for i in chosen])
    assert [b.linear for r in runs for b in r] == chosen
    for r in runs:
        box = span(r)
        assert sum(math.prod(b.valid.shape) for b in r) == math.prod(box.shape)
        assert all(b.valid.intersect(box) == b.valid for b in r)
