"""Training data: volumes from files or the synthetic generator, and random augmented crops.

A :class:`CropSampler` cuts crops whose input is the output window plus the model's
context on each side (reflected at the volume border), augments them (flips, in-plane
90 degree rotations, elastic deformation, intensity scale/shift, gaussian noise) and
returns the normalised input, the instance labels, the foreground target and the loss
weight of the output window. A partly annotated volume (:class:`Volume` with an
``annotated`` mask) has labels only where it was annotated and weight 0 elsewhere; its
crops are centred on annotated voxels. :func:`batches` stacks crops into tensors, in this
process or in seeded data-loading workers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch
from scipy import ndimage

from ..config import ConfigError
from ..network.model import ModelSpec
from ..network.predict import NormStats, normalise
from ..plan.blocks import reflect_indices
from ..volume.io import read_image
from .config import AugmentConfig, SyntheticSource, VolumeSource


class Volume(NamedTuple):
    """A training or validation volume: image, instance labels and, when only part of it was
    annotated, the mask of annotated voxels (``None``: all of it)."""

    image: np.ndarray
    labels: np.ndarray
    annotated: np.ndarray | None = None

    def known_labels(self) -> np.ndarray:
        """The labels where they are known, 0 (background or unknown) elsewhere."""
        return self.labels if self.annotated is None else np.where(self.annotated, self.labels, 0)


# (input (1, *in), labels (*out) 0 where not annotated, foreground target (*out), loss weight (*out))
Crop = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def norm_stats(image: np.ndarray, spec: ModelSpec) -> NormStats:
    n = spec.normalisation
    if n.kind == "scale":
        return NormStats.from_values(n, 0, 1)
    lo, hi = np.percentile(image, [n.low, n.high])
    return NormStats.from_values(n, float(lo), float(hi))


def load_volumes(sources: tuple[VolumeSource, ...]) -> list[Volume]:
    out = []
    for src in sources:
        img = read_image(src.image, src.image_dataset)
        lab = read_image(src.labels, src.labels_dataset)
        if img.shape != lab.shape:
            raise ConfigError(f"image '{src.image}' {img.shape} and labels '{src.labels}' {lab.shape} differ in shape")
        if src.labels_are_mask:
            lab, _ = ndimage.label(lab > 0)
        ann = None
        if src.annotated is not None:
            ann = read_image(src.annotated, src.annotated_dataset) != 0
            if ann.shape != img.shape:
                raise ConfigError(f"annotated '{src.annotated}' {ann.shape} and image '{src.image}' {img.shape} differ "
                                  "in shape; the mask marks the annotated voxels of the image")
            if not ann.any():
                raise ConfigError(f"annotated '{src.annotated}' marks no voxel as annotated (all 0); mark the "
                                  "annotated region nonzero, or leave 'annotated' out when every voxel is annotated")
            if ann.all():
                ann = None
        out.append(Volume(img, lab.astype(np.int64), ann))
    return out


def synthetic_volumes(src: SyntheticSource, workers: int = 0) -> list[Volume]:
    """``src.count`` generated volumes; appearance ranges are drawn per volume (seeded), so the
    volumes are the same for any number of ``workers`` (processes generating them)."""
    if workers > 1 and src.count > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(workers, src.count)) as pool:
            return list(pool.map(_synthetic_volume, [src] * src.count, range(src.count)))
    return [_synthetic_volume(src, k) for k in range(src.count)]


def _synthetic_volume(src: SyntheticSource, k: int) -> Volume:
    from ..volume.synthetic import draw_spec, generate

    rng = np.random.default_rng([src.seed, k, 0xC0FFEE])
    values = src.model_dump(exclude={"count", "seed", "size"})
    if src.size is not None:
        r = float(np.exp(rng.uniform(np.log(src.size[0]), np.log(src.size[1]))))
        values["radius"] = (0.7 * r, 1.3 * r)
    image, labels = generate(draw_spec(values, rng), seed=src.seed + k)
    return Volume(image, labels.astype(np.int64))


def _read_reflected(arr: np.ndarray, start: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    idx = [np.asarray(reflect_indices(s, s + n, size)) for s, n, size in zip(start, shape, arr.shape)]
    return arr[np.ix_(*idx)]


def _face_pairs(ndim: int) -> Iterator[tuple[tuple[slice, ...], tuple[slice, ...]]]:
    """For each axis, the index pair (all but last, all but first) of face neighbours."""
    for ax in range(ndim):
        a = [slice(None)] * ndim
        b = [slice(None)] * ndim
        a[ax], b[ax] = slice(0, -1), slice(1, None)
        yield tuple(a), tuple(b)


def interior(labels: np.ndarray) -> np.ndarray:
    """Foreground without the voxels that touch a different instance (face neighbours)."""
    out = labels > 0
    for a, b in _face_pairs(labels.ndim):
        la, lb = labels[a], labels[b]
        touch = (la != lb) & (la > 0) & (lb > 0)
        out[a] &= ~touch
        out[b] &= ~touch
    return out


def touches(mask: np.ndarray) -> np.ndarray:
    """Voxels with a face neighbour in ``mask``."""
    out = np.zeros_like(mask)
    for a, b in _face_pairs(mask.ndim):
        out[a] |= mask[b]
        out[b] |= mask[a]
    return out


def crop_targets(labels: np.ndarray, annotated: np.ndarray | None, foreground_target: str) -> tuple[np.ndarray, ...]:
    """``(labels, foreground target, loss weight)`` of a crop: labels 0 and weight 0 where not
    annotated. With the ``interior`` target an object voxel next to an unannotated one has
    weight 0 too: whether it touches another object there is unknown."""
    if annotated is None:
        fg = interior(labels) if foreground_target == "interior" else labels > 0
        return labels, fg, np.ones(labels.shape, np.float32)
    labels = np.where(annotated, labels, 0)
    weight = annotated.copy()
    if foreground_target == "interior":
        fg = interior(labels)
        weight &= ~((labels > 0) & touches(~annotated))
    else:
        fg = labels > 0
    return labels, fg, weight.astype(np.float32)


class CropSampler:
    """Random training crops: input ``output_shape + 2 * context``; labels, foreground target
    and loss weight on the output window. Crops of partly annotated volumes are centred on
    annotated voxels; volumes are drawn in proportion to their (annotated) voxels."""

    MAX_ANCHORS = 1 << 20  # annotated voxels kept as crop centres per volume

    def __init__(self, volumes: Sequence[Volume | tuple[np.ndarray, ...]], spec: ModelSpec,
                 output_shape: tuple[int, ...], augment: AugmentConfig, rng: np.random.Generator,
                 foreground_target: str = "mask") -> None:
        self.foreground_target = foreground_target
        vols = [Volume(*v) for v in volumes]
        self.volumes = [Volume(normalise(v.image, norm_stats(v.image, spec)), v.known_labels(), v.annotated)
                        for v in vols]
        self.anchors = [None if v.annotated is None else self._anchors(v.annotated) for v in vols]
        self.spec = spec
        self.out = output_shape
        self.ctx = spec.context
        self.aug = augment
        self.rng = rng
        size = [v.image.size if a is None else a.size for v, a in zip(vols, self.anchors)]
        self.weights = np.array(size, dtype=float)
        self.weights /= self.weights.sum()

    @classmethod
    def _anchors(cls, annotated: np.ndarray) -> np.ndarray:
        flat = np.flatnonzero(annotated)
        return flat[:: max(1, -(-flat.size // cls.MAX_ANCHORS))]

    def _start(self, k: int, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The output window's corner: uniform, or around an annotated voxel."""
        anchors = self.anchors[k]
        if anchors is None:
            return tuple(int(self.rng.integers(0, max(1, s - o + 1))) for s, o in zip(shape, self.out))
        centre = np.unravel_index(int(anchors[self.rng.integers(anchors.size)]), shape)
        return tuple(int(np.clip(c - self.rng.integers(0, o), 0, max(0, s - o)))
                     for c, o, s in zip(centre, self.out, shape))

    def sample(self) -> Crop:
        k = int(self.rng.choice(len(self.volumes), p=self.weights))
        img, lab, ann = self.volumes[k]
        inp = tuple(o + 2 * c for o, c in zip(self.out, self.ctx))
        start = tuple(s - c for s, c in zip(self._start(k, img.shape), self.ctx))
        x = _read_reflected(img, start, inp)
        y = _read_reflected(lab, start, inp)
        m = None if ann is None else _read_reflected(ann, start, inp)
        x, y, m = self._augment(x, y, m)
        win = tuple(slice(c, c + o) for c, o in zip(self.ctx, self.out))
        y, fg, weight = crop_targets(y, m, self.foreground_target)
        return x[None].astype(np.float32), y[win], fg[win], weight[win]

    def _augment(self, x: np.ndarray, y: np.ndarray, m: np.ndarray | None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        a, rng, nd = self.aug, self.rng, x.ndim
        if a.flips:
            for ax in range(nd):
                if rng.random() < 0.5:
                    x, y = np.flip(x, ax), np.flip(y, ax)
                    m = None if m is None else np.flip(m, ax)
        if a.rotations and x.shape[-1] == x.shape[-2]:
            k = int(rng.integers(0, 4))
            x, y = np.rot90(x, k, axes=(-2, -1)), np.rot90(y, k, axes=(-2, -1))
            m = None if m is None else np.rot90(m, k, axes=(-2, -1))
        if a.elastic and rng.random() < a.elastic:
            x, y, m = elastic(x, y, a.elastic_strength, rng, mask=m)
        x = np.ascontiguousarray(x)
        if a.intensity:
            x = x * rng.uniform(0.8, 1.2) + rng.uniform(-0.1, 0.1)
        if a.noise:
            x = x + rng.normal(0, rng.uniform(0, a.noise), size=x.shape)
        return x, np.ascontiguousarray(y), None if m is None else np.ascontiguousarray(m)


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """``(n_out, n_in)`` linear-interpolation weights from ``n_in`` evenly spaced nodes."""
    pos = np.linspace(0, n_in - 1, n_out)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    w = pos - lo
    m = np.zeros((n_out, n_in), dtype=np.float32)
    m[np.arange(n_out), lo] = 1 - w
    m[np.arange(n_out), lo + 1] = w
    return m


def smooth_field(coarse: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Upsample a coarse random field to ``shape`` (separable linear interpolation: a few
    small matrix products, ~10x cheaper than ``ndimage.zoom`` of order 3)."""
    out = coarse
    for ax, n in enumerate(shape):
        out = np.moveaxis(np.tensordot(_interp_matrix(n, coarse.shape[ax]), np.moveaxis(out, ax, 0), axes=1), 0, ax)
    return out


def elastic(x: np.ndarray, y: np.ndarray, strength: float, rng: np.random.Generator, spacing: int = 8,
            mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Smooth random displacement (coarse gaussian field, interpolated); labels and the
    annotation mask nearest."""
    coarse = [max(2, s // spacing) for s in x.shape]
    coords = list(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in x.shape], indexing="ij", sparse=True))
    full = [c + smooth_field(rng.normal(0, strength, size=coarse).astype(np.float32), x.shape) for c in coords]
    xs = ndimage.map_coordinates(x, full, order=1, mode="reflect")
    ys = ndimage.map_coordinates(y, full, order=0, mode="reflect")
    ms = None if mask is None else ndimage.map_coordinates(mask, full, order=0, mode="reflect")
    return xs, ys, ms


class _Crops(torch.utils.data.IterableDataset):
    """Endless crops; each data-loading worker draws from its own seeded generator."""

    def __init__(self, sampler: CropSampler, seed: int) -> None:
        self.sampler, self.seed = sampler, seed

    def __iter__(self) -> Iterator[Crop]:
        info = torch.utils.data.get_worker_info()
        if info is not None:
            from threadpoolctl import threadpool_limits

            # one thread per worker for torch AND numpy's BLAS: N workers x all-core BLAS
            # pools oversubscribe the CPU (measured: 9x slower training on a 16-core GPU node)
            torch.set_num_threads(1)
            self._limits = threadpool_limits(1)
            self.sampler.rng = np.random.default_rng([self.seed, info.id])
        while True:
            yield self.sampler.sample()


def batches(sampler: CropSampler, batch_size: int, workers: int, seed: int,
            pin: bool = False) -> Iterator[tuple[torch.Tensor, ...]]:
    """Endless ``(x, labels, foreground, weight)`` tensor batches, made in ``workers`` processes
    (or in this one when 0, drawing from ``sampler.rng``)."""
    if workers == 0:
        while True:
            batch = [sampler.sample() for _ in range(batch_size)]
            yield tuple(torch.from_numpy(np.stack([b[i] for b in batch])) for i in range(4))
    loader = torch.utils.data.DataLoader(_Crops(sampler, seed), batch_size=batch_size, num_workers=workers,
                                         pin_memory=pin, prefetch_factor=4, persistent_workers=True)
    yield from loader
