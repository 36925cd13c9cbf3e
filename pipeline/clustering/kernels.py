"""Numpy kernels shared by the clustering methods: components of a voxel graph, the
voxel-pair embedding rule, region adjacency and object-size filtering. No method logic."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

Joined = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _shifted(ndim: int, axis: int) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices of the lower and upper voxel of every face pair along ``axis``."""
    a = tuple(slice(0, -1) if i == axis else slice(None) for i in range(ndim))
    b = tuple(slice(1, None) if i == axis else slice(None) for i in range(ndim))
    return a, b


def components(mask: np.ndarray, joined: Joined) -> np.ndarray:
    """Components of ``mask`` voxels linked along faces where ``joined(lower, upper)`` is true.

    ``joined`` gets the raster indices of the lower and upper voxel of face pairs inside
    ``mask`` (along one axis, in raster order) and returns a boolean per pair. Labels are
    ``1..k`` in raster order of each component's first voxel; 0 is background.
    """
    shape = mask.shape
    labels = np.zeros(shape, dtype=np.int64)
    n = int(mask.sum())
    if n == 0:
        return labels
    node = np.full(mask.size, -1, dtype=np.int64)
    node[np.flatnonzero(mask)] = np.arange(n)
    src, dst = [], []
    pair = np.zeros(shape, dtype=bool)  # the voxel and its upper neighbour along the axis are in mask
    for ax in range(mask.ndim):
        a, b = _shifted(mask.ndim, ax)
        pair[...] = False
        np.logical_and(mask[a], mask[b], out=pair[a])
        lower = np.flatnonzero(pair)
        upper = lower + int(np.prod(shape[ax + 1:]))
        keep = joined(lower, upper)
        src.append(node[lower[keep]])
        dst.append(node[upper[keep]])
    s, d = np.concatenate(src), np.concatenate(dst)
    graph = sparse.coo_matrix((np.ones(s.size, dtype=np.int8), (s, d)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    # renumber components by first voxel in raster order (deterministic)
    _, first = np.unique(comp, return_index=True)
    order = np.argsort(np.argsort(first))
    labels[mask] = order[comp] + 1
    return labels


def embedding_close(emb: np.ndarray, threshold: float) -> Joined:
    """Edge rule: squared embedding distance below ``threshold**2`` (float64 sums)."""
    flat = emb.reshape(emb.shape[0], -1)

    def joined(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
        return pair_close(np.take(flat, lower, axis=1), np.take(flat, upper, axis=1), threshold)

    return joined


def pair_close(ea: np.ndarray, eb: np.ndarray, threshold: float) -> np.ndarray:
    """The same rule as :func:`embedding_close` for explicit voxel pairs ``(E, ...)``: squares
    of float64 differences summed in order of the embedding dimension."""
    sq = np.zeros(np.broadcast_shapes(ea.shape[1:], eb.shape[1:]))
    for x, y in zip(ea, eb):
        d = np.subtract(x, y, dtype=np.float64)
        sq += d * d
    return sq < float(threshold) ** 2


def connectivity_fragments(emb: np.ndarray, fg: np.ndarray, fg_threshold: float, threshold: float) -> np.ndarray:
    """Foreground voxels (``fg > fg_threshold``) joined to face neighbours closer than
    ``threshold`` in embedding space. ``emb``: ``(E, *S)``; ``fg``: ``(*S)``."""
    return components(fg > fg_threshold, embedding_close(emb, threshold))


def label_components(labels: np.ndarray) -> np.ndarray:
    """Split every label of ``labels`` (0 = background) into face-connected pieces."""
    flat = labels.ravel()
    return components(labels > 0, lambda lower, upper: flat[lower] == flat[upper])


def region_adjacency(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Face-adjacent label pairs ``(m, 2)`` (``a < b``, both > 0) and their contact counts."""
    base = int(labels.max(initial=0)) + 1  # pair (a, b) as the key a * base + b: sorted like the pairs
    found = []
    for ax in range(labels.ndim):
        a, b = _shifted(labels.ndim, ax)
        la, lb = labels[a], labels[b]
        k = (la != lb) & (la > 0) & (lb > 0)
        la, lb = la[k].astype(np.int64), lb[k].astype(np.int64)
        found.append(np.minimum(la, lb) * base + np.maximum(la, lb))
    keys, contact = np.unique(np.concatenate(found), return_counts=True)
    return np.stack([keys // base, keys % base], axis=1), contact.astype(np.int64)


def fragment_means(emb: np.ndarray, local: np.ndarray) -> np.ndarray:
    """``(E, k + 1)`` mean embedding of every label ``0..k`` of ``local`` (0: background)."""
    k = int(local.max()) if local.size else 0
    flat = local.ravel()
    sums = np.stack([np.bincount(flat, weights=e.ravel(), minlength=k + 1) for e in emb])
    return sums / np.maximum(np.bincount(flat, minlength=k + 1), 1)


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Labels with fewer than ``min_size`` voxels set to 0 (for whole objects only)."""
    if not min_size:
        return labels
    return np.where(np.bincount(labels.ravel())[labels] >= min_size, labels, 0)


def ball_shells(ndim: int, distance: float) -> list[tuple[int, np.ndarray]]:
    """Integer offsets within ``distance`` (Euclidean, origin excluded), grouped by squared
    length, nearest first: ``[(d2, offsets (m, ndim)), ...]``."""
    r = int(np.floor(distance))
    grid = np.stack(np.meshgrid(*[np.arange(-r, r + 1)] * ndim, indexing="ij"), -1).reshape(-1, ndim)
    d2 = (grid**2).sum(1)
    keep = (d2 > 0) & (d2 <= distance**2 + 1e-9)
    grid, d2 = grid[keep], d2[keep]
    return [(int(d), grid[d2 == d]) for d in np.unique(d2)]


def grow(labels: np.ndarray, fg: np.ndarray, threshold: float, distance: float) -> np.ndarray:
    """Unlabelled voxels with ``fg > threshold`` take the label of the nearest labelled
    voxel within ``distance`` (Euclidean distance to the voxel's centre; among equally
    near labelled voxels, the smallest label): shells of offsets, nearest first."""
    free = (fg > threshold) & (labels == 0)
    if distance <= 0 or not free.any() or not labels.any():
        return labels
    r = int(np.floor(distance))
    padded = np.pad(labels, r)
    pflat = padded.ravel()
    pstrides = np.array([int(np.prod(padded.shape[i + 1:])) for i in range(labels.ndim)])
    coords = np.argwhere(free)
    base = (coords + r) @ pstrides
    best = np.zeros(len(base), dtype=labels.dtype)
    todo = np.arange(len(base))
    big = np.iinfo(np.int64).max
    for _, offsets in ball_shells(labels.ndim, distance):
        near = pflat[base[todo, None] + (offsets @ pstrides)[None, :]].astype(np.int64)
        shell = np.where(near > 0, near, big).min(1)
        hit = shell < big
        best[todo[hit]] = shell[hit]
        todo = todo[~hit]
        if not len(todo):
            break
    out = labels.copy()
    out[tuple(coords.T)] = best
    return out
