"""Object-size matching: the input seen at the scale the model was trained on.

A network learns objects of one size. ``input.diameter`` says how large this input's
objects are (voxels, per axis or in-plane); the input is resampled by
``zoom = model diameter / input diameter`` per axis, segmented on that grid, and the labels
are mapped back to the input grid by nearest neighbour.

Tile-and-stitch stays exact on the resampled grid because every resampled voxel is
computed from its global index alone (the same source voxels, weights and operations in
whichever block it is read), so a block's input equals the same region of the whole
resampled volume bit for bit. Voxel ``i`` of the resampled axis is centred on source
coordinate ``(i + 0.5) / zoom - 0.5``; values are linear interpolations, averaged over
``ceil(1 / zoom)`` sub-samples per voxel when shrinking (area-like, no aliasing of fine
texture). Labels go back by nearest neighbour: input voxel ``j`` takes the label of
resampled voxel ``floor((j + 0.5) * zoom)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import UsageError
from ..geometry import Box
from ..plan.blocks import reflect_indices

# A zoom this close (relative) to an integer ratio (1, k or 1/k) is snapped to it. Networks are
# trained on a spread of object sizes (the demo model: radii 5-10 voxels), so a few percent of
# size mismatch costs nothing, while interpolating between voxels smooths the image: on the
# 2x-zoomed demo (benchmarks/diameter.py, RESULTS.md) AP@0.5 was 0.934 with zoom (1, 0.5, 0.5),
# 0.909 with z resampled by 0.96 and 0.905 with y, x by 0.506 and 0.494. At 1 the axis is not
# resampled; at 1/k each voxel is the mean of k source voxels (no interpolation).
SNAP_TOLERANCE = 0.1


class DiameterError(UsageError):
    """An object diameter that cannot be used (model without one, wrong length, ...)."""


def zoom_factors(diameter: float | Sequence[float], model_diameter: Sequence[float] | None,
                 ndim: int, checkpoint: str = "the model") -> tuple[float, ...] | None:
    """Per-axis zoom that gives objects of ``diameter`` (input voxels) the model's training
    diameter; one number scales every axis by the in-plane (last axis) ratio. Factors are
    snapped (:func:`snap`); None: no axis is resampled."""
    if model_diameter is None:
        raise DiameterError(
            f"input.diameter is set but {checkpoint} records no training object diameter; set "
            "model.diameter to the typical object diameter (voxels per axis) of its training data")
    if len(model_diameter) != ndim:
        raise DiameterError(f"model.diameter {list(model_diameter)} has {len(model_diameter)} values for a "
                            f"{ndim}D model; give one per axis")
    if isinstance(diameter, int | float):
        zoom = (model_diameter[-1] / float(diameter),) * ndim
    else:
        if len(diameter) != ndim:
            raise DiameterError(f"input.diameter {list(diameter)} has {len(diameter)} values for a {ndim}D "
                                "input; give one number (in-plane) or one per axis (z, y, x)")
        zoom = tuple(m / float(d) for m, d in zip(model_diameter, diameter, strict=True))
    zoom = tuple(snap(z) for z in zoom)
    return None if all(z == 1.0 for z in zoom) else zoom


TOLERATED = 0.3  # size mismatch (relative) a model trained on a spread of sizes handles (measured: RESULTS.md)
SMALLEST = 5.0  # objects fewer voxels across than this along an axis are below what the network resolves


def zoom_warnings(zoom: Sequence[float] | None, model_diameter: Sequence[float], step: Sequence[int]) -> list[str]:
    """Why a resampling may not help, for ``pipeline plan`` and the run's log: an axis upsampled by
    interpolation (it cannot add the detail the data lacks and blurs the seams between touching
    objects: on dense anisotropic nuclei every resampling lowered AP, benchmarks/RESULTS.md), an
    axis resampled although within the size range the model tolerates while another one is
    resampled, and objects fewer than :data:`SMALLEST` voxels across on an axis."""
    if not zoom:
        return []
    axes = "zyx"[-len(zoom):]
    notes = []
    up = [f"{a} x{z:.2f}" for a, z in zip(axes, zoom, strict=True) if z > 1.0 and z != round(z)]
    if up:
        notes.append(f"upsampled by interpolation ({', '.join(up)}): it cannot restore detail the input lacks and "
                     "blurs the seams between touching objects (on dense nuclei this lowered AP@0.5, "
                     "benchmarks/RESULTS.md); compare a crop with and without input.diameter (pipeline evaluate), or "
                     "fine-tune the model on your data")
    big = [abs(math.log(z)) > math.log1p(TOLERATED) for z in zoom]
    small = [a for a, z, b in zip(axes, zoom, big, strict=True) if z != 1.0 and not b]
    if any(big) and small:
        notes.append(f"axis {', '.join(small)} is resampled although its size is within the +-{TOLERATED:.0%} the model "
                     f"tolerates: that only smooths it; give input.diameter for it equal to the model's "
                     f"({[round(d, 1) for d in model_diameter]}) to leave it as it is")
    tiny = [f"{a} ({m / z:.1f})" for a, m, z in zip(axes, model_diameter, zoom, strict=True) if m / z < SMALLEST]
    if tiny:
        notes.append(f"objects fewer than {SMALLEST:.0f} voxels across along {', '.join(tiny)}: below what the "
                     f"network resolves (step {list(step)}); resampling interpolates them (expect merges): fine-tune "
                     "on your data, or use a model trained on data sampled like yours")
    return notes


def snap(zoom: float, tolerance: float = SNAP_TOLERANCE) -> float:
    """``zoom``, or the integer ratio (1, k or 1/k) nearest to it when within ``tolerance``
    (relative) of it: see :data:`SNAP_TOLERANCE`."""
    k = max(1, round(zoom if zoom >= 1 else 1.0 / zoom))
    ratio = float(k) if zoom >= 1 else 1.0 / k
    return ratio if abs(math.log(ratio / zoom)) <= math.log1p(tolerance) else float(zoom)


def voxel_diameter(diameter: float | Sequence[float], voxel_size: Sequence[float] | None,
                   where: str) -> tuple[float, ...]:
    """A physical diameter (one number or per axis) in voxels of ``voxel_size``."""
    if voxel_size is None:
        raise DiameterError(f"input.diameter_unit is 'physical' but input {where} records no voxel size; give "
                            "input.diameter in voxels (diameter_unit: voxel)")
    per_axis = [float(diameter)] * len(voxel_size) if isinstance(diameter, int | float) else list(diameter)
    if len(per_axis) != len(voxel_size):
        raise DiameterError(f"input.diameter {per_axis} has {len(per_axis)} values for a {len(voxel_size)}D "
                            "input; give one number or one per axis (z, y, x)")
    return tuple(d / v for d, v in zip(per_axis, voxel_size, strict=True))


def zoomed_shape(shape: Sequence[int], zoom: Sequence[float]) -> tuple[int, ...]:
    return tuple(max(1, round(n * z)) for n, z in zip(shape, zoom, strict=True))


def sample_coords(indices: np.ndarray, zoom: float, n_src: int) -> np.ndarray:
    """Source coordinates (float64) of the sub-samples of resampled voxels ``indices``:
    shape ``(len(indices), samples)``, clamped to the source axis."""
    samples = max(1, math.ceil(1.0 / zoom - 1e-9))
    sub = (np.arange(samples, dtype=np.float64) + 0.5) / samples
    coords = (indices.astype(np.float64)[:, None] + sub[None, :]) / zoom - 0.5
    return np.clip(coords, 0.0, n_src - 1.0)


def linear_taps(coords: np.ndarray, n_src: int) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, weight)``: each coordinate is ``(1 - weight) * src[lo] + weight * src[lo + 1]``
    (``lo + 1`` clamped to the axis; weight 0 there)."""
    lo = np.minimum(np.floor(coords).astype(np.int64), max(n_src - 2, 0))
    weight = (coords - lo).astype(np.float32)
    if n_src == 1:
        weight[:] = 0.0
    return lo, weight


