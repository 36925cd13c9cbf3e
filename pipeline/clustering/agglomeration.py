"""``agglomeration``: strict connectivity fragments merged by mean embedding, then grown.

Over-segment with the connectivity rule at a strict neighbour ``threshold`` (fragments
that almost never span two objects), then merge adjacent regions in order of the
distance of their mean embeddings (size-weighted, updated after every merge) while it
is below ``merge_distance``. Neighbour-to-neighbour distances change smoothly across the
border of two touching objects, their mean embeddings do not: the discriminative loss
pushes them ``2 * delta_d`` apart. Then unlabelled voxels with foreground above
``grow_threshold`` within ``grow_distance`` voxels of a label take the nearest label
(cores found at a strict foreground threshold get their border back). Not exact
blockwise: across block faces fragments merge by the same mean-distance rule.
"""

from __future__ import annotations

import heapq
import math
import operator
from typing import Any

import numpy as np
import torch

from .base import EvidenceMethod, register
from .compiled import merge_loop
from .kernels import connectivity_fragments, grow, label_components, region_adjacency


def agglomerate(labels: np.ndarray, emb: np.ndarray, merge_distance: float) -> np.ndarray:
    """Merge adjacent regions of ``labels`` (1..n, 0 = background) closest mean embeddings
    first (means size-weighted and updated after each merge) while the distance is below
    ``merge_distance``. Returns labels numbered ``1..k`` in raster order of first voxel."""
    if int(labels.max()) < 2:
        return labels.astype(np.int64)
    return label_components(_merged(labels, emb, merge_distance)[labels])


def _merged(labels: np.ndarray, emb: np.ndarray, merge_distance: float) -> np.ndarray:
    """:func:`merge_regions` of the regions of ``labels`` (1..n, at least 2)."""
    n = int(labels.max())
    at = np.flatnonzero(labels)  # region voxels in raster order (background row 0 stays empty)
    flat = labels.ravel()[at]
    size = np.bincount(flat, minlength=n + 1).astype(np.float64)
    sums = np.stack([np.bincount(flat, weights=e.ravel()[at].astype(np.float64), minlength=n + 1) for e in emb], axis=1)
    pairs, _ = region_adjacency(labels)
    return merge_regions(size, sums, pairs, merge_distance)


def number_groups(root: np.ndarray) -> np.ndarray:
    """``(n + 1,)`` table of regions ``0..n`` (0: background) to groups ``root`` numbered
    ``1..k`` by their smallest region. Regions numbered by first voxel and merged only with
    adjacent ones: the groups are connected and this is :func:`label_components`' order."""
    _, first, inverse = np.unique(root[1:], return_index=True, return_inverse=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first)] = np.arange(1, len(first) + 1)
    return np.concatenate([[0], rank[inverse]])


def merge_regions(size: np.ndarray, sums: np.ndarray, pairs: np.ndarray, merge_distance: float) -> np.ndarray:
    """The agglomeration on the region graph (shared by the numpy and torch paths).

    ``size`` ``(n + 1,)`` and ``sums`` ``(n + 1, E)`` of regions ``0..n`` (float64),
    ``pairs`` ``(m, 2)`` adjacent regions ``a < b``. Adjacent regions merge closest mean
    first (ties: smallest ``(a, b)``), means updated after every merge, while below
    ``merge_distance``. Returns the final region of every region ``(n + 1,)``. Compiled
    (:func:`.compiled.merge_loop`); :func:`merge_regions_reference` is its Python twin."""
    d = _pair_distances(size, sums, pairs)
    size, sums = np.ascontiguousarray(size, np.float64), np.ascontiguousarray(sums, np.float64)
    pa, pb = (np.ascontiguousarray(pairs[:, c], np.int64) for c in (0, 1))
    return merge_loop(size, sums, pa, pb, d, float(merge_distance))


