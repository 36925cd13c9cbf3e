"""Per-object intensity statistics of the input channel the network reads, in the input's own units
(never normalised), measured on the input grid with the final labels.

Each block gives per object four partials in float64, kept with the other object statistics
(:mod:`.objects`) and reduced with them by id range: ``isum`` = sum x, ``isq`` = sum x**2 (added
across blocks), ``imin``, ``imax`` (min and max across blocks). The table's columns are then::

    intensity_sum  = isum
    intensity_mean = isum / n
    intensity_std  = sqrt(max((isq - isum * intensity_mean) / n, 0))   (population std, as regionprops)
    intensity_min  = imin,  intensity_max = imax

Integer inputs give exact sums while they stay below 2**53 (e.g. 2**37 uint16 voxels per object);
min and max are exact for every integer below 2**53 and every float32.

:func:`fragment_intensity` is one compiled (numba) pass over a block's fragment ids and input, then
reduced to objects through the block's lookup table; :func:`intensity_stats` is its numpy reference on
labels (also what ``restore`` uses, whose labels are global ids).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..clustering.compiled_voxels import as_3d

FIELDS = ("isum", "isq", "imin", "imax")  # the partials, as the statistics rows name them


def native(data: np.ndarray) -> np.ndarray:
    """``data`` in a dtype the kernel takes: native byte order; float16 and bool as float32."""
    if data.dtype.kind not in "uif" or data.dtype == np.float16:
        return data.astype(np.float32)
    return data if data.dtype.isnative else data.astype(data.dtype.newbyteorder("="))


@njit(cache=True, nogil=True)
def _fragments(local, data, count, s, q, lo, hi):
    """Per local id > 0: voxels, sum, sum of squares, min and max of ``data`` (ids already checked
    against the table by the relabel pass)."""
    nz, ny, nx = local.shape
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                f = local[z, y, x]
                if f == 0:
                    continue
                v = np.float64(data[z, y, x])
                if count[f] == 0:
                    lo[f], hi[f] = v, v
                else:
                    lo[f], hi[f] = min(lo[f], v), max(hi[f], v)
                count[f] += 1
                s[f] += v
                q[f] += v * v


def _by_object(inv: np.ndarray, n: int, s: np.ndarray, q: np.ndarray, lo: np.ndarray,
               hi: np.ndarray) -> dict[str, np.ndarray]:
    """Partials of rows (``inv``: each row's object, ``0..n-1``) reduced to one per object."""
    imin, imax = np.full(n, np.inf), np.full(n, -np.inf)
    np.minimum.at(imin, inv, lo)
    np.maximum.at(imax, inv, hi)
    return {"isum": np.bincount(inv, weights=s, minlength=n), "isq": np.bincount(inv, weights=q, minlength=n),
            "imin": imin, "imax": imax}


def fragment_intensity(local: np.ndarray, table: np.ndarray, data: np.ndarray) -> dict[str, np.ndarray]:
    """The intensity partials of one block's objects (sorted ids, as
    :func:`.relabel_kernel.relabel_block` gives them): ``local`` its fragment ids (every one in
    ``table``, the block's lookup table: relabel_block checks that first), ``data`` its input."""
    k = len(table) - 1
    count = np.zeros(k + 1, np.int64)
    s, q, lo, hi = (np.zeros(k + 1) for _ in range(4))
    _fragments(as_3d(local, local.ndim), as_3d(native(data), data.ndim), count, s, q, lo, hi)
    g = table[1:]
    keep = (count[1:] > 0) & (g > 0)
    obj, inv = np.unique(g[keep], return_inverse=True)
    return {"id": obj, **_by_object(inv, len(obj), s[1:][keep], q[1:][keep], lo[1:][keep], hi[1:][keep])}


def intensity_stats(labels: np.ndarray, data: np.ndarray) -> dict[str, np.ndarray]:
    """The numpy reference: intensity partials per label > 0 of ``labels`` over ``data`` (same shape)."""
    at = np.flatnonzero(labels)
    ids, inv = np.unique(labels.ravel()[at], return_inverse=True)
    v = data.ravel()[at].astype(np.float64)
    return {"id": ids, **_by_object(inv, ids.size, v, v * v, v, v)}


def combine_intensity(rows: np.ndarray, at: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Partial rows (``at``: each row's object, ``0..n-1``) reduced to one row per object."""
    return _by_object(at, n, rows["isum"], rows["isq"], rows["imin"], rows["imax"])


def intensity_columns(objects: dict[str, np.ndarray], count: np.ndarray) -> dict[str, np.ndarray]:
    """The table's intensity columns (see the module's formulas)."""
    n = np.maximum(count, 1).astype(np.float64)
    mean = objects["isum"] / n
    std = np.sqrt(np.maximum((objects["isq"] - objects["isum"] * mean) / n, 0.0))
    return {"intensity_mean": mean, "intensity_max": objects["imax"], "intensity_min": objects["imin"],
            "intensity_sum": objects["isum"], "intensity_std": std}
