"""The compiled (numba) kernels equal their numpy/Python references bit for bit: the region
merge, the clustering's voxel kernels, the relabel pass with its object statistics, and the
zarr write that skips zarr's fill-value test."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.clustering import ClusteringParams, make_method
from pipeline.clustering import compiled_voxels as cv
from pipeline.clustering import kernels as ref
from pipeline.clustering.agglomeration import (
    agglomeration_fragments,
    agglomeration_fragments_compiled,
    merge_regions,
    merge_regions_reference,
)
from pipeline.stages.ids import fragment_dtype, object_stats
from pipeline.stages.relabel_kernel import relabel_block
from pipeline.volume.io import write_region

from .test_torch_clustering import _field


def _graph(rng: np.random.Generator, n: int, m: int, e: int, quantised: bool):
    a, b = rng.integers(1, n + 1, m), rng.integers(1, n + 1, m)
    keep = a != b
    pairs = np.unique(np.stack([np.minimum(a, b)[keep], np.maximum(a, b)[keep]], axis=1), axis=0)
    size = np.concatenate([[0.0], rng.integers(1, 50, n).astype(np.float64)])
    means = rng.integers(0, 4, (n + 1, e)).astype(np.float64) if quantised else rng.normal(size=(n + 1, e))
    return size, means * size[:, None], pairs.reshape(-1, 2).astype(np.int64)


@settings(max_examples=120, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 120), st.integers(1, 6), st.booleans(),
       st.sampled_from([0.5, 1.0, 1.5, 3.0]))
def test_merge_loop_equals_the_python_reference(seed, n, e, quantised, merge_distance):
    """Random region graphs, half with quantised means (many equal distances: the tie order
    decides), the compiled heap and neighbour lists merge exactly like heapq and sets."""
    rng = np.random.default_rng(seed)
    size, sums, pairs = _graph(rng, n, int(rng.integers(1, 4 * n)), e, quantised)
    np.testing.assert_array_equal(merge_regions(size, sums, pairs, merge_distance),
                                  merge_regions_reference(size, sums, pairs, merge_distance))


def test_merge_loop_on_a_large_graph():
    """Long merge chains: the pool of neighbour lists is repacked and the heap grows."""
    rng = np.random.default_rng(7)
    size, sums, pairs = _graph(rng, 3000, 9000, 3, quantised=True)
    got = merge_regions(size, sums, pairs, 2.5)
    np.testing.assert_array_equal(got, merge_regions_reference(size, sums, pairs, 2.5))
    assert len(np.unique(got[1:])) < 2000  # many merges happened


@pytest.mark.parametrize("shape", [(20, 48, 48), (64, 64), (5, 1, 30)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compiled_clustering_equals_numpy(shape, seed):
    emb, fg = _field(shape, seed=seed, sigma=3.0)
    for args in [(0.55, 0.3, 1.2, 0.4, 0.0), (0.55, 0.3, 1.2, 0.4, 1.5), (0.5, 0.6, 2.0, 0.3, 3.0)]:
        want = agglomeration_fragments(emb, fg, *args)
        got = agglomeration_fragments_compiled(emb, fg, *args)
        assert got.dtype == want.dtype == np.int64
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(cv.fragment_means(emb, want), ref.fragment_means(emb, want))
    for threshold in (0.2, 0.6, 3.0):
        want = ref.connectivity_fragments(emb, fg, 0.5, threshold)
        labels, k = cv.embedding_components(cv.as_3d(emb, fg.ndim), cv.as_3d(fg, fg.ndim), np.float32(0.5), threshold**2)
        np.testing.assert_array_equal(labels.reshape(fg.shape), want)
        assert k == want.max()


def test_thresholds_compare_in_the_foregrounds_dtype():
    """numpy compares a float32 array with a Python float in float32: a voxel equal to the
    threshold rounded to float32 is not above it, in the reference and in the kernels."""
    fg = np.full((1, 1, 3), np.float32(0.3), np.float32)  # float32(0.3) > 0.3 in float64, not in float32
    emb = np.zeros((1, 1, 1, 3), np.float32)
    for backend in ("numpy", "numba"):
        method = make_method(ClusteringParams(method="connectivity", foreground_threshold=0.3), backend=backend)
        assert method.fragments(emb, fg).max() == 0


def test_methods_backends_agree_on_demo_model_embeddings():
    from pipeline.clustering import resolve_params
    from pipeline.config import validate_config
    from pipeline.network.checkpoint import open_checkpoint
    from pipeline.network.predict import NormStats, Predictor, predict_whole
    from pipeline.volume.synthetic import SyntheticSpec, generate

    ck = open_checkpoint("demo")
    img, _ = generate(SyntheticSpec(shape=(16, 64, 64), radius=(5.0, 10.0), anisotropy=2.0, density=0.25), seed=5)
    lo, hi = np.percentile(img, [1, 99.8])
    out = predict_whole(Predictor(ck.model), img[None], NormStats.from_values(ck.spec.normalisation, lo, hi))
    for name in ("connectivity", "agglomeration"):
        cfg = validate_config({"input": {"path": "x"}, "output": {"path": "y"}, "clustering": {"method": name}})
        params = resolve_params(cfg.clustering, ck.info)
        want = make_method(params, backend="numpy").fragments(out[:-1], out[-1])
        method = make_method(params)
        assert method.backend == "numba"  # the default on a CPU
        np.testing.assert_array_equal(method.fragments(out[:-1], out[-1]), want)


def test_a_method_without_a_compiled_backend_says_so():
    with pytest.raises(ValueError, match="meanshift.*no 'numba' backend"):
        make_method(ClusteringParams(method="meanshift"), backend="numba")
    assert make_method(ClusteringParams(method="meanshift")).backend == "torch"


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([2, 3]), st.integers(0, 30), st.sampled_from([np.uint32, np.uint64]),
       st.sampled_from(["uint16", "uint32", "uint64"]))
def test_relabel_pass_equals_lookup_and_object_stats(seed, nd, k, dtype, stored):
    rng = np.random.default_rng(seed)
    shape = tuple(int(x) for x in rng.integers(1, 12, nd))
    local = rng.integers(0, k + 1, shape).astype(stored)  # as scratch/fragments keeps them
    table = np.concatenate([[0], rng.integers(0, 8, k)]).astype(dtype)  # fragments share objects; some removed
    offset = tuple(int(x) for x in rng.integers(0, 5000, nd))
    want = table[local]
    out = np.empty(shape, dtype)
    stats = relabel_block(local, int(rng.integers(0, 1000)), table, out, offset)
    np.testing.assert_array_equal(out, want)
    for key, value in object_stats(want, offset).items():
        assert stats[key].dtype == value.dtype and stats[key].shape == value.shape, key
        np.testing.assert_array_equal(stats[key], value)


def test_relabel_pass_rejects_ids_past_the_table():
    with pytest.raises(ValueError, match="fragment 3 of block 5 is past the block's 2 fragments"):
        relabel_block(np.full((2, 2, 2), 3, np.uint32), 5, np.zeros(3, np.uint32), np.empty((2, 2, 2), np.uint32), (0, 0, 0))


@pytest.mark.parametrize("stride,dtype", [(2**16 - 1, "uint16"), (2**16, "uint32"), (64 * 256 * 256, "uint32"),
                                          (2**32 - 1, "uint32"), (2**32, "uint64")])
def test_fragments_are_kept_in_the_smallest_dtype_for_a_block(stride, dtype):
    assert fragment_dtype(stride) == dtype
    assert np.iinfo(dtype).max >= stride  # every local id 1..stride fits


@settings(max_examples=40, deadline=None)
@given(arrays(np.uint32, st.tuples(st.integers(1, 12), st.integers(1, 12), st.integers(1, 12)),
              elements=st.sampled_from([0, 0, 0, 5])),
       st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 5)))
def test_write_region_leaves_the_same_chunks_as_zarr(tmp_path_factory, data, start):
    """The region written over older data: the same values and the same chunk files (all-zero
    chunks absent) as zarr's own write, whether or not the fill-value test was skipped."""
    tmp = tmp_path_factory.mktemp("w")
    shape = tuple(s + n + 2 for s, n in zip(start, data.shape, strict=True))
    region = tuple(slice(s, s + n) for s, n in zip(start, data.shape, strict=True))
    arrays_ = []
    for name in ("plain", "ours"):
        a = zarr.create_array(str(tmp / name), shape=shape, chunks=(4, 5, 3), dtype="uint32", fill_value=0)
        a[...] = 7
        a[:2] = 0
        if name == "plain":
            a[region] = data
        else:
            write_region(a, region, data)
        arrays_.append(tmp / name)
    plain, ours = (zarr.open_array(str(p))[...] for p in arrays_)
    np.testing.assert_array_equal(ours, plain)
    files = [sorted(str(f.relative_to(p)) for f in (p / "c").rglob("*") if f.is_file()) if (p / "c").exists() else []
             for p in arrays_]
    assert files[0] == files[1]