def _pair_distances(size: np.ndarray, sums: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    mean = sums / np.maximum(size, 1)[:, None]
    return np.linalg.norm(mean[pairs[:, 0]] - mean[pairs[:, 1]], axis=1) if len(pairs) else np.zeros(0)


def merge_regions_reference(size: np.ndarray, sums: np.ndarray, pairs: np.ndarray, merge_distance: float) -> np.ndarray:
    """:func:`merge_regions` in Python (heapq and sets): the reference the compiled loop is tested against."""
    n = len(size) - 1
    mean = sums / np.maximum(size, 1)[:, None]
    d = _pair_distances(size, sums, pairs)
    keep = d < merge_distance
    m = int(keep.sum())
    heap = list(zip(d[keep].tolist(), pairs[keep, 0].tolist(), pairs[keep, 1].tolist(), [0] * m, [0] * m))
    heapq.heapify(heap)
    nbr: list[set[int]] = [set() for _ in range(n + 1)]
    for i, j in pairs.tolist():
        nbr[i].add(j)
        nbr[j].add(i)
    parent = list(range(n + 1))
    _merge_loop(heap, nbr, parent, size.tolist(), sums.tolist(), mean.tolist(), merge_distance)
    root = np.asarray(parent)
    while True:  # path compression to the final roots
        nxt = root[root]
        if np.array_equal(nxt, root):
            return root
        root = nxt


def _merge_loop(
    heap: list[tuple[float, int, int, int, int]], nbr: list[set[int]], parent: list[int],
    size: list[float], sums: list[list[float]], mean: list[list[float]], merge_distance: float,
) -> None:
    """The sequential merging on Python floats: per merge a few neighbours of a few dimensions,
    where numpy's per-call cost dominates. ``heap``: ``(distance, a, b, version_a, version_b)``.
    Squared distances are summed in the same sequential order as numpy's row sum (E < 8),
    so the distances are numpy's."""
    version = [0] * len(parent)  # -1: merged into another region
    pop, push, sqrt, sub = heapq.heappop, heapq.heappush, math.sqrt, operator.sub
    limit = 2 * len(heap) + 64
    while heap:
        if len(heap) > limit:  # drop stale entries (cheaper than popping them one by one)
            heap[:] = [e for e in heap if version[e[1]] == e[3] and version[e[2]] == e[4]]
            heapq.heapify(heap)
            limit = 2 * len(heap) + 64
        _, i, j, vi, vj = pop(heap)
        if version[i] != vi or version[j] != vj:
            continue  # stale: one side has merged since
        ni, nj = nbr[i], nbr[j]
        if len(ni) < len(nj):
            i, j, ni, nj = j, i, nj, ni
        parent[j] = i  # j joins i
        version[j] = -1
        vi = version[i] = version[i] + 1
        s = sums[i] = [a + b for a, b in zip(sums[i], sums[j])]
        total = size[i] = size[i] + size[j]
        mi = mean[i] = [a / total for a in s]
        nj.discard(i)
        for k in nj:
            nk = nbr[k]
            nk.discard(j)
            nk.add(i)
        ni |= nj
        ni.discard(j)
        nbr[j] = set()
        for k in ni:
            sq = 0.0
            for x in map(sub, mean[k], mi):
                sq += x * x
            dist = sqrt(sq)
            if dist < merge_distance:
                push(heap, (dist, i, k, vi, version[k]) if i < k else (dist, k, i, version[k], vi))


def agglomeration_fragments(
    emb: np.ndarray, fg: np.ndarray, fg_threshold: float, threshold: float, merge_distance: float,
    grow_threshold: float = 0.5, grow_distance: float = 0.0,
) -> np.ndarray:
    """Strict connectivity fragments merged by mean embedding (:func:`agglomerate`), then
    grown into the foreground above ``grow_threshold`` (:func:`grow`)."""
    labels = connectivity_fragments(emb, fg, fg_threshold, threshold)
    if int(labels.max()) >= 2:  # fragments numbered by first voxel: no need to relabel components
        labels = number_groups(_merged(labels, emb, merge_distance))[labels]
    if grow_distance > 0 and grow_threshold < fg_threshold:
        labels = grow(labels, fg, grow_threshold, grow_distance)
    return labels


def agglomeration_fragments_compiled(
    emb: np.ndarray, fg: np.ndarray, fg_threshold: float, threshold: float, merge_distance: float,
    grow_threshold: float = 0.5, grow_distance: float = 0.0,
) -> np.ndarray:
    """:func:`agglomeration_fragments` through the compiled kernels (:mod:`.compiled_voxels`):
    the same labels, in one pass over the block per step."""
    from . import compiled_voxels as cv

    e3, f3 = cv.as_3d(emb, fg.ndim), cv.as_3d(fg, fg.ndim)
    labels, k, size, sums, keys = cv.region_graph(e3, f3, cv.same_type(fg_threshold, fg), float(threshold) ** 2)
    if k >= 2:
        pairs = np.stack([keys // (k + 1), keys % (k + 1)], axis=1)
        labels = number_groups(merge_regions(size.astype(np.float64), sums, pairs, merge_distance))[labels]
    if grow_distance > 0 and grow_threshold < fg_threshold:
        labels = cv.grow_labels(labels, f3, cv.same_type(grow_threshold, fg), *cv.shells_3d(fg.ndim, grow_distance))
    return labels.reshape(fg.shape)


def agglomeration_fragments_torch(
    emb: torch.Tensor, fg: torch.Tensor, fg_threshold: float, threshold: float, merge_distance: float,
    grow_threshold: float = 0.5, grow_distance: float = 0.0,
) -> torch.Tensor:
    """:func:`agglomeration_fragments` in torch: voxel work on ``emb.device`` over the
    foreground voxels only, the merging on the (small) region graph on the CPU. Merged
    regions are unions of adjacent ones, hence connected: renumbering them by first voxel
    (:func:`number_groups`) is the reference's :func:`label_components`."""
    from . import torch_kernels as tk

    g = tk.voxel_graph(fg > fg_threshold)
    labels = torch.zeros(fg.shape, dtype=torch.int64, device=fg.device)
    if g.n:
        values = g.gather(emb).double()  # for the embedding rule and the region means
        keep = tk.close(values, g, threshold)
        nodes = tk.number_roots(tk.roots(g.n, *tk.select(keep, g.u, g.v)))  # as connectivity_nodes
        if int(nodes.max()) >= 2:
            size, sums = tk.region_stats(nodes, values)
            root = merge_regions(size, sums, tk.region_adjacency(nodes, g, ~keep), merge_distance)
            nodes = torch.from_numpy(number_groups(root)).to(nodes.device)[nodes]
        labels = g.dense(nodes)
    if grow_distance > 0 and grow_threshold < fg_threshold:
        labels = tk.grow(labels, fg, grow_threshold, grow_distance)
    return labels


@register
class Agglomeration(EvidenceMethod):
    name = "agglomeration"
    rank = 1
    cpu_backend = "numba"
    backends = ("numba", "torch", "numpy")

    @classmethod
    def defaults(cls, delta_v: float, delta_d: float) -> dict[str, Any]:
        # strict neighbour threshold: fragments that almost never span two objects
        return {**super().defaults(delta_v, delta_d), "threshold": 0.2 * delta_d}

    def default_max_distance(self) -> float:
        return self.params.merge_distance

    def fragments(self, emb: np.ndarray, fg: np.ndarray) -> np.ndarray:
        p = self.params
        args = (p.foreground_threshold, p.threshold, p.merge_distance, p.grow_threshold, p.grow_distance)
        if self.backend == "numpy":
            return agglomeration_fragments(emb, fg, *args)
        if self.backend == "numba":
            return agglomeration_fragments_compiled(emb, fg, *args)
        return agglomeration_fragments_torch(*self.tensors(emb, fg), *args).cpu().numpy()
