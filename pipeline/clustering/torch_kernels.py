"""The clustering kernels in torch: the same results as the numpy reference (:mod:`.kernels`,
:mod:`.agglomeration`), on the GPU when there is one and on CPU threads otherwise.

Work is done on the foreground voxels only (a :class:`VoxelGraph`: their raster indices
and the face-neighbour pairs among them), which in nuclei volumes are a fifth of a block:

* connected components: min-label hooking with full pointer jumping (every round at
  least halves the depth of each tree); a component's label is its smallest raster
  index, so numbering components by it gives the reference's raster order;
* the voxel-pair embedding rule, region sizes and mean embeddings (scatter-add in
  float64, in raster order like the reference's bincount), region adjacency;
* growth into the foreground: nearest label by Euclidean distance (ties: the smallest
  label) from shells of offsets, gathered from a padded copy of the labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .kernels import ball_shells

_CHUNK = 16384  # voxel pairs per step of the embedding rule


@dataclass(frozen=True)
class VoxelGraph:
    """The voxels of ``mask`` (nodes ``0..n-1`` in raster order) and their face-neighbour pairs."""

    shape: tuple[int, ...]
    index: torch.Tensor  # (n,) raster index of every node
    u: torch.Tensor  # (m,) lower node of every face-neighbour pair
    v: torch.Tensor  # (m,) upper node

    @property
    def n(self) -> int:
        return int(self.index.numel())

    def dense(self, node_labels: torch.Tensor) -> torch.Tensor:
        """Node values scattered into a zero volume of ``shape``."""
        out = torch.zeros(int(np.prod(self.shape)), dtype=node_labels.dtype, device=node_labels.device)
        out[self.index] = node_labels
        return out.view(self.shape)

    def gather(self, volume: torch.Tensor) -> torch.Tensor:
        """``(n, C)`` values of a ``(C, *shape)`` volume at the nodes (contiguous)."""
        return volume.reshape(volume.shape[0], -1).index_select(1, self.index).T.contiguous()


def voxel_graph(mask: torch.Tensor) -> VoxelGraph:
    """A few dense passes over ``mask`` (per axis: the lower voxels of the face pairs inside
    it), the rest proportional to the foreground. Pairs by axis, each in raster order."""
    flat = mask.reshape(-1)
    index = torch.nonzero(flat).flatten()
    dtype = torch.int32 if flat.numel() < 2**31 else torch.int64
    node = torch.cumsum(flat, 0, dtype=dtype) - 1  # the node of every voxel of mask
    us, vs = [], []
    pair = torch.zeros_like(mask)  # per axis: the voxel and its upper neighbour are in mask
    for axis in range(mask.ndim):
        lo = tuple(slice(0, -1) if i == axis else slice(None) for i in range(mask.ndim))
        hi = tuple(slice(1, None) if i == axis else slice(None) for i in range(mask.ndim))
        pair.zero_()
        pair[lo] = mask[lo] & mask[hi]
        u = torch.nonzero(pair.reshape(-1)[index]).flatten()
        stride = int(np.prod(mask.shape[axis + 1:]))
        us.append(u)
        vs.append(u + 1 if stride == 1 else node[index[u] + stride].long())  # raster order: the next node
    return VoxelGraph(tuple(mask.shape), index, torch.cat(us), torch.cat(vs))


def roots(n: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """For every node ``0..n-1``, the smallest node of its component (edges ``u``-``v``)."""
    lab = torch.arange(n, device=u.device)
    lu, lv = u, v  # the labels at the ends of the live edges
    while lu.numel():
        lab.scatter_reduce_(0, torch.maximum(lu, lv), torch.minimum(lu, lv), reduce="amin")  # hook larger root
        while True:  # pointer jumping until every node points at a root
            nxt = lab.index_select(0, lab)
            if torch.equal(nxt, lab):
                break
            lab = nxt
        lu, lv = lab.index_select(0, u), lab.index_select(0, v)
        u, v, lu, lv = select(lu != lv, u, v, lu, lv)
    return lab


def select(mask: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``t[mask]`` of every tensor (one nonzero, then gathers: faster than masking each)."""
    at = torch.nonzero(mask).flatten()
    return tuple(t.index_select(0, at) for t in tensors)


def close(values: torch.Tensor, g: VoxelGraph, threshold: float) -> torch.Tensor:
    """Pairs of ``g`` whose node values ``(n, E)`` are closer than ``threshold`` (float64)."""
    v, m = values.double(), g.u.numel()
    out = torch.empty(m, dtype=torch.bool, device=v.device)
    a = torch.empty((min(m, _CHUNK), v.shape[1]), dtype=v.dtype, device=v.device)
    b, sq = torch.empty_like(a), torch.empty(len(a), dtype=v.dtype, device=v.device)
    for lo in range(0, m, _CHUNK):  # in chunks that stay in cache
        k = min(m - lo, _CHUNK)
        torch.index_select(v, 0, g.u[lo:lo + k], out=a[:k])
        torch.index_select(v, 0, g.v[lo:lo + k], out=b[:k])
        diff = a[:k].sub_(b[:k])
        torch.sum(diff.mul_(diff), 1, out=sq[:k])
        torch.lt(sq[:k], float(threshold) ** 2, out=out[lo:lo + k])
    return out


