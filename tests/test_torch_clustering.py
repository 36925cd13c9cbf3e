"""The torch clustering equals the numpy reference (which the other tests pin down), and
its kernels equal scipy and brute-force definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from pipeline.clustering import ClusteringParams, make_method
from pipeline.clustering import kernels as ref
from pipeline.clustering import torch_kernels as tk
from pipeline.clustering.agglomeration import agglomeration_fragments, agglomeration_fragments_torch


def _field(shape, e=3, seed=0, sigma=2.0, scale=4.0):
    """Smooth random embeddings ``(E, *shape)`` and a blobby foreground probability."""
    rng = np.random.default_rng(seed)
    emb = np.stack([ndimage.gaussian_filter(rng.random(shape), sigma) for _ in range(e)]).astype(np.float32)
    emb = (emb - emb.mean()) * scale / emb.std()
    fg = ndimage.gaussian_filter(rng.random(shape), 1.5)
    fg = ((fg - fg.min()) / (fg.max() - fg.min())).astype(np.float32)
    return emb, fg


@pytest.mark.parametrize("shape", [(24, 40, 40), (64, 64), (5, 1, 30)])
@pytest.mark.parametrize("seed", [0, 1])
def test_connectivity_torch_equals_numpy(shape, seed):
    emb, fg = _field(shape, seed=seed)
    for threshold in (0.2, 0.6, 3.0):
        want = ref.connectivity_fragments(emb, fg, 0.5, threshold)
        got = tk.connectivity_fragments(torch.from_numpy(emb), torch.from_numpy(fg), 0.5, threshold).numpy()
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("grow_distance", [0.0, 1.5, 3.0])
def test_agglomeration_torch_equals_numpy(seed, grow_distance):
    emb, fg = _field((20, 48, 48), seed=seed, sigma=3.0)
    args = (0.55, 0.3, 1.2, 0.4, grow_distance)  # fg, strict threshold, merge distance, grow threshold, distance
    want = agglomeration_fragments(emb, fg, *args)
    got = agglomeration_fragments_torch(torch.from_numpy(emb), torch.from_numpy(fg), *args).numpy()
    assert want.max() > 5
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("method", ["connectivity", "agglomeration"])
def test_methods_backends_agree_on_the_demo_model(method):
    from pipeline.clustering import resolve_params
    from pipeline.config import validate_config
    from pipeline.network.checkpoint import open_checkpoint
    from pipeline.network.predict import NormStats, Predictor, predict_whole
    from pipeline.volume.synthetic import SyntheticSpec, generate

    ck = open_checkpoint("demo")
    img, _ = generate(SyntheticSpec(shape=(16, 64, 64), radius=(5.0, 10.0), anisotropy=2.0, density=0.25), seed=5)
    lo, hi = np.percentile(img, [1, 99.8])
    out = predict_whole(Predictor(ck.model), img[None], NormStats.from_values(ck.spec.normalisation, lo, hi))
    cfg = validate_config({"input": {"path": "x"}, "output": {"path": "y"}, "clustering": {"method": method}})
    params = resolve_params(cfg.clustering, ck.info)
    want = make_method(params, backend="numpy").fragments(out[:-1], out[-1])
    got = make_method(params, backend="torch", device="cpu").fragments(out[:-1], out[-1])
    assert want.max() > 3
    np.testing.assert_array_equal(got, want)


@settings(max_examples=40, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 6), st.integers(1, 9), st.integers(1, 9))))
def test_components_equal_scipy_label(mask):
    """All foreground neighbours joined: scipy's face-connected label, same numbering."""
    want, _ = ndimage.label(mask)
    got = tk.connectivity_fragments(torch.zeros((1, *mask.shape)), torch.from_numpy(mask.astype(np.float32)), 0.5, 1.0)
    np.testing.assert_array_equal(got.numpy(), want)


def _grow_brute(labels, fg, threshold, distance):
    out = labels.copy()
    coords = np.argwhere(labels > 0)
    for p in np.argwhere((fg > threshold) & (labels == 0)):
        d2 = ((coords - p) ** 2).sum(1)
        near = d2 <= distance**2
        if near.any():
            best = d2[near].min()
            out[tuple(p)] = labels[tuple(coords[near & (d2 == best)].T)].min()
    return out


@pytest.mark.parametrize("distance", [1.0, 2.5, 3.0])
def test_grow_is_nearest_label_smallest_on_ties(distance):
    rng = np.random.default_rng(int(distance * 10))
    labels = np.where(rng.random((9, 12, 11)) < 0.04, rng.integers(1, 6, (9, 12, 11)), 0).astype(np.int64)
    fg = rng.random(labels.shape).astype(np.float32)
    want = _grow_brute(labels, fg, 0.3, distance)
    np.testing.assert_array_equal(ref.grow(labels, fg, 0.3, distance), want)
    np.testing.assert_array_equal(tk.grow(torch.from_numpy(labels), torch.from_numpy(fg), 0.3, distance).numpy(), want)


def test_region_graph_matches_reference():
    emb, fg = _field((16, 32, 32), seed=4)
    labels = ref.connectivity_fragments(emb, fg, 0.5, 0.4)
    g = tk.voxel_graph(torch.from_numpy(labels > 0))
    nodes = torch.from_numpy(labels.ravel()[g.index.numpy()])
    pairs, _ = ref.region_adjacency(labels)
    np.testing.assert_array_equal(tk.region_adjacency(nodes, g), pairs)
    size, sums = tk.region_stats(nodes, g.gather(torch.from_numpy(emb)))
    flat = labels.ravel()
    np.testing.assert_array_equal(size[1:], np.bincount(flat)[1:])
    np.testing.assert_array_equal(sums[1:, 0], np.bincount(flat, weights=emb[0].ravel().astype(np.float64))[1:])


def test_method_rejects_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        make_method(ClusteringParams(), backend="cupy")
