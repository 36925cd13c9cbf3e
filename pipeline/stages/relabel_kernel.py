"""One block's relabelling and object statistics in one compiled (numba) pass: the block's local
fragment ids (as ``scratch/fragments`` keeps them) -> global labels through the block's lookup
table, and per fragment its voxel count, bounding box and coordinate sums. The numpy reference is a
table lookup and :func:`.ids.object_stats` (two passes, a sort of the labelled voxels); the results are the
same arrays: coordinates are integers, so their float64 sums are exact in any order (below 2**53)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numba import njit

from ..clustering.compiled_voxels import as_3d


@njit(cache=True, nogil=True)
def _relabel(local, table, out, offset, count, lo, hi, sums):
    """Fills ``out`` and the per-fragment statistics; returns the first id past the table (0 when
    none is)."""
    nz, ny, nx = local.shape
    k = len(table) - 1
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                f = local[z, y, x]
                if f == 0:
                    out[z, y, x] = 0
                    continue
                if f > k:
                    return f
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


def relabel_block(local: np.ndarray, linear: int, table: np.ndarray, out: np.ndarray,
                  offset: Sequence[int]) -> dict[str, np.ndarray]:
    """``out[...] = table[local]`` and :func:`.ids.object_stats` of ``out`` (``local``: block
    ``linear``'s fragment ids, ``offset``: its origin in the volume). A local id past the table is a
    ``ValueError`` (the fragments and the merge's tables disagree)."""
    nd = local.ndim
    k = len(table) - 1
    count = np.zeros(k + 1, np.int64)
    lo, hi, sums = np.zeros((k + 1, 3), np.int64), np.zeros((k + 1, 3), np.int64), np.zeros((k + 1, 3))
    off = np.array([0] * (3 - nd) + [int(o) for o in offset], np.int64)
    bad = _relabel(as_3d(local, nd), table, as_3d(out, nd), off, count, lo, hi, sums)
    if bad:
        raise ValueError(f"fragment {int(bad)} of block {linear} is past the block's {k} fragments: "
                         f"the fragments and the merge's tables disagree")
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
