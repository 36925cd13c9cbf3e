"""Compiled (numba) voxel kernels of the clustering: one pass over a block each, where the numpy
reference (:mod:`.kernels`) makes a full-block temporary per axis and step. Same results, bit for
bit: the same comparisons in the same dtypes, float64 sums in raster order (as ``bincount``), and
labels numbered by their first voxel in raster order. Arrays are 3D (2D blocks get a leading axis
of 1, which adds no neighbour pairs); see :mod:`.compiled` for why numba.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .compiled import _find
from .kernels import ball_shells


def as_3d(a: np.ndarray, spatial: int) -> np.ndarray:
    """A view of ``a`` whose last ``spatial`` axes are made 3 by leading axes of 1."""
    if spatial > 3:
        raise ValueError(f"compiled clustering kernels take 2D or 3D blocks, got {spatial} spatial axes")
    lead = a.shape[: a.ndim - spatial]
    return a.reshape(*lead, *(1,) * (3 - spatial), *a.shape[a.ndim - spatial:])


@njit(cache=True, nogil=True)
def _close(emb, z0, y0, x0, z1, y1, x1, thr2) -> bool:
    sq = 0.0
    for e in range(emb.shape[0]):
        d = np.float64(emb[e, z0, y0, x0]) - np.float64(emb[e, z1, y1, x1])
        sq += d * d
    return sq < thr2


@njit(cache=True, nogil=True)
def _union(parent, a, b) -> None:
    ra, rb = _find(parent, a), _find(parent, b)
    if ra < rb:
        parent[rb] = ra
    elif rb < ra:
        parent[ra] = rb


@njit(cache=True, nogil=True)
def _join(emb, fg, fg_threshold, thr2, parent) -> None:
    """Union-find over the voxels with ``fg > fg_threshold`` and the embedding rule on face
    pairs; a component's root is its smallest raster index."""
    _, nz, ny, nx = emb.shape
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                if not fg[z, y, x] > fg_threshold:
                    continue
                v = (z * ny + y) * nx + x
                parent[v] = v
                if x and fg[z, y, x - 1] > fg_threshold and _close(emb, z, y, x, z, y, x - 1, thr2):
                    _union(parent, v, v - 1)
                if y and fg[z, y - 1, x] > fg_threshold and _close(emb, z, y, x, z, y - 1, x, thr2):
                    _union(parent, v, v - nx)
                if z and fg[z - 1, y, x] > fg_threshold and _close(emb, z, y, x, z - 1, y, x, thr2):
                    _union(parent, v, v - nx * ny)


def _parent(n: int) -> np.ndarray:
    return np.empty(n, np.int32 if n < 2**31 else np.int64)


def embedding_components(emb: np.ndarray, fg: np.ndarray, fg_threshold: float, thr2: float) -> tuple[np.ndarray, int]:
    """:func:`.kernels.connectivity_fragments`: voxels with ``fg > fg_threshold`` joined to face
    neighbours whose squared embedding distance (float64) is below ``thr2``; labels ``1..k`` by
    first voxel. ``emb`` ``(E, Z, Y, X)``."""
    parent = _parent(fg.size)
    _join(emb, fg, fg_threshold, thr2, parent)
    labels = np.zeros(fg.shape, np.int64)  # numpy's allocation: huge pages (numba's faults 4 KiB pages)
    return labels, _number(fg, fg_threshold, parent, labels.reshape(-1))


@njit(cache=True, nogil=True)
def _number(fg, fg_threshold, parent, labels):
    nz, ny, nx = fg.shape
    k = 0
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                if fg[z, y, x] > fg_threshold:
                    v = (z * ny + y) * nx + x
                    r = _find(parent, v)
                    if r == v:
                        k += 1
                        labels[v] = k
                    else:
                        labels[v] = labels[r]
    return k


def region_graph(emb: np.ndarray, fg: np.ndarray, fg_threshold: float, thr2: float) -> tuple:
    """:func:`embedding_components` with what the agglomeration needs of
    its regions, from two more passes: voxel counts ``(k + 1,)``, float64 embedding sums ``(k + 1, E)`` (raster order,
    as ``bincount``) and the face-adjacent pairs as sorted unique keys ``a * (k + 1) + b``
    (:func:`.kernels.region_adjacency`)."""
    parent = _parent(fg.size)
    _join(emb, fg, fg_threshold, thr2, parent)
    labels = np.zeros(fg.shape, np.int64)
    k = _number(fg, fg_threshold, parent, labels.reshape(-1))
    size, sums, keys = _graph(emb, labels, k)
    return labels, k, size, sums, np.unique(keys)


