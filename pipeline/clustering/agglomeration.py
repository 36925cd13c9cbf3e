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
from typing import Any

import numpy as np
import torch

from .base import EvidenceMethod, register
from .kernels import connectivity_fragments, grow, label_components, region_adjacency


def agglomerate(labels: np.ndarray, emb: np.ndarray, merge_distance: float) -> np.ndarray:
    """Merge adjacent regions of ``labels`` (1..n, 0 = background) closest mean embeddings
    first (means size-weighted and updated after each merge) while the distance is below
    ``merge_distance``. Returns labels numbered ``1..k`` in raster order of first voxel."""
    n = int(labels.max())
    if n < 2:
        return labels.astype(np.int64)
    flat = labels.ravel()
    size = np.bincount(flat, minlength=n + 1).astype(np.float64)
    sums = np.stack([np.bincount(flat, weights=e.ravel().astype(np.float64), minlength=n + 1) for e in emb], axis=1)
    pairs, _ = region_adjacency(labels)
    return label_components(merge_regions(size, sums, pairs, merge_distance)[labels])


def _distance(p: list[float], q: list[float]) -> float:
    """``sqrt(sum((p - q) ** 2))`` with the float operations of numpy's row sum (E < 8)."""
    total = 0.0
    for a, b in zip(p, q):
        d = a - b
        total += d * d
    return math.sqrt(total)


def merge_regions(size: np.ndarray, sums: np.ndarray, pairs: np.ndarray, merge_distance: float) -> np.ndarray:
    """The agglomeration on the region graph (shared by the numpy and torch paths).

    ``size`` ``(n + 1,)`` and ``sums`` ``(n + 1, E)`` of regions ``0..n`` (float64),
    ``pairs`` ``(m, 2)`` adjacent regions ``a < b``. Adjacent regions merge closest mean
    first, means updated after every merge, while below ``merge_distance``. Returns the
    final region of every region ``(n + 1,)``."""
    n = len(size) - 1
    nbr: list[set[int]] = [set() for _ in range(n + 1)]
    for i, j in pairs.tolist():
        nbr[i].add(j)
        nbr[j].add(i)
    mean = sums / np.maximum(size, 1)[:, None]
    d = np.linalg.norm(mean[pairs[:, 0]] - mean[pairs[:, 1]], axis=1) if len(pairs) else np.zeros(0)
    keep = d < merge_distance
    m = int(keep.sum())
    heap = list(zip(d[keep].tolist(), pairs[keep, 0].tolist(), pairs[keep, 1].tolist(), [0] * m, [0] * m))
    heapq.heapify(heap)
    # the loop on Python floats: per merge a few neighbours of a few dimensions, where numpy's
    # per-call cost dominates (sums of squares in the same sequential order as numpy's for E < 8)
    size_l, sums_l, mean_l = size.tolist(), sums.tolist(), mean.tolist()
    version = [0] * (n + 1)
    parent = list(range(n + 1))
    while heap:
        _, i, j, vi, vj = heapq.heappop(heap)
        if version[i] != vi or version[j] != vj or parent[i] != i or parent[j] != j:
            continue  # stale: one side has merged since
        if len(nbr[i]) < len(nbr[j]):
            i, j = j, i
        parent[j] = i  # j joins i
        sums_l[i] = [a + b for a, b in zip(sums_l[i], sums_l[j])]
        size_l[i] += size_l[j]
        mi = mean_l[i] = [a / size_l[i] for a in sums_l[i]]
        version[i] += 1
        for k in nbr[j]:
            nbr[k].discard(j)
            if k != i:
                nbr[k].add(i)
                nbr[i].add(k)
        nbr[i].discard(j)
        nbr[j] = set()
        for k in nbr[i]:
            dist = _distance(mean_l[k], mi)
            if dist < merge_distance:
                a, b = (i, k) if i < k else (k, i)
                heapq.heappush(heap, (dist, a, b, version[a], version[b]))
    root = np.asarray(parent)
    while True:  # path compression to the final roots
        nxt = root[root]
        if np.array_equal(nxt, root):
            return root
        root = nxt


def agglomeration_fragments(
    emb: np.ndarray, fg: np.ndarray, fg_threshold: float, threshold: float, merge_distance: float,
    grow_threshold: float = 0.5, grow_distance: float = 0.0,
) -> np.ndarray:
    """Strict connectivity fragments merged by mean embedding (:func:`agglomerate`), then
    grown into the foreground above ``grow_threshold`` (:func:`grow`)."""
    labels = agglomerate(connectivity_fragments(emb, fg, fg_threshold, threshold), emb, merge_distance)
    if grow_distance > 0 and grow_threshold < fg_threshold:
        labels = grow(labels, fg, grow_threshold, grow_distance)
    return labels


def agglomeration_fragments_torch(
    emb: torch.Tensor, fg: torch.Tensor, fg_threshold: float, threshold: float, merge_distance: float,
    grow_threshold: float = 0.5, grow_distance: float = 0.0,
) -> torch.Tensor:
    """:func:`agglomeration_fragments` in torch: voxel work on ``emb.device`` over the
    foreground voxels only, the merging on the (small) region graph on the CPU. Merged
    regions are unions of adjacent ones, hence connected: renumbering them by first voxel
    is the reference's :func:`label_components`."""
    from . import torch_kernels as tk

    g = tk.voxel_graph(fg > fg_threshold)
    labels = torch.zeros(fg.shape, dtype=torch.int64, device=fg.device)
    if g.n:
        values = g.gather(emb)
        nodes = tk.connectivity_nodes(values, g, threshold)
        if int(nodes.max()) >= 2:
            size, sums = tk.region_stats(nodes, values)
            root = merge_regions(size, sums, tk.region_adjacency(nodes, g), merge_distance)
            nodes = tk.number_by_first(torch.from_numpy(root).to(nodes.device)[nodes])
        labels = g.dense(nodes)
    if grow_distance > 0 and grow_threshold < fg_threshold:
        labels = tk.grow(labels, fg, grow_threshold, grow_distance)
    return labels


@register
class Agglomeration(EvidenceMethod):
    name = "agglomeration"
    rank = 1

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
        return agglomeration_fragments_torch(*self.tensors(emb, fg), *args).cpu().numpy()
