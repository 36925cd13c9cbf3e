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
from typing import Any

import numpy as np
from scipy import ndimage

from .base import EvidenceMethod, register
from .kernels import connectivity_fragments, label_components, region_adjacency


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
    nbr: list[set[int]] = [set() for _ in range(n + 1)]
    for i, j in pairs.tolist():
        nbr[i].add(j)
        nbr[j].add(i)
    mean = sums / np.maximum(size, 1)[:, None]
    version = [0] * (n + 1)
    d = np.linalg.norm(mean[pairs[:, 0]] - mean[pairs[:, 1]], axis=1) if len(pairs) else np.zeros(0)
    keep = d < merge_distance
    m = int(keep.sum())
    heap = list(zip(d[keep].tolist(), pairs[keep, 0].tolist(), pairs[keep, 1].tolist(), [0] * m, [0] * m))
    heapq.heapify(heap)
    parent = list(range(n + 1))
    while heap:
        _, i, j, vi, vj = heapq.heappop(heap)
        if version[i] != vi or version[j] != vj or parent[i] != i or parent[j] != j:
            continue  # stale: one side has merged since
        if len(nbr[i]) < len(nbr[j]):
            i, j = j, i
        parent[j] = i  # j joins i
        sums[i] += sums[j]
        size[i] += size[j]
        mean[i] = sums[i] / size[i]
        version[i] += 1
        for k in nbr[j]:
            nbr[k].discard(j)
            if k != i:
                nbr[k].add(i)
                nbr[i].add(k)
        nbr[i].discard(j)
        nbr[j] = set()
        if not nbr[i]:
            continue
        ks = np.fromiter(nbr[i], dtype=np.int64, count=len(nbr[i]))
        dk = np.sqrt(((mean[ks] - mean[i]) ** 2).sum(axis=1))
        close = dk < merge_distance
        for dist, k in zip(dk[close].tolist(), ks[close].tolist()):
            a, b = (i, k) if i < k else (k, i)
            heapq.heappush(heap, (dist, a, b, version[a], version[b]))
    root = np.asarray(parent)
    while True:  # path compression to the final roots
        nxt = root[root]
        if np.array_equal(nxt, root):
            break
        root = nxt
    return label_components(root[labels])


def grow(labels: np.ndarray, fg: np.ndarray, threshold: float, distance: float) -> np.ndarray:
    """Unlabelled voxels with ``fg > threshold`` within ``distance`` voxels (Euclidean) of a
    label take the label of the nearest labelled voxel."""
    free = (fg > threshold) & (labels == 0)
    if distance <= 0 or not free.any() or not labels.any():
        return labels
    indices = np.empty((labels.ndim, *labels.shape), dtype=np.int32)
    dist = ndimage.distance_transform_edt(labels == 0, return_indices=True, indices=indices)
    take = free & (dist <= distance)
    out = labels.copy()
    out[take] = labels[tuple(i[take] for i in indices)]
    return out


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
        return agglomeration_fragments(emb, fg, p.foreground_threshold, p.threshold, p.merge_distance,
                                       p.grow_threshold, p.grow_distance)
