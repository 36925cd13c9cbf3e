"""OME-Zarr label images of the segmentation: where they go, their levels and how each is computed.

Everything here is pure (numpy); the metadata is :mod:`pipeline.volume.ome_metadata`'s,
:mod:`pipeline.stages.labels` writes the levels blockwise and :mod:`pipeline.run` decides when.

Where (``output.labels``)::

    image       <image>/labels/<name>/0, 1, ...   next to the input image's own levels: napari
                                                  opening the image shows them (NGFF 0.4 or 0.5,
                                                  as the image)
    standalone  <output.path>/labels/<name>/0, 1, ...   NGFF 0.5 (the output group is zarr v3)
    auto        image for an OME-Zarr input, standalone otherwise
    none        no label image (``segmentation`` only)

Levels. Under an image the label image has one level per image level (NGFF: "MUST have the
same number of entries as the original unlabeled image"): the segmented level
(``input.scale_level``) is ``segmentation`` (written there once, see
:mod:`pipeline.stages.labels`), finer image levels are its nearest
upsampling, coarser ones the label mode of the level before (:func:`downsample_labels`);
each level has the image level's shape, scale and translation. A standalone label image
starts at the segmented level and follows the input pyramid's factors where it has one,
else halves (:func:`halving_factors`) until the largest axis is below :data:`SMALL`.

Coordinates follow the pixel-centre convention of image pyramids: a coarse voxel stands for
the block of ``factor`` fine voxels it covers, so its centre sits ``(factor - 1) / 2`` fine
voxels after the block's first voxel: ``translation += (factor - 1) / 2 * scale``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

SMALL = 256  # a standalone pyramid stops once its largest axis is below this
MAX_LEVELS = 8  # ... or at this many levels
CHUNK = {2: 256, 3: 64}  # label chunk per axis (clipped to the level), by dimensionality
TASK_VOXELS = 1 << 21  # voxels of one level written by one task

Kind = Literal["copy", "up", "down"]


@dataclass(frozen=True)
class Level:
    """One level of a label image.

    ``kind`` says how it is computed: ``copy`` of the segmentation, ``up`` (nearest
    upsampling of the segmentation by ``factors``) or ``down`` (label mode of level
    ``source`` by ``factors``)."""

    path: str
    shape: tuple[int, ...]
    scale: tuple[float, ...]
    translation: tuple[float, ...]
    kind: Kind
    factors: tuple[int, ...]
    source: int = -1  # index of the level it is computed from (down), -1: the segmentation

    @property
    def chunks(self) -> tuple[int, ...]:
        c = CHUNK.get(len(self.shape), 64)
        return tuple(min(n, c) for n in self.shape)

    @property
    def task_shape(self) -> tuple[int, ...]:
        """Whole chunks per task; a downsampled level's task reads ``prod(factors)`` times its
        voxels (and the mode's sort holds several int64 copies of them): it gets fewer."""
        reads = math.prod(self.factors) if self.kind == "down" else 1
        return task_shape(self.chunks, self.shape, max(1, TASK_VOXELS // reads))


@dataclass(frozen=True)
class PyramidLevel:
    """What the input's multiscales say of one of its levels (spatial axes only)."""

    shape: tuple[int, ...]
    scale: tuple[float, ...]
    translation: tuple[float, ...]


# ---------------------------------------------------------------- label-safe resampling


def downsample_labels(labels: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """:func:`downsample_labels_reference`, compiled (:mod:`.kernels`) for 1D to 3D arrays."""
    f = tuple(int(x) for x in factors)
    if len(f) != labels.ndim or any(x < 1 for x in f):
        raise ValueError(f"factors {list(f)} do not fit a {labels.ndim}D array")
    if all(x == 1 for x in f):
        return labels.copy()
    if labels.ndim > 3 or labels.dtype.kind not in "iu":
        return downsample_labels_reference(labels, f)
    from .kernels import downsample_labels as compiled

    return compiled(labels, f)


def downsample_labels_reference(labels: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """The label mode of every block of ``factors`` voxels (``ceil(n / f)`` per axis).

    Label-safe: every output value is a label of its block, never a mix. The mode rather
    than the block's first voxel because the metadata puts a coarse voxel at its block's
    centre (see the module docstring): the first voxel would shift every object by
    ``(f - 1) / 2`` voxels. Ties go to the largest id (objects win over background), so a
    thin object stays visible. Blocks cut by the array's far border count their voxels
    inside only. Blockwise results equal the whole array's on blocks aligned to ``factors``.
    """
    f = tuple(int(x) for x in factors)
    if len(f) != labels.ndim or any(x < 1 for x in f):
        raise ValueError(f"factors {list(f)} do not fit a {labels.ndim}D array")
    if all(x == 1 for x in f):
        return labels.copy()
    out = tuple(-(-n // k) for n, k in zip(labels.shape, f, strict=True))
    pad = [(0, o * k - n) for o, k, n in zip(out, f, labels.shape, strict=True)]
    k = math.prod(f)

    def blocks(a: np.ndarray) -> np.ndarray:  # (*out, *f) -> (prod(out), prod(f))
        a = a.reshape([x for o, q in zip(out, f, strict=True) for x in (o, q)])
        nd = len(f)
        return a.transpose([*range(0, 2 * nd, 2), *range(1, 2 * nd, 2)]).reshape(-1, k)

    values = blocks(np.pad(labels, pad))
    inside = blocks(np.pad(np.ones(labels.shape, np.int32), pad))
    order = np.argsort(values, axis=1, kind="stable")
    values = np.take_along_axis(values, order, 1)
    inside = np.take_along_axis(inside, order, 1)
    total = np.cumsum(inside, axis=1)
    start = np.ones(values.shape, bool)
    start[:, 1:] = values[:, 1:] != values[:, :-1]
    first = np.where(start, np.arange(k), 0)
    np.maximum.accumulate(first, axis=1, out=first)
    count = total - np.take_along_axis(total - inside, first, 1)  # running count within each run of a value
    pick = k - 1 - np.argmax(count[:, ::-1], axis=1)  # the last (largest) value with the highest count
    return values[np.arange(len(values)), pick].reshape(out)


def nearest_indices(offset: int, size: int, factor: int, n: int) -> np.ndarray:
    """Indices into a coarse axis of length ``n`` of fine voxels ``offset .. offset+size``
    (fine voxel ``i`` lies in coarse voxel ``i // factor``; clipped at the far border)."""
    return np.minimum((offset + np.arange(size)) // factor, n - 1)


def upsample_labels(labels: np.ndarray, factors: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Nearest upsampling to ``shape``: every voxel repeated ``factors`` times (label-safe)."""
    index = [nearest_indices(0, s, f, n) for s, f, n in zip(shape, factors, labels.shape, strict=True)]
    return labels[np.ix_(*index)]


# ---------------------------------------------------------------- planning


def task_shape(chunks: Sequence[int], shape: Sequence[int], target: int = TASK_VOXELS) -> tuple[int, ...]:
    """Whole chunks per task: ``chunks`` doubled along the last axes first until a task
    holds about ``target`` voxels or covers the level."""
    out = list(chunks)
    grown = True
    while grown and math.prod(out) * 2 <= target:
        grown = False
        for a in reversed(range(len(out))):
            if out[a] < shape[a] and math.prod(out) * 2 <= target:
                out[a] *= 2
                grown = True
    return tuple(out)


def integer_ratio(coarse: float, fine: float, tol: float = 1e-3) -> int | None:
    """``coarse / fine`` when it is a positive integer (within ``tol``), else None."""
    if fine <= 0 or coarse <= 0:
        return None
    r = coarse / fine
    return round(r) if round(r) >= 1 and abs(r - round(r)) <= tol * r else None


def level_factors(fine: PyramidLevel, coarse: PyramidLevel) -> tuple[int, ...] | None:
    """Per-axis integer factors between two pyramid levels whose scales and shapes agree
    (coarse shape ``floor`` or ``ceil`` of fine / factor), else None."""
    f = [integer_ratio(c, s) for c, s in zip(coarse.scale, fine.scale, strict=True)]
    if any(x is None for x in f):
        return None
    factors = tuple(int(x) for x in f if x is not None)
    if any(not n // k <= c <= -(-n // k) for n, c, k in zip(fine.shape, coarse.shape, factors, strict=True)):
        return None
    return factors


def halving_factors(shape: Sequence[int], scale: Sequence[float]) -> tuple[int, ...]:
    """2 on every axis longer than 1 voxel whose voxel is not already at least twice as
    coarse as the finest axis's (anisotropic volumes become isotropic first), else 1."""
    finest = min(scale)
    return tuple(2 if n > 1 and s < 2 * finest else 1 for n, s in zip(shape, scale, strict=True))


def coarser(level: PyramidLevel, factors: Sequence[int]) -> PyramidLevel:
    """The level ``factors`` coarser, pixel-centre convention."""
    return PyramidLevel(
        tuple(-(-n // f) for n, f in zip(level.shape, factors, strict=True)),
        tuple(s * f for s, f in zip(level.scale, factors, strict=True)),
        tuple(t + (f - 1) / 2 * s for t, s, f in zip(level.translation, level.scale, factors, strict=True)),
    )


def plan_levels(
    segmented: PyramidLevel, pyramid: Sequence[PyramidLevel] | None, scale_level: int, under_image: bool,
) -> list[Level]:
    """The label image's levels (see the module docstring). ``segmented``: the shape and
    coordinates of the segmentation; ``pyramid``: the input's levels (None: not OME-Zarr)."""
    chain: list[tuple[PyramidLevel, Kind, tuple[int, ...]]] = []  # finest first
    nd = len(segmented.shape)
    if under_image and pyramid:
        for j in range(scale_level - 1, -1, -1):  # finer image levels: nearest upsampling of the segmentation
            f = level_factors(pyramid[j], segmented)
            if f is None:
                break
            chain.insert(0, (pyramid[j], "up", f))
    chain.append((segmented, "copy", (1,) * nd))
    if pyramid:
        for j in range(scale_level + 1, len(pyramid)):  # the input's factors, as far as they are integers
            f = level_factors(chain[-1][0], pyramid[j])
            if f is None:
                break
            chain.append((pyramid[j], "down", f))
    else:
        while len(chain) < MAX_LEVELS and max(chain[-1][0].shape) >= SMALL:
            f = halving_factors(chain[-1][0].shape, chain[-1][0].scale)
            if all(x == 1 for x in f):
                break
            chain.append((coarser(chain[-1][0], f), "down", f))
    return [Level(str(i), lv.shape, lv.scale, lv.translation, kind, f, i - 1 if kind == "down" else -1)
            for i, (lv, kind, f) in enumerate(chain)]