def connectivity_nodes(values: torch.Tensor, g: VoxelGraph, threshold: float) -> torch.Tensor:
    """Node labels ``1..k`` of the connectivity rule (see :func:`.kernels.connectivity_fragments`)
    from the embeddings of the nodes ``(n, E)`` (:meth:`VoxelGraph.gather`)."""
    return number_roots(roots(g.n, *select(close(values, g, threshold), g.u, g.v)))


def number_roots(root: torch.Tensor) -> torch.Tensor:
    """Labels ``1..k`` for node groups named by their smallest node (:func:`roots`), ordered
    by that node (the raster order of first voxels): the number of roots up to a group's own."""
    rank = torch.cumsum(root == torch.arange(root.numel(), device=root.device), 0)
    return rank[root]


def connectivity_fragments(emb: torch.Tensor, fg: torch.Tensor, fg_threshold: float, threshold: float) -> torch.Tensor:
    g = voxel_graph(fg > fg_threshold)
    if g.n == 0:
        return torch.zeros(fg.shape, dtype=torch.int64, device=fg.device)
    return g.dense(connectivity_nodes(g.gather(emb), g, threshold))


def region_stats(labels: torch.Tensor, values: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(size (k + 1,), sums (k + 1, E))`` float64 of node labels ``1..k`` (row 0 unused)."""
    k = int(labels.max())
    size = torch.bincount(labels, minlength=k + 1).double()
    sums = torch.zeros((k + 1, values.shape[1]), dtype=torch.float64, device=values.device)
    sums.index_add_(0, labels, values.double())
    return size.cpu().numpy(), sums.cpu().numpy()


def region_adjacency(labels: torch.Tensor, g: VoxelGraph, cut: torch.Tensor | None = None) -> np.ndarray:
    """Adjacent label pairs ``(m, 2)``, ``a < b``, sorted, from the pairs of ``g`` (only those
    where ``cut`` is true when given: the others are known to join equal labels)."""
    u, v = (g.u, g.v) if cut is None else select(cut, g.u, g.v)
    la, lb = labels.index_select(0, u), labels.index_select(0, v)
    n = int(labels.max()) + 1
    keys = torch.unique((torch.minimum(la, lb) * n + torch.maximum(la, lb))[la != lb])
    return torch.stack([keys // n, keys % n], dim=1).cpu().numpy()


def grow(labels: torch.Tensor, fg: torch.Tensor, threshold: float, distance: float) -> torch.Tensor:
    """Unlabelled voxels with ``fg > threshold`` take the label of the nearest labelled
    voxel within ``distance`` (Euclidean; equally near labels: the smallest)."""
    free = torch.nonzero(((fg > threshold) & (labels == 0)).reshape(-1)).flatten()
    if distance <= 0 or free.numel() == 0:
        return labels
    r = int(np.floor(distance))
    padded = torch.nn.functional.pad(labels, [r, r] * labels.ndim)
    pflat = padded.reshape(-1)
    pstrides = [int(np.prod(padded.shape[i + 1:])) for i in range(labels.ndim)]
    base = torch.full_like(free, r * sum(pstrides))  # raster index in padded of every free voxel
    stride = 1
    for axis in reversed(range(labels.ndim)):
        base += (free // stride % labels.shape[axis]) * pstrides[axis]
        stride *= labels.shape[axis]
    best = torch.zeros_like(base)
    todo = torch.arange(base.numel(), device=labels.device)
    big = torch.iinfo(torch.int64).max
    for _, offsets in ball_shells(labels.ndim, distance):
        step = torch.from_numpy(offsets @ np.asarray(pstrides)).to(labels.device)
        shell = _smallest_label(pflat, base if todo.numel() == base.numel() else base[todo], step)
        hit = shell < big
        best[todo[hit]] = shell[hit]
        todo = todo[~hit]
        if todo.numel() == 0:
            break
    out = labels.clone(memory_format=torch.contiguous_format)
    out.view(-1)[free] = best
    return out


def _smallest_label(flat: torch.Tensor, base: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """Per ``base`` index: the smallest label > 0 of ``flat`` at ``base + step`` (int64 max: none)."""
    near = flat[step[:, None] + base[None, :]]  # (offsets, voxels): a row per offset
    near.masked_fill_(near <= 0, torch.iinfo(torch.int64).max)
    out = near[0].clone()
    for row in near[1:]:
        torch.minimum(out, row, out=out)
    return out
