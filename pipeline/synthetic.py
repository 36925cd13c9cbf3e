"""Synthetic nuclei-like volumes with instance ground truth, deterministic by seed.

Objects are ellipsoids (ellipses in 2D) of varied size and orientation. Where
they overlap each voxel goes to the object it is deepest inside, so densely
packed objects touch along shared faces. The image has per-object intensity,
internal texture, a blur that is stronger along an anisotropic z axis,
Poisson (shot) and gaussian (read) noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class SyntheticSpec:
    shape: tuple[int, ...] = (48, 96, 96)
    radius: tuple[float, float] = (5.0, 9.0)  # in-plane semi-axes range, voxels
    anisotropy: float = 1.0  # z voxel size / xy voxel size: z semi-axes shrink by this
    density: float = 0.6  # fraction of the volume covered by object centres' nominal volume
    overlap: float = 0.15  # allowed penetration of neighbours (makes touching objects)
    blur: float = 1.0  # gaussian sigma in-plane (z: sigma / anisotropy * 1.5)
    photons: float = 200.0  # brightest object expected photon count (Poisson noise)
    read_noise: float = 2.0  # gaussian noise sigma in photons
    background: float = 10.0


def _rotation(rng: np.random.Generator, ndim: int) -> np.ndarray:
    if ndim == 2:
        a = rng.uniform(0, np.pi)
        return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def generate(spec: SyntheticSpec | None = None, seed: int = 0, **overrides: object) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(image uint16, labels uint32)`` for ``spec`` (fields overridable by keyword)."""
    spec = spec or SyntheticSpec()
    if overrides:
        spec = SyntheticSpec(**{**spec.__dict__, **overrides})  # type: ignore[arg-type]
    rng = np.random.default_rng(seed)
    shape = tuple(spec.shape)
    ndim = len(shape)
    scale = np.ones(ndim)
    if ndim == 3:
        scale[0] = 1.0 / spec.anisotropy
    depth = np.full(shape, np.inf, dtype=np.float32)  # normalised radius^2 of the owner
    labels = np.zeros(shape, dtype=np.uint32)
    centres: list[np.ndarray] = []
    radii: list[float] = []
    mean_r = np.mean(spec.radius)
    nominal = (4 / 3 * np.pi if ndim == 3 else np.pi) * mean_r**ndim * np.prod(scale)
    n_target = max(1, int(spec.density * np.prod(shape) / nominal))
    attempts = 0
    label = 0
    while label < n_target and attempts < 50 * n_target:
        attempts += 1
        semi = rng.uniform(*spec.radius, size=ndim) * scale
        c = rng.uniform(0, 1, size=ndim) * (np.array(shape) - 1)
        r_eff = float(np.mean(semi / scale))
        # keep centres apart (objects may touch and slightly interpenetrate, never swallow)
        if any(np.linalg.norm((c - o) / scale) < (1 - spec.overlap) * (r_eff + ro) for o, ro in zip(centres, radii)):
            continue
        centres.append(c)
        radii.append(r_eff)
        label += 1
        rot = _rotation(rng, ndim)
        ext = np.ceil(np.max(semi) + 1).astype(int)
        lo = np.maximum(np.floor(c).astype(int) - ext, 0)
        hi = np.minimum(np.floor(c).astype(int) + ext + 1, shape)
        if np.any(hi <= lo):
            continue
        grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij")
        d = np.stack([g - ci for g, ci in zip(grids, c)], axis=-1) @ rot
        r2 = np.sum((d / semi) ** 2, axis=-1).astype(np.float32)
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        win = (r2 < 1.0) & (r2 < depth[sl])
        depth[sl][win] = r2[win]
        labels[sl][win] = label
    labels = _relabel_connected(labels)
    image = _render(labels, depth, spec, rng)
    return image, labels


def _relabel_connected(labels: np.ndarray) -> np.ndarray:
    """Keep the largest connected piece of every object (a sliver cut off by a
    neighbour is given to background) and number objects 1..N."""
    out = np.zeros_like(labels)
    n = 0
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        mask = labels[sl] == i
        cc, k = ndimage.label(mask)
        if k > 1:
            sizes = np.bincount(cc.ravel())[1:]
            mask = cc == (1 + int(np.argmax(sizes)))
        if mask.sum() < 8:
            continue
        n += 1
        out[sl][mask] = n
    return out


def _render(labels: np.ndarray, depth: np.ndarray, spec: SyntheticSpec, rng: np.random.Generator) -> np.ndarray:
    n = int(labels.max())
    brightness = np.concatenate([[0.0], rng.uniform(0.4, 1.0, size=n)])
    inside = labels > 0
    img = np.zeros(labels.shape, dtype=np.float32)
    r2 = np.where(inside, depth, 1.0)
    texture = ndimage.gaussian_filter(rng.normal(size=labels.shape).astype(np.float32), 1.5)
    img[inside] = (brightness[labels[inside]] * (1.0 - 0.25 * r2[inside]) * (1 + 0.6 * texture[inside]))
    # a dark seam where objects touch makes boundaries visible but not trivial
    edges = np.zeros_like(inside)
    for ax in range(labels.ndim):
        diff = np.diff(labels, axis=ax) != 0
        both = np.diff(inside.astype(np.int8), axis=ax) == 0
        seam = diff & both & inside.take(range(labels.shape[ax] - 1), axis=ax)
        idx = [slice(None)] * labels.ndim
        idx[ax] = slice(0, -1)
        edges[tuple(idx)] |= seam
    img[edges] *= 0.6
    sigma = [spec.blur] * labels.ndim
    if labels.ndim == 3:
        sigma[0] = spec.blur * 1.5 / max(spec.anisotropy, 1e-6) if spec.anisotropy > 1 else spec.blur
    img = ndimage.gaussian_filter(img, sigma)
    photons = spec.background + spec.photons * np.clip(img, 0, None)
    noisy = rng.poisson(photons).astype(np.float32) + rng.normal(0, spec.read_noise, size=img.shape)
    return np.clip(noisy, 0, 65535).astype(np.uint16)
