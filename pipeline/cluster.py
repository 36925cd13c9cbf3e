"""Embeddings of one block -> fragment labels (spatially connected pieces).

Two methods:

``connectivity``
    Connected components of the graph whose nodes are foreground voxels and
    whose edges join face-neighbours with embedding distance below a
    threshold. The rule only looks at pairs of neighbouring voxels, so the
    same rule applied across block faces (:mod:`pipeline.merge`) makes the
    blockwise result identical to the whole-volume result.

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

import numpy as np
import torch
from scipy import sparse
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


def fragments(
    method: str, emb: np.ndarray, fg: np.ndarray, fg_threshold: float, threshold: float, bandwidth: float
) -> np.ndarray:
    if method == "connectivity":
        return connectivity_fragments(emb, fg, fg_threshold, threshold)
    if method == "meanshift":
        return meanshift_fragments(emb, fg, fg_threshold, bandwidth)
    raise ValueError(f"clustering.method must be 'connectivity' or 'meanshift', got {method!r}")