@njit(cache=True, nogil=True)
def _graph(emb, labels, k):
    """Counts, float64 embedding sums (raster order) and face-adjacent pair keys of ``labels``."""
    n_e, nz, ny, nx = emb.shape
    size = np.zeros(k + 1, np.int64)
    sums = np.zeros((k + 1, n_e))
    keys = np.empty(1024, np.int64)
    m = 0
    base = k + 1
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                a = labels[z, y, x]
                if not a:
                    continue
                size[a] += 1
                for e in range(n_e):
                    sums[a, e] += np.float64(emb[e, z, y, x])
                for t in range(3):
                    if t == 0:
                        if not x:
                            continue
                        b = labels[z, y, x - 1]
                    elif t == 1:
                        if not y:
                            continue
                        b = labels[z, y - 1, x]
                    else:
                        if not z:
                            continue
                        b = labels[z - 1, y, x]
                    if b and b != a:
                        if m == len(keys):
                            grown = np.empty(2 * m, np.int64)
                            grown[:m] = keys
                            keys = grown
                        keys[m] = min(a, b) * base + max(a, b)
                        m += 1
    return size, sums, keys[:m]


@njit(cache=True, nogil=True)
def label_sums(emb, labels, k, background):
    """Voxel count ``(k + 1,)`` and float64 embedding sums ``(k + 1, E)`` of labels ``0..k``,
    summed in raster order (``bincount``'s); label 0 too when ``background``."""
    n_e, nz, ny, nx = emb.shape
    size = np.zeros(k + 1, np.int64)
    sums = np.zeros((k + 1, n_e))
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                lab = labels[z, y, x]
                if lab or background:
                    size[lab] += 1
                    for e in range(n_e):
                        sums[lab, e] += np.float64(emb[e, z, y, x])
    return size, sums


@njit(cache=True, nogil=True)
def _grow(labels, fg, threshold, offsets, shell_end, out):
    nz, ny, nx = labels.shape
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                if labels[z, y, x] or not fg[z, y, x] > threshold:
                    continue
                lo = 0
                for hi in shell_end:
                    best = 0
                    for t in range(lo, hi):
                        zz, yy, xx = z + offsets[t, 0], y + offsets[t, 1], x + offsets[t, 2]
                        if 0 <= zz < nz and 0 <= yy < ny and 0 <= xx < nx:
                            lab = labels[zz, yy, xx]
                            if lab and (best == 0 or lab < best):
                                best = lab
                    if best:
                        out[z, y, x] = best
                        break
                    lo = hi


def grow_labels(labels: np.ndarray, fg: np.ndarray, threshold: float, offsets: np.ndarray,
                shell_end: np.ndarray) -> np.ndarray:
    """:func:`.kernels.grow`: unlabelled voxels with ``fg > threshold`` take the smallest label of
    the nearest shell of ``offsets`` ``(m, 3)`` (shells end at ``shell_end``) that holds one."""
    out = labels.copy()
    _grow(labels, fg, threshold, offsets, shell_end, out)
    return out


def shells_3d(spatial: int, distance: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`.kernels.ball_shells` of ``spatial`` axes as 3D offsets ``(m, 3)`` and shell ends."""
    shells = ball_shells(spatial, distance)
    if not shells:
        return np.zeros((0, 3), np.int64), np.zeros(0, np.int64)
    offsets = np.concatenate([o for _, o in shells]).astype(np.int64)
    offsets = np.concatenate([np.zeros((len(offsets), 3 - spatial), np.int64), offsets], axis=1)
    return offsets, np.cumsum([len(o) for _, o in shells]).astype(np.int64)


def same_type(value: float, like: np.ndarray) -> float | np.floating:
    """``value`` in ``like``'s float dtype: numpy compares a float32 array with a Python float in
    float32, and the kernels must compare alike."""
    return like.dtype.type(value) if like.dtype.kind == "f" else float(value)


def fragment_means(emb: np.ndarray, local: np.ndarray) -> np.ndarray:
    """:func:`.kernels.fragment_means` (``(E, k + 1)`` mean embedding of labels ``0..k``) in one pass."""
    k = int(local.max()) if local.size else 0
    size, sums = label_sums(as_3d(emb, local.ndim), as_3d(local, local.ndim), k, True)
    return (sums / np.maximum(size, 1)[:, None]).T
