"""Compiled (numba) kernels of the clustering, each the exact twin of a numpy/Python reference
kept beside it (tests compare them on random inputs).

numba, not a C extension or a new package: it ships manylinux wheels on the registry, compiles
the same Python-syntax loop the reference is written in (one reading for both), and releases
the GIL (``nogil``), so a Dask worker's threads cluster side by side. Kernels are compiled on
first use and cached on disk (``cache=True``: next to this module, or numba's per-user cache
where the package is read-only), so a worker process pays the compilation once per install.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _find(parent: np.ndarray, x: int) -> int:
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


@njit(cache=True, nogil=True)
def _less(hd, ha, hb, hva, hvb, x, y) -> bool:
    """Heap entry ``x`` before ``y``: Python's tuple order on ``(distance, a, b, va, vb)``."""
    if hd[x] != hd[y]:
        return hd[x] < hd[y]
    if ha[x] != ha[y]:
        return ha[x] < ha[y]
    if hb[x] != hb[y]:
        return hb[x] < hb[y]
    if hva[x] != hva[y]:
        return hva[x] < hva[y]
    return hvb[x] < hvb[y]


@njit(cache=True, nogil=True)
def _swap(hd, ha, hb, hva, hvb, x, y) -> None:
    hd[x], hd[y] = hd[y], hd[x]
    ha[x], ha[y] = ha[y], ha[x]
    hb[x], hb[y] = hb[y], hb[x]
    hva[x], hva[y] = hva[y], hva[x]
    hvb[x], hvb[y] = hvb[y], hvb[x]


@njit(cache=True, nogil=True)
def _sift_down(hd, ha, hb, hva, hvb, n, x) -> None:
    while True:
        c = 2 * x + 1
        if c >= n:
            return
        if c + 1 < n and _less(hd, ha, hb, hva, hvb, c + 1, c):
            c += 1
        if not _less(hd, ha, hb, hva, hvb, c, x):
            return
        _swap(hd, ha, hb, hva, hvb, x, c)
        x = c


@njit(cache=True, nogil=True)
def _sift_up(hd, ha, hb, hva, hvb, x) -> None:
    while x > 0:
        p = (x - 1) // 2
        if not _less(hd, ha, hb, hva, hvb, x, p):
            return
        _swap(hd, ha, hb, hva, hvb, x, p)
        x = p


@njit(cache=True, nogil=True)
def _grown(a: np.ndarray, need: int) -> np.ndarray:
    if need <= len(a):
        return a
    out = np.empty(max(need, 2 * len(a)), a.dtype)
    out[: len(a)] = a
    return out


@njit(cache=True, nogil=True)
def _compact(adj, start, length, parent, mark, stamp, i) -> int:
    """Region ``i``'s neighbour list resolved to current regions, without repeats or ``i``
    (what the reference's neighbour set holds); its new length."""
    s, m = start[i], 0
    mark[i] = stamp
    for t in range(length[i]):
        k = _find(parent, adj[s + t])
        if mark[k] != stamp:
            mark[k] = stamp
            adj[s + m] = k
            m += 1
    length[i] = m
    return m


