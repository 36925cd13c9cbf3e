"""Per-object intensity statistics of the input, in its own units (never normalised), measured on
the input grid with the final labels: the segmented channel and ``objects.channels``, each with a
local background (the ring of voxels in no object around each object).

Each block gives, per object it holds or whose ring reaches into it, partials in float64 (one value per
measured channel ``m``), kept with the other object statistics (:mod:`.objects`) and reduced with them
by id range, in (id, block) order whatever the batches were (so a resumed run sums in the same order)::

    isum = sum x    isq = sum x**2    imin, imax         over the object's voxels in the block
    rsum = sum x    rcount = voxels                       over its ring voxels in the block

The table's columns (``<suffix>``: empty for the segmented channel, ``_c<k>`` for channel ``k``)::

    intensity_sum  = isum                  intensity_mean = isum / voxels
    intensity_std  = sqrt(max(isq / voxels - mean**2, 0))    (population std, as regionprops)
    intensity_min  = imin, intensity_max = imax
    background     = rsum / rcount         (NaN when the ring is empty)
    intensity_mean_corrected = intensity_mean - background

The ring of an object at width ``r`` is every voxel labelled 0 within chessboard distance ``r`` of one of
its voxels (a voxel near two objects is in both rings), clipped to the volume: what
``binary_dilation(labels == id, cube(2r + 1)) & (labels == 0)`` gives on the whole volume.

Integer inputs give exact sums while they stay below 2**53; min and max are exact for every integer below
2**53 and every float32. :func:`fragment_intensity` and :func:`ring_partials` are compiled (numba) passes;
:func:`intensity_stats` and :func:`ring_stats` their numpy references.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numba import njit
from scipy import ndimage

from ..clustering.compiled_voxels import as_3d

if TYPE_CHECKING:
    from ..plan.measure import Measure

OWN = ("isum", "isq", "imin", "imax")  # per object and channel, over its voxels
RING = ("rsum",)  # per object and channel, over its ring; with rcount (voxels) per object


def native(data: np.ndarray) -> np.ndarray:
    """``data`` in a dtype the kernels take: native byte order; float16 and bool as float32."""
    if data.dtype.kind not in "uif" or data.dtype == np.float16:
        return data.astype(np.float32)
    return data if data.dtype.isnative else data.astype(data.dtype.newbyteorder("="))


# ---------------------------------------------------------------- the object's own voxels


@njit(cache=True, nogil=True)
def _fragments(local, data, count, s, q, lo, hi):
    """Per local id > 0 and channel: voxels, sum, sum of squares, min and max of ``data`` (C, ...)."""
    nz, ny, nx = local.shape
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                f = local[z, y, x]
                if f == 0:
                    continue
                first = count[f] == 0
                count[f] += 1
                for m in range(data.shape[0]):
                    v = np.float64(data[m, z, y, x])
                    if first:
                        lo[f, m], hi[f, m] = v, v
                    else:
                        lo[f, m], hi[f, m] = min(lo[f, m], v), max(hi[f, m], v)
                    s[f, m] += v
                    q[f, m] += v * v


def _by_object(inv: np.ndarray, n: int, s: np.ndarray, q: np.ndarray, lo: np.ndarray,
               hi: np.ndarray) -> dict[str, np.ndarray]:
    """Partials of rows (``inv``: each row's object, ``0..n-1``; values ``(rows, C)``) reduced to one per
    object, summed in row order."""
    c = s.shape[1]
    imin, imax = np.full((n, c), np.inf), np.full((n, c), -np.inf)
    np.minimum.at(imin, inv, lo)
    np.maximum.at(imax, inv, hi)
    isum = np.stack([np.bincount(inv, weights=s[:, m], minlength=n) for m in range(c)], axis=1).reshape(n, c)
    isq = np.stack([np.bincount(inv, weights=q[:, m], minlength=n) for m in range(c)], axis=1).reshape(n, c)
    return {"isum": isum, "isq": isq, "imin": imin, "imax": imax}


def fragment_intensity(local: np.ndarray, table: np.ndarray, data: np.ndarray) -> dict[str, np.ndarray]:
    """The intensity partials of one block's objects (sorted ids, as :func:`.relabel_kernel.relabel_block`
    gives them): ``local`` its fragment ids (every one in ``table``, the block's lookup table: relabel_block
    checks that first), ``data`` (C, ...) its input channels."""
    k, c = len(table) - 1, data.shape[0]
    count = np.zeros(k + 1, np.int64)
    s, q, lo, hi = (np.zeros((k + 1, c)) for _ in range(4))
    _fragments(as_3d(local, local.ndim), as_3d(native(data), local.ndim), count, s, q, lo, hi)
    g = table[1:]
    keep = (count[1:] > 0) & (g > 0)
    obj, inv = np.unique(g[keep], return_inverse=True)
    return {"id": obj, **_by_object(inv, len(obj), s[1:][keep], q[1:][keep], lo[1:][keep], hi[1:][keep])}


def intensity_stats(labels: np.ndarray, data: np.ndarray) -> dict[str, np.ndarray]:
    """The numpy reference: intensity partials per label > 0 of ``labels`` over ``data`` (C, *labels.shape)."""
    at = np.flatnonzero(labels)
    ids, inv = np.unique(labels.ravel()[at], return_inverse=True)
    v = data.reshape(data.shape[0], -1)[:, at].T.astype(np.float64)
    return {"id": ids, **_by_object(inv, ids.size, v, v * v, v, v)}


# ---------------------------------------------------------------- the background ring


@njit(cache=True, nogil=True)
def _ring(labels, own, hi, lo, data, r, ids, rsum, rcount, seen):
    """Per ring voxel of the own region (``own``: its start in ``labels``), its value added to every
    distinct object within ``r`` (``ids``: sorted, every id there). ``hi``/``lo``: the largest and the
    smallest id within ``r`` of each own voxel (0 / the dtype's max: none); where they are equal that is
    the only one, else the cube around the voxel is scanned."""
    gz, gy, gx = labels.shape
    nz, ny, nx = hi.shape
    last, row = labels.dtype.type(0), 0
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                top = hi[z, y, x]
                if top == 0 or labels[z + own[0], y + own[1], x + own[2]] != 0:
                    continue
                bottom = lo[z, y, x]
                seen[0], seen[1] = top, bottom
                n = 1 if top == bottom else 2
                if n == 2:  # any third id lies between the two
                    for zz in range(max(z + own[0] - r, 0), min(z + own[0] + r + 1, gz)):
                        for yy in range(max(y + own[1] - r, 0), min(y + own[1] + r + 1, gy)):
                            for xx in range(max(x + own[2] - r, 0), min(x + own[2] + r + 1, gx)):
                                v = labels[zz, yy, xx]
                                if v <= bottom or v >= top:
                                    continue
                                new = True
                                for i in range(2, n):
                                    if seen[i] == v:
                                        new = False
                                        break
                                if new:
                                    seen[n] = v
                                    n += 1
                for i in range(n):
                    if seen[i] != last:
                        last, row = seen[i], np.searchsorted(ids, seen[i])
                    rcount[row] += 1
                    for m in range(data.shape[0]):
                        rsum[row, m] += np.float64(data[m, z, y, x])


def _shell_ids(labels: np.ndarray, own: tuple[slice, ...]) -> np.ndarray:
    """The distinct ids > 0 of ``labels`` outside its ``own`` part (the halo around it)."""
    slabs = [labels[(slice(None),) * a + (part,)] for a, s in enumerate(own)
             for part in (slice(0, s.start), slice(s.stop, None))]
    values = np.concatenate([p.ravel() for p in slabs]) if slabs else labels.ravel()[:0]
    return np.unique(values[values > 0])


def ring_partials(labels: np.ndarray, own: tuple[slice, ...], data: np.ndarray, r: int,
                  ids: np.ndarray) -> dict[str, np.ndarray]:
    """The ring partials of the voxels of ``labels[own]`` (``labels``: global ids of the own region and
    ``r`` voxels around it, clipped to the volume; ``data`` (C, ...): the own region's input; ``ids``:
    the ids of ``labels[own]``, sorted) for every object whose ring reaches them, sorted by id."""
    nd = labels.ndim
    every = np.union1d(ids, _shell_ids(labels, own)).astype(labels.dtype)
    none = min(np.iinfo(labels.dtype).max, 2**52)  # above every id; scipy's cval passes through float64
    hi = ndimage.maximum_filter(labels, size=2 * r + 1, mode="constant")[own]
    lo = ndimage.minimum_filter(np.where(labels == 0, none, labels), size=2 * r + 1, mode="constant", cval=none)[own]
    rsum, rcount = np.zeros((len(every), data.shape[0])), np.zeros(len(every), np.int64)
    start = np.array([0] * (3 - nd) + [s.start for s in own], np.int64)
    _ring(as_3d(labels, nd), start, as_3d(hi, nd), as_3d(lo, nd), as_3d(native(data), nd), r, every, rsum, rcount,
          np.zeros((2 * r + 1) ** 3, labels.dtype))
    keep = rcount > 0
    return {"id": every[keep], "rsum": rsum[keep], "rcount": rcount[keep]}


def ring_stats(labels: np.ndarray, data: np.ndarray, r: int, own: tuple[slice, ...] | None = None) -> dict[str, np.ndarray]:
    """The numpy reference of :func:`ring_partials` (``own``: None for the whole of ``labels``; ``data``:
    the own region's, as there): every
    (ring voxel, object within ``r``) pair of the own region, from ``(2r + 1)**nd`` shifted copies."""
    own = own or tuple(slice(0, n) for n in labels.shape)
    nd = labels.ndim
    voxels, objects = [], []
    region = labels[own]
    for shift in np.ndindex(*(2 * r + 1,) * nd):
        lo = [max(s.start + d - r, 0) for s, d in zip(own, shift, strict=True)]
        hi = [min(s.stop + d - r, n) for s, d, n in zip(own, shift, labels.shape, strict=True)]
        if any(h <= a for a, h in zip(lo, hi, strict=True)):
            continue
        shifted = np.zeros_like(region)  # the label d - r away, 0 outside the volume
        dst = tuple(slice(a - s.start - d + r, h - s.start - d + r) for a, h, s, d in zip(lo, hi, own, shift, strict=True))
        shifted[dst] = labels[tuple(slice(a, h) for a, h in zip(lo, hi, strict=True))]
        at = np.flatnonzero((region == 0) & (shifted > 0))
        voxels.append(at)
        objects.append(shifted.ravel()[at])
    pairs = np.unique(np.stack([np.concatenate([np.zeros(0, np.int64), *objects]).astype(np.int64),
                                np.concatenate([np.zeros(0, np.int64), *voxels])]), axis=1)
    ids, inv = np.unique(pairs[0], return_inverse=True)
    values = data.reshape(data.shape[0], -1)[:, pairs[1]].astype(np.float64)
    rsum = np.stack([np.bincount(inv, weights=values[m], minlength=ids.size) for m in range(data.shape[0])], axis=1)
    return {"id": ids, "rsum": rsum.reshape(ids.size, data.shape[0]), "rcount": np.bincount(inv, minlength=ids.size)}


# ---------------------------------------------------------------- partials: one block's, then per object


def block_partials(found: dict[str, np.ndarray], own: dict[str, np.ndarray] | None,
                   ring: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """One block's statistics (``found``: voxels, bounds, coordinate sums per object it holds) with its
    intensity partials (``own``: of the same objects) and ring partials (``ring``: of the objects whose
    ring reaches into it, maybe more ids); objects only in ``ring`` get count 0 and neutral values."""
    if own is not None and not np.array_equal(found["id"], own["id"]):
        raise RuntimeError("the intensity statistics name other objects than the block's statistics")
    if own is None and ring is None:
        return found
    ids = found["id"] if ring is None else np.union1d(found["id"], ring["id"]).astype(found["id"].dtype)
    at = np.searchsorted(ids, found["id"])
    nd = found["lo"].shape[1] if found["lo"].ndim == 2 else 0
    out = {"id": ids, "count": np.zeros(len(ids), np.int64), "lo": np.full((len(ids), nd), np.iinfo(np.int64).max),
           "hi": np.full((len(ids), nd), -1, np.int64), "sum": np.zeros((len(ids), nd))}
    for key in out:
        if key != "id":
            out[key][at] = found[key]
    for key, fill in zip(OWN, (0.0, 0.0, np.inf, -np.inf), strict=True):
        if own is not None:
            out[key] = np.full((len(ids), own[key].shape[1]), fill)
            out[key][at] = own[key]
    if ring is not None:
        where = np.searchsorted(ids, ring["id"])
        out["rsum"] = np.zeros((len(ids), ring["rsum"].shape[1]))
        out["rcount"] = np.zeros(len(ids), np.int64)
        out["rsum"][where], out["rcount"][where] = ring["rsum"], ring["rcount"]
    return out


def combine_intensity(rows: np.ndarray, at: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Partial rows (``at``: each row's object, ``0..n-1``), in the order given, reduced to one row per
    object (none of the keys when the rows measure nothing)."""
    names = rows.dtype.names or ()
    out = _by_object(at, n, rows["isum"], rows["isq"], rows["imin"], rows["imax"]) if "isum" in names else {}
    if "rsum" in names:
        c = rows["rsum"].shape[1]
        out["rsum"] = np.stack([np.bincount(at, weights=rows["rsum"][:, m], minlength=n) for m in range(c)],
                               axis=1).reshape(n, c)
        out["rcount"] = np.bincount(at, weights=rows["rcount"], minlength=n).astype(np.int64)
    return out


# ---------------------------------------------------------------- the table's columns


def intensity_columns(objects: dict[str, np.ndarray], count: np.ndarray, measure: Measure) -> dict[str, np.ndarray]:
    """The table's intensity columns (see the module's formulas), channel by channel."""
    n = np.maximum(count, 1).astype(np.float64)
    none = np.zeros((len(count), len(measure.suffixes)))  # no partial rows (no objects at all)
    objects = {"isum": none, "isq": none, "imin": none, "imax": none, "rsum": none,
               "rcount": np.zeros(len(count), np.int64)} | objects
    cols: dict[str, np.ndarray] = {}
    for m, sfx in enumerate(measure.suffixes):
        mean = objects["isum"][:, m] / n
        cols |= {f"intensity_mean{sfx}": mean, f"intensity_max{sfx}": objects["imax"][:, m],
                 f"intensity_min{sfx}": objects["imin"][:, m], f"intensity_sum{sfx}": objects["isum"][:, m],
                 f"intensity_std{sfx}": np.sqrt(np.maximum(objects["isq"][:, m] / n - mean * mean, 0.0))}
        if measure.ring:
            with np.errstate(invalid="ignore", divide="ignore"):
                background = np.where(objects["rcount"] > 0, objects["rsum"][:, m] / objects["rcount"], np.nan)
            cols |= {f"background{sfx}": background, f"intensity_mean_corrected{sfx}": mean - background}
    return cols
