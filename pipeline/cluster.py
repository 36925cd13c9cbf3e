"""Embeddings of one block -> fragment labels (spatially connected pieces).

Three methods:

``connectivity``
    Connected components of the graph whose nodes are foreground voxels and
    whose edges join face-neighbours with embedding distance below a
    threshold. The rule only looks at pairs of neighbouring voxels, so the
    same rule applied across block faces (:mod:`pipeline.merge`) makes the
    blockwise result identical to the whole-volume result.

``agglomeration``
    Over-segment with the connectivity rule at a strict neighbour threshold
    (fragments that almost never span two objects), then merge adjacent regions
    in order of the distance of their mean embeddings (size-weighted, updated
    after every merge) while it is below ``merge_distance``. Neighbour-to-
    neighbour distances change smoothly across the border of two touching
    objects, their mean embeddings do not: the discriminative loss pushes them
    ``2 * delta_d`` apart. Then unlabelled voxels with foreground above
    ``grow_threshold`` within ``grow_distance`` voxels of a label take the
    nearest label (cores found at a strict foreground threshold get their
    border back). Not exact blockwise: across block faces fragments merge by
    the same mean-distance rule (:mod:`pipeline.merge`).

``meanshift``
    The reference clustering of De Brabandere et al.: mean-shift (flat kernel,
    bin seeding) vectorised in torch (GPU when available), nearest-centre
    assignment, then each cluster split into its connected components,
    because objects ``step`` apart can share embeddings.

Labels are ``int64`` numbered ``1..k`` in raster order of their first voxel;
0 is background.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from scipy import ndimage, sparse
from scipy.sparse.csgraph import connected_components


def _components(mask: np.ndarray, joined: Callable[[tuple[slice, ...], tuple[slice, ...]], np.ndarray]) -> np.ndarray:
    """Components of ``mask`` voxels linked along faces where ``joined(a, b)`` is true.

    ``joined`` gets the slices of the lower and upper voxel of every face pair
    along one axis and returns a boolean array of that shape.
    """
    shape = mask.shape
    labels = np.zeros(shape, dtype=np.int64)
    n = int(mask.sum())
    if n == 0:
        return labels
    node = np.full(shape, -1, dtype=np.int64)
    node[mask] = np.arange(n)
    src, dst = [], []
    for ax in range(mask.ndim):
        a = tuple(slice(0, -1) if i == ax else slice(None) for i in range(mask.ndim))
        b = tuple(slice(1, None) if i == ax else slice(None) for i in range(mask.ndim))
        link = mask[a] & mask[b]
        if link.any():
            link &= joined(a, b)
            src.append(node[a][link])
            dst.append(node[b][link])
    s = np.concatenate(src) if src else np.zeros(0, np.int64)
    d = np.concatenate(dst) if dst else np.zeros(0, np.int64)
    graph = sparse.coo_matrix((np.ones(s.size, dtype=np.int8), (s, d)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    # renumber components by first voxel in raster order (deterministic)
    _, first = np.unique(comp, return_index=True)
    order = np.argsort(np.argsort(first))
    labels[mask] = order[comp] + 1
    return labels


def embedding_close(emb: np.ndarray, threshold: float) -> Callable[[tuple[slice, ...], tuple[slice, ...]], np.ndarray]:
    """Edge rule: squared embedding distance below ``threshold**2`` (float64 sums)."""
    t2 = float(threshold) ** 2

    def joined(a: tuple[slice, ...], b: tuple[slice, ...]) -> np.ndarray:
        diff = emb[(slice(None), *a)].astype(np.float64) - emb[(slice(None), *b)]
        return np.einsum("e...,e...->...", diff, diff) < t2

    return joined


def pair_close(ea: np.ndarray, eb: np.ndarray, threshold: float) -> np.ndarray:
    """The same rule as :func:`embedding_close` for explicit voxel pairs ``(E, ...)``."""
    diff = ea.astype(np.float64) - eb
    return np.einsum("e...,e...->...", diff, diff) < float(threshold) ** 2


def connectivity_fragments(emb: np.ndarray, fg: np.ndarray, fg_threshold: float, threshold: float) -> np.ndarray:
    """``emb``: ``(E, *S)``; ``fg``: foreground probability ``(*S)``."""
    return _components(fg > fg_threshold, embedding_close(emb, threshold))


def label_components(labels: np.ndarray) -> np.ndarray:
    """Split every label of ``labels`` (0 = background) into face-connected pieces."""
    return _components(labels > 0, lambda a, b: labels[a] == labels[b])


def region_adjacency(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Face-adjacent label pairs ``(m, 2)`` (``a < b``, both > 0) and their contact counts."""
    found = []
    for ax in range(labels.ndim):
        a = tuple(slice(0, -1) if i == ax else slice(None) for i in range(labels.ndim))
        b = tuple(slice(1, None) if i == ax else slice(None) for i in range(labels.ndim))
        la, lb = labels[a], labels[b]
        k = (la != lb) & (la > 0) & (lb > 0)
        found.append(np.sort(np.stack([la[k], lb[k]], axis=1), axis=1))
    pairs = np.concatenate(found)
    if not len(pairs):
        return np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    uniq, contact = np.unique(pairs, axis=0, return_counts=True)
    return uniq.astype(np.int64), contact.astype(np.int64)