def interpolate_axis(data: np.ndarray, axis: int, lo: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``data`` along ``axis`` at taps ``(lo, weight)`` of shape
    ``(n, samples)`` (``lo`` relative to ``data``), averaged over the samples: ``n`` values."""
    n, samples = lo.shape
    hi = np.minimum(lo + 1, data.shape[axis] - 1)
    shape = [1] * data.ndim
    shape[axis] = n * samples
    w = weight.reshape(shape)
    a = np.take(data, lo.ravel(), axis=axis)
    b = np.take(data, hi.ravel(), axis=axis)
    out = a * (np.float32(1) - w) + b * w
    if samples == 1:
        return out
    split = out.reshape([*out.shape[:axis], n, samples, *out.shape[axis + 1:]])
    total = split.take(0, axis=axis + 1)
    for k in range(1, samples):  # in order, element by element: the same sum in any block
        total = total + split.take(k, axis=axis + 1)
    return total / np.float32(samples)


def source_box(box_indices: Sequence[np.ndarray], zoom: Sequence[float],
               src_shape: Sequence[int]) -> tuple[Box, list[tuple[np.ndarray, np.ndarray]]]:
    """The source box that resampled voxels ``box_indices`` (per axis, inside the resampled
    volume) read, and their taps relative to it."""
    taps, lo_hi = [], []
    for idx, z, n in zip(box_indices, zoom, src_shape, strict=True):
        lo, w = linear_taps(sample_coords(idx, z, n), n)
        start, stop = int(lo.min()), min(int(lo.max()) + 2, n)
        taps.append((lo - start, w))
        lo_hi.append((start, stop))
    return Box(tuple(s for s, _ in lo_hi), tuple(e - s for s, e in lo_hi)), taps


def nearest_indices(start: int, stop: int, zoom: float, n_zoomed: int) -> np.ndarray:
    """Resampled voxel whose labels input voxels ``start..stop`` take back."""
    j = np.arange(start, stop, dtype=np.float64)
    return np.clip(np.floor((j + 0.5) * zoom).astype(np.int64), 0, n_zoomed - 1)


@dataclass(frozen=True)
class ZoomedVolume:
    """An input volume seen resampled by ``zoom``: the interface of
    :class:`~pipeline.volume.input_volume.InputVolume` the blocks read through (``shape``, ``read``...)."""

    source: Any = field(repr=False)  # an InputVolume
    zoom: tuple[float, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return zoomed_shape(self.source.shape, self.zoom)

    @property
    def ndim(self) -> int:
        return int(self.source.ndim)

    @property
    def channels(self) -> int:
        return int(self.source.channels)

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(np.float32)

    @property
    def path(self) -> str:
        return str(self.source.path)

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(max(1, round(c * z)) for c, z in zip(self.source.chunks, self.zoom, strict=True))

    @property
    def voxel_size(self) -> tuple[float, ...] | None:
        vs = self.source.voxel_size
        return None if vs is None else tuple(v / z for v, z in zip(vs, self.zoom, strict=True))

    def _source(self, box: Box) -> tuple[Box, list[tuple[np.ndarray, np.ndarray]]]:
        indices = [np.asarray(reflect_indices(o, o + s, n), dtype=np.int64)
                   for o, s, n in zip(box.offset, box.shape, self.shape, strict=True)]
        return source_box(indices, self.zoom, self.source.shape)

    def source_region(self, box: Box) -> Box:
        """The region of the input (its own coordinates) a read of ``box`` reads."""
        return self._source(box)[0]

    def files(self, box: Box) -> list[str] | None:
        """The files a read of ``box`` depends on (see :meth:`InputVolume.files`)."""
        return self.source.files(self.source_region(box))  # type: ignore[no-any-return]

    def read(self, box: Box) -> np.ndarray:
        """``(C, *box.shape)`` float32, reflected outside the resampled volume like
        :meth:`InputVolume.read`."""
        src, taps = self._source(box)
        data = self.source.read(src).astype(np.float32, copy=False)
        for axis, (lo, w) in enumerate(taps):
            data = interpolate_axis(data, axis + 1, lo, w)
        return data
