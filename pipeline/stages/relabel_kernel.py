"""One block's relabelling and object statistics in one compiled (numba) pass: fragment ids ->
local ids -> global labels through the block's lookup table, and per fragment its voxel count,
bounding box and coordinate sums. The numpy reference is :func:`.ids.local_ids`, a table lookup
and :func:`.ids.object_stats` (three passes, a sort of the labelled voxels); the results are the
same arrays: coordinates are integers, so their float64 sums are exact in any order (below 2**53)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit

from ..clustering.compiled_voxels import as_3d


@njit(cache=True, nogil=True)
def _relabel(ids, base, table, out, offset, count, lo, hi, sums):
    """Fills ``out`` and the per-fragment statistics; returns the first id not of this block
    (0 when all are)."""
    nz, ny, nx = ids.shape
    k = np.uint64(len(table) - 1)
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                i = ids[z, y, x]
                if i == 0:
                    out[z, y, x] = 0
                    continue
                if i <= base or i - base > k:
                    return i
                f = i - base
                out[z, y, x] = table[f]
                if count[f] == 0:
                    lo[f, 0], lo[f, 1], lo[f, 2] = z, y, x
                    hi[f, 0], hi[f, 1], hi[f, 2] = z, y, x
                count[f] += 1
                lo[f, 0] = min(lo[f, 0], z)
                lo[f, 1] = min(lo[f, 1], y)
                lo[f, 2] = min(lo[f, 2], x)
                hi[f, 0] = max(hi[f, 0], z)
                hi[f, 1] = max(hi[f, 1], y)
                hi[f, 2] = max(hi[f, 2], x)
                sums[f, 0] += z + offset[0]
                sums[f, 1] += y + offset[1]
                sums[f, 2] += x + offset[2]
    return 0


def relabel_block(ids: np.ndarray, linear: int, stride: int, table: np.ndarray, out: np.ndarray,
                  offset: Sequence[int]) -> dict[str, np.ndarray]:
    """``out[...] = table[local_ids(ids, linear, stride)]`` and :func:`.ids.object_stats` of
    ``out`` (``offset``: the block's origin in the volume). A fragment id of another block, or
    one past the table, is a ``ValueError`` (the fragments and the merge's tables disagree)."""
    nd = ids.ndim
    k = len(table) - 1
    count = np.zeros(k + 1, np.int64)
    lo, hi, sums = np.zeros((k + 1, 3), np.int64), np.zeros((k + 1, 3), np.int64), np.zeros((k + 1, 3))
    off = np.array([0] * (3 - nd) + [int(o) for o in offset], np.int64)
    base = np.uint64(linear) * np.uint64(stride)
    bad = _relabel(as_3d(ids, nd), base, table, as_3d(out, nd), off, count, lo, hi, sums)
    if bad:
        raise ValueError(f"fragment id {int(bad)} is not one of block {linear}'s {k} fragments "
                         f"(ids {int(base) + 1}..{int(base) + k}): the fragments and the merge's tables disagree")
    g = table[1:]
    keep = (count[1:] > 0) & (g > 0)
    obj, inv = np.unique(g[keep], return_inverse=True)
    n = len(obj)
    c = np.zeros(n, np.int64)
    olo = np.full((n, 3), np.iinfo(np.int64).max)
    ohi = np.full((n, 3), -1, np.int64)
    osum = np.zeros((n, 3))
    np.add.at(c, inv, count[1:][keep])
    np.minimum.at(olo, inv, lo[1:][keep] + off)
    np.maximum.at(ohi, inv, hi[1:][keep] + off)
    np.add.at(osum, inv, sums[1:][keep])
    return {"id": obj.astype(out.dtype), "count": c, "lo": olo[:, 3 - nd:], "hi": ohi[:, 3 - nd:] + 1,
            "sum": osum[:, 3 - nd:]}
