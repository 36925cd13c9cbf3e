"""``meanshift``: the reference clustering of De Brabandere et al. (2017).

Mean-shift (flat kernel, bin seeding) vectorised in torch (GPU when available),
nearest-centre assignment, then each cluster split into its connected components,
because objects ``step`` apart can share embeddings. Across block faces fragments merge
on evidence (contact and mean-embedding distance within ``bandwidth``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .base import EvidenceMethod, register
from .kernels import label_components

if TYPE_CHECKING:
    import torch


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
    import torch

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
    import torch

    mask = fg > fg_threshold
    clusters = np.zeros(mask.shape, dtype=np.int64)
    if not mask.any():
        return clusters
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pts = torch.from_numpy(np.ascontiguousarray(emb[:, mask].T, dtype=np.float32)).to(dev)
    _, assignment = meanshift(pts, bandwidth)
    clusters[mask] = assignment.cpu().numpy() + 1
    return label_components(clusters)


@register
class MeanShift(EvidenceMethod):
    name = "meanshift"
    rank = 2

    def default_max_distance(self) -> float:
        return self.params.bandwidth

    def fragments(self, emb: np.ndarray, fg: np.ndarray) -> np.ndarray:
        device = None if self.backend == "numpy" else str(self.torch_device)
        return meanshift_fragments(emb, fg, self.params.foreground_threshold, self.params.bandwidth, device)