@njit(cache=True, nogil=True)
def merge_loop(
    size: np.ndarray, sums: np.ndarray, pa: np.ndarray, pb: np.ndarray, d: np.ndarray, merge_distance: float,
) -> np.ndarray:
    """:func:`~pipeline.clustering.agglomeration.merge_regions_reference`'s merging, compiled:
    ``size`` ``(n + 1,)``, ``sums`` ``(n + 1, E)`` float64, adjacent pairs ``pa < pb`` and their
    mean distances ``d``. Returns every region's final region ``(n + 1,)``."""
    n1, e_dim = sums.shape
    size, sums = size.copy(), sums.copy()
    mean = np.empty_like(sums)
    for r in range(n1):
        for e in range(e_dim):
            mean[r, e] = sums[r, e] / max(size[r], 1.0)
    # neighbour lists in one pool, a region's list rewritten at its end when it grows
    length = np.zeros(n1, np.int64)
    for t in range(len(pa)):
        length[pa[t]] += 1
        length[pb[t]] += 1
    start = np.zeros(n1, np.int64)
    for r in range(1, n1):
        start[r] = start[r - 1] + length[r - 1]
    top = start[n1 - 1] + length[n1 - 1] if n1 else 0
    adj = np.empty(max(2 * top, 16), np.int64)
    fill = start.copy()
    for t in range(len(pa)):
        adj[fill[pa[t]]] = pb[t]
        fill[pa[t]] += 1
        adj[fill[pb[t]]] = pa[t]
        fill[pb[t]] += 1
    parent = np.arange(n1)
    version = np.zeros(n1, np.int64)
    mark = np.full(n1, -1, np.int64)
    stamp = 0
    # the heap of (distance, a, b, version a, version b), as the reference's heapq
    cap = max(2 * len(pa), 16)
    hd, ha, hb = np.empty(cap), np.empty(cap, np.int64), np.empty(cap, np.int64)
    hva, hvb = np.empty(cap, np.int64), np.empty(cap, np.int64)
    h = 0
    for t in range(len(pa)):
        if d[t] < merge_distance:
            hd[h], ha[h], hb[h], hva[h], hvb[h] = d[t], pa[t], pb[t], 0, 0
            h += 1
    for x in range(h // 2 - 1, -1, -1):
        _sift_down(hd, ha, hb, hva, hvb, h, x)
    while h:
        i, j, vi, vj = ha[0], hb[0], hva[0], hvb[0]
        h -= 1
        _swap(hd, ha, hb, hva, hvb, 0, h)
        _sift_down(hd, ha, hb, hva, hvb, h, 0)
        if version[i] != vi or version[j] != vj:
            continue  # stale: one side has merged since
        stamp += 1
        ni = _compact(adj, start, length, parent, mark, stamp, i)
        stamp += 1
        nj = _compact(adj, start, length, parent, mark, stamp, j)
        if ni < nj:
            i, j = j, i
        parent[j] = i  # j joins i
        version[j] = -1
        version[i] += 1
        vi = version[i]
        size[i] = size[i] + size[j]
        for e in range(e_dim):
            sums[i, e] = sums[i, e] + sums[j, e]
            mean[i, e] = sums[i, e] / size[i]
        # i's neighbours: the union of both lists, without i and j, written at the pool's end
        adj = _grown(adj, top + ni + nj)
        stamp += 1
        mark[i] = stamp
        mark[j] = stamp
        m = 0
        for r in (i, j):
            for t in range(start[r], start[r] + length[r]):
                k = adj[t]
                if mark[k] != stamp:
                    mark[k] = stamp
                    adj[top + m] = k
                    m += 1
        start[i], length[i], length[j] = top, m, 0
        top += m
        if h + m > len(hd):
            hd, ha, hb = _grown(hd, h + m), _grown(ha, h + m), _grown(hb, h + m)
            hva, hvb = _grown(hva, h + m), _grown(hvb, h + m)
        for t in range(start[i], start[i] + m):
            k = adj[t]
            sq = 0.0
            for e in range(e_dim):
                x = mean[k, e] - mean[i, e]
                sq += x * x
            dist = np.sqrt(sq)
            if dist < merge_distance:
                a, b, va, vb = (i, k, vi, version[k]) if i < k else (k, i, version[k], vi)
                hd[h], ha[h], hb[h], hva[h], hvb[h] = dist, a, b, va, vb
                _sift_up(hd, ha, hb, hva, hvb, h)
                h += 1
        if top > 4 * len(pa) + 64:  # the pool holds mostly old lists: copy the live ones down
            adj, top = _repacked(adj, start, length, n1)
    for r in range(n1):
        parent[r] = _find(parent, r)
    return parent


@njit(cache=True, nogil=True)
def _repacked(adj, start, length, n1):
    out = np.empty(max(2 * length.sum(), 16), np.int64)
    top = 0
    for r in range(n1):
        out[top: top + length[r]] = adj[start[r]: start[r] + length[r]]
        start[r] = top
        top += length[r]
    return out, top