def agglomerate(labels: np.ndarray, emb: np.ndarray, merge_distance: float) -> np.ndarray:
    """Merge adjacent regions of ``labels`` (1..n, 0 = background) closest mean embeddings
    first (means size-weighted and updated after each merge) while the distance is below
    ``merge_distance``. Returns labels numbered ``1..k`` in raster order of first voxel."""
    import heapq

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


def meanshift(
    points: torch.Tensor,
    bandwidth: float,
    max_iter: int = 50,
    max_seeds: int = 512,
    chunk: int = 1 << 16,
    max_points: int = 1 << 15,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat-kernel mean-shift of ``points`` ``(N, E)``. Returns ``(centres, assignment)``.

    Seeds are the occupied cells of a grid of ``bandwidth`` (bin seeding);
    converged seeds closer than ``bandwidth`` are merged, denser first; each
    point goes to its nearest centre. Modes are sought on at most ``max_points``
    points (an even, deterministic subsample); every point is then assigned.
    """
    if points.shape[0] == 0:
        return points.new_zeros((0, points.shape[1])), torch.zeros(0, dtype=torch.long, device=points.device)
    everything = points
    if points.shape[0] > max_points:
        points = points[:: -(-points.shape[0] // max_points)]
    bins, counts = torch.unique(torch.round(points / bandwidth), dim=0, return_counts=True)
    if bins.shape[0] > max_seeds:  # keep the most populated bins
        bins = bins[torch.argsort(counts, descending=True)[:max_seeds]]
    seeds = bins * bandwidth
    bw2 = bandwidth**2
    density = torch.zeros(seeds.shape[0], device=points.device, dtype=points.dtype)
    active = torch.ones(seeds.shape[0], dtype=torch.bool, device=points.device)
    for _ in range(max_iter):  # only seeds that still move are shifted
        idx = torch.nonzero(active).flatten()
        if idx.numel() == 0:
            break
        s = seeds[idx]
        total = torch.zeros_like(s)
        dens = torch.zeros(idx.numel(), device=points.device, dtype=points.dtype)
        for i in range(0, points.shape[0], chunk):
            p = points[i : i + chunk]
            w = (torch.cdist(s, p) ** 2 <= bw2).to(points.dtype)  # (S, n)
            total += w @ p
            dens += w.sum(1)
        new = torch.where(dens[:, None] > 0, total / dens.clamp(min=1)[:, None], s)
        moved = torch.linalg.vector_norm(new - s, dim=1)
        seeds[idx] = new
        density[idx] = dens
        active[idx] = moved >= 1e-3 * bandwidth
    order = torch.argsort(density, descending=True)
    keep: list[int] = []
    for i in order.tolist():
        if not keep or float(torch.cdist(seeds[i : i + 1], seeds[keep]).min()) >= bandwidth:
            keep.append(i)
    centres = seeds[keep]
    assignment = torch.empty(everything.shape[0], dtype=torch.long, device=points.device)
    for i in range(0, everything.shape[0], chunk):
        assignment[i : i + chunk] = torch.cdist(everything[i : i + chunk], centres).argmin(1)
    return centres, assignment


def meanshift_fragments(
    emb: np.ndarray, fg: np.ndarray, fg_threshold: float, bandwidth: float, device: str | None = None
) -> np.ndarray:
    """Mean-shift clusters of foreground embeddings, split into connected pieces."""
    mask = fg > fg_threshold
    clusters = np.zeros(mask.shape, dtype=np.int64)
    if not mask.any():
        return clusters
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pts = torch.from_numpy(np.ascontiguousarray(emb[:, mask].T, dtype=np.float32)).to(dev)
    _, assignment = meanshift(pts, bandwidth)
    clusters[mask] = assignment.cpu().numpy() + 1
    return label_components(clusters)


METHODS = ("connectivity", "agglomeration", "meanshift")


@dataclass(frozen=True)
class ClusteringParams:
    """Resolved clustering parameters of one run (see :func:`pipeline.run.clustering_params`)."""

    method: str = "connectivity"
    foreground_threshold: float = 0.5
    threshold: float = 1.5  # connectivity/agglomeration: neighbour embedding distance
    merge_distance: float = 2.0  # agglomeration: distance of adjacent regions' means
    grow_threshold: float = 0.5  # agglomeration: foreground of the voxels cores grow into
    grow_distance: float = 3.0  # agglomeration: how far (voxels); 0 = no growth
    bandwidth: float = 1.0  # meanshift
    min_size: int = 0  # objects smaller than this are removed after merging

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"clustering.method must be one of {', '.join(METHODS)}, got {self.method!r}")

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ClusteringParams:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def fragments(emb: np.ndarray, fg: np.ndarray, p: ClusteringParams) -> np.ndarray:
    """Block-local fragments of one block's embeddings ``(E, *S)`` and foreground ``(*S)``."""
    if p.method == "connectivity":
        return connectivity_fragments(emb, fg, p.foreground_threshold, p.threshold)
    if p.method == "agglomeration":
        return agglomeration_fragments(emb, fg, p.foreground_threshold, p.threshold, p.merge_distance,
                                       p.grow_threshold, p.grow_distance)
    return meanshift_fragments(emb, fg, p.foreground_threshold, p.bandwidth)


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Labels with fewer than ``min_size`` voxels set to 0 (for whole objects only)."""
    if not min_size:
        return labels
    return np.where(np.bincount(labels.ravel())[labels] >= min_size, labels, 0)
