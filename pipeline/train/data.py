"""Training data: volumes from files or the synthetic generator, and random augmented crops.

A :class:`CropSampler` cuts crops whose input is the output window plus the model's
context on each side (reflected at the volume border), augments them (flips, in-plane
90 degree rotations, elastic deformation, intensity scale/shift, gaussian noise) and
returns the normalised input, the instance labels and the foreground target of the
output window. :func:`batches` stacks crops into tensors, in this process or in seeded
data-loading workers.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from scipy import ndimage

from ..blocks import reflect_indices
from ..config import ConfigError
from ..formats import read_image
from ..model import ModelSpec
from ..predict import NormStats, normalise
from .config import AugmentConfig, SyntheticSource, VolumeSource

Volume = tuple[np.ndarray, np.ndarray]  # (image, instance labels)
Crop = tuple[np.ndarray, np.ndarray, np.ndarray]  # (input (1, *in), labels (*out), foreground (*out))


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
        out.append((img, lab.astype(np.int64)))
    return out


def synthetic_volumes(src: SyntheticSource) -> list[Volume]:
    from ..synthetic import SyntheticSpec, generate

    spec = SyntheticSpec(shape=tuple(src.shape), radius=src.radius, anisotropy=src.anisotropy, density=src.density,
                         overlap=src.overlap)
    return [tuple(a.astype(np.int64) if i else a for i, a in enumerate(generate(spec, seed=src.seed + k)))  # type: ignore[misc]
            for k in range(src.count)]


def _read_reflected(arr: np.ndarray, start: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    idx = [np.asarray(reflect_indices(s, s + n, size)) for s, n, size in zip(start, shape, arr.shape)]
    return arr[np.ix_(*idx)]


def interior(labels: np.ndarray) -> np.ndarray:
    """Foreground without the voxels that touch a different instance (face neighbours)."""
    fg = labels > 0
    out = fg.copy()
    for ax in range(labels.ndim):
        a = [slice(None)] * labels.ndim
        b = [slice(None)] * labels.ndim
        a[ax], b[ax] = slice(0, -1), slice(1, None)
        la, lb = labels[tuple(a)], labels[tuple(b)]
        touch = (la != lb) & (la > 0) & (lb > 0)
        out[tuple(a)] &= ~touch
        out[tuple(b)] &= ~touch
    return out


class CropSampler:
    """Random training crops: input ``output_shape + 2 * context``, labels and foreground
    target on the output window."""

    def __init__(self, volumes: list[Volume], spec: ModelSpec, output_shape: tuple[int, ...],
                 augment: AugmentConfig, rng: np.random.Generator, foreground_target: str = "mask") -> None:
        self.foreground_target = foreground_target
        self.volumes = [(normalise(img, norm_stats(img, spec)), lab) for img, lab in volumes]
        self.spec = spec
        self.out = output_shape
        self.ctx = spec.context
        self.aug = augment
        self.rng = rng
        self.weights = np.array([img.size for img, _ in self.volumes], dtype=float)
        self.weights /= self.weights.sum()

    def sample(self) -> Crop:
        img, lab = self.volumes[self.rng.choice(len(self.volumes), p=self.weights)]
        inp = tuple(o + 2 * c for o, c in zip(self.out, self.ctx))
        start = tuple(int(self.rng.integers(0, max(1, s - o + 1))) - c for s, o, c in zip(img.shape, self.out, self.ctx))
        x = _read_reflected(img, start, inp)
        y = _read_reflected(lab, start, inp)
        x, y = self._augment(x, y)
        win = tuple(slice(c, c + o) for c, o in zip(self.ctx, self.out))
        fg = interior(y) if self.foreground_target == "interior" else y > 0
        return x[None].astype(np.float32), y[win], fg[win]

    def _augment(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, rng, nd = self.aug, self.rng, x.ndim
        if a.flips:
            for ax in range(nd):
                if rng.random() < 0.5:
                    x, y = np.flip(x, ax), np.flip(y, ax)
        if a.rotations and x.shape[-1] == x.shape[-2]:
            k = int(rng.integers(0, 4))
            x, y = np.rot90(x, k, axes=(-2, -1)), np.rot90(y, k, axes=(-2, -1))
        if a.elastic and rng.random() < a.elastic:
            x, y = elastic(x, y, a.elastic_strength, rng)
        x = np.ascontiguousarray(x)
        if a.intensity:
            x = x * rng.uniform(0.8, 1.2) + rng.uniform(-0.1, 0.1)
        if a.noise:
            x = x + rng.normal(0, rng.uniform(0, a.noise), size=x.shape)
        return x, np.ascontiguousarray(y)


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


def elastic(x: np.ndarray, y: np.ndarray, strength: float, rng: np.random.Generator, spacing: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random displacement (coarse gaussian field, interpolated); labels nearest."""
    coarse = [max(2, s // spacing) for s in x.shape]
    coords = list(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in x.shape], indexing="ij", sparse=True))
    full = [c + smooth_field(rng.normal(0, strength, size=coarse).astype(np.float32), x.shape) for c in coords]
    xs = ndimage.map_coordinates(x, full, order=1, mode="reflect")
    ys = ndimage.map_coordinates(y, full, order=0, mode="reflect")
    return xs, ys


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
            pin: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Endless ``(x, labels, foreground)`` tensor batches, made in ``workers`` processes
    (or in this one when 0, drawing from ``sampler.rng``)."""
    if workers == 0:
        while True:
            batch = [sampler.sample() for _ in range(batch_size)]
            yield tuple(torch.from_numpy(np.stack([b[i] for b in batch])) for i in range(3))  # type: ignore[misc]
    loader = torch.utils.data.DataLoader(_Crops(sampler, seed), batch_size=batch_size, num_workers=workers,
                                         pin_memory=pin, prefetch_factor=4, persistent_workers=True)
    yield from loader
