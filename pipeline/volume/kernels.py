"""Compiled (numba) kernels of the volume I/O.

* the label mode of blocks of voxels: the twin of :func:`pipeline.volume.ome.downsample_labels_reference`,
  which sorts every block's values in numpy (a (prod(out), prod(factors)) copy, an argsort and
  five passes over it). Same values: per block the most frequent label among its voxels inside
  the array, ties to the largest;
* whether a region holds a non-zero voxel, stopping at the first (see :func:`.io.write_region`)."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _insertion_sort(buf, n) -> None:
    for i in range(1, n):
        v = buf[i]
        j = i - 1
        while j >= 0 and buf[j] > v:
            buf[j + 1] = buf[j]
            j -= 1
        buf[j + 1] = v


@njit(cache=True, nogil=True)
def block_mode(labels, fz, fy, fx, out):
    """``out`` ``(ceil(Z/fz), ceil(Y/fy), ceil(X/fx))``: the label modes of a 3D ``labels``."""
    nz, ny, nx = labels.shape
    oz, oy, ox = out.shape
    buf = np.empty(fz * fy * fx, labels.dtype)
    for a in range(oz):
        for b in range(oy):
            for c in range(ox):
                n = 0
                same = True
                for z in range(a * fz, min((a + 1) * fz, nz)):
                    for y in range(b * fy, min((b + 1) * fy, ny)):
                        for x in range(c * fx, min((c + 1) * fx, nx)):
                            buf[n] = labels[z, y, x]
                            same = same and buf[n] == buf[0]
                            n += 1
                if same:
                    out[a, b, c] = buf[0]
                    continue
                if n <= 64:
                    _insertion_sort(buf, n)
                else:
                    buf[:n] = np.sort(buf[:n])
                best, best_count, run = buf[0], 0, 0
                for i in range(n):
                    run = run + 1 if i and buf[i] == buf[i - 1] else 1
                    if run >= best_count:  # ascending: a later (larger) value wins a tie
                        best, best_count = buf[i], run
                out[a, b, c] = best


def downsample_labels(labels: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """:func:`block_mode` of 1D to 3D ``labels`` (leading axes of 1 and factor 1 added)."""
    if labels.ndim > 3:
        raise ValueError(f"the compiled label mode takes 1D to 3D arrays, got {labels.ndim}D")
    pad = 3 - labels.ndim
    f3 = (1,) * pad + tuple(factors)
    view = labels.reshape((1,) * pad + labels.shape)
    out = np.empty(tuple(-(-n // f) for n, f in zip(view.shape, f3, strict=True)), labels.dtype)
    block_mode(view, *f3, out)
    return out.reshape(out.shape[pad:])


@njit(cache=True, nogil=True)
def _any_nonzero(a) -> bool:
    nz, ny, nx = a.shape
    for z in range(nz):
        for y in range(ny):
            for x in range(nx):
                if a[z, y, x] != 0:
                    return True
    return False


def any_nonzero(a: np.ndarray) -> bool:
    """Whether ``a`` (1D to 3D, any strides) holds a non-zero value; stops at the first."""
    if a.ndim > 3 or a.dtype.kind not in "iub":
        return bool(np.any(a))
    return bool(_any_nonzero(a.reshape((1,) * (3 - a.ndim) + a.shape)))
