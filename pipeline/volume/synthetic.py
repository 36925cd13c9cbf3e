"""Synthetic nuclei-like volumes with instance ground truth, deterministic by seed.

Objects are ellipsoids (ellipses in 2D) of varied size and orientation, optionally with
irregular outlines and placed in dense touching clusters. Where they overlap each voxel
goes to the object it is deepest inside, so densely packed objects touch along shared
faces. The image has per-object intensity, internal (chromatin) texture, a point spread
function that is longer along an anisotropic z axis, intensity that falls with depth,
uneven out-of-focus haze, Poisson (shot) and gaussian (read) noise.

The appearance options are off by default (the values below reproduce the volumes of
earlier versions bit for bit); they draw from their own random stream, so turning one on
never changes the objects. :data:`APPEARANCES` names a few typical looks (light-sheet,
confocal, widefield) and :func:`draw_spec` draws a spec from ranges, for training data that
spans them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class SyntheticSpec:
    shape: tuple[int, ...] = (48, 96, 96)
    radius: tuple[float, float] = (5.0, 9.0)  # in-plane semi-axes range, voxels
    anisotropy: float = 1.0  # z semi-axes shrink by this before the random rotation (elongated objects)
    density: float = 0.6  # fraction of the volume covered by object centres' nominal volume
    overlap: float = 0.15  # allowed penetration of neighbours (makes touching objects)
    blur: float = 1.0  # gaussian sigma in-plane (z: sigma / anisotropy * 1.5)
    photons: float = 200.0  # brightest object expected photon count (Poisson noise)
    read_noise: float = 2.0  # gaussian noise sigma in photons
    background: float = 10.0
    # appearance (defaults: the looks of earlier versions)
    blur_z: float | None = None  # z sigma of the PSF, voxels; none: blur * 1.5 / anisotropy (blur when isotropic)
    brightness: tuple[float, float] = (0.4, 1.0)  # range of per-object brightness (1 = `photons`)
    texture: float = 0.6  # amplitude of the smooth internal texture
    chromatin: float = 0.0  # bright chromatin spots inside nuclei: relative brightness of the spots
    seam: float = 0.6  # intensity kept where two objects touch (1: no dark seam)
    attenuation: float = 0.0  # fraction of signal lost from the first to the last z plane (scattering)
    haze: float = 0.0  # out-of-focus and scattered light: smooth uneven background, relative to `photons`
    clusters: float = 0.0  # probability that an object is placed against an earlier one (touching clusters)
    irregularity: float = 0.0  # amplitude of smooth outline perturbation (0: ellipsoids)
    z_scale: float = 1.0  # z voxel size / xy voxel size: objects are made in physical space, then sampled


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
    aux = np.random.default_rng([seed, 0x5EED])  # appearance options only: the objects stay the same
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
    vox = np.ones(ndim)  # voxel size per axis, in xy voxels
    if ndim == 3:
        vox[0] = spec.z_scale
    nominal = (4 / 3 * np.pi if ndim == 3 else np.pi) * mean_r**ndim * np.prod(scale) / np.prod(vox)
    n_target = max(1, int(spec.density * np.prod(shape) / nominal))
    attempts = 0
    label = 0
    while label < n_target and attempts < 50 * n_target:
        attempts += 1
        semi = rng.uniform(*spec.radius, size=ndim) * scale
        c = rng.uniform(0, 1, size=ndim) * (np.array(shape) - 1)
        r_eff = float(np.mean(semi / scale))
        if spec.clusters and centres and aux.random() < spec.clusters:
            c = _against(centres, radii, r_eff, scale / vox, spec.overlap, np.array(shape) - 1, aux)
        # keep centres apart (objects may touch and slightly interpenetrate, never swallow)
        if any(np.linalg.norm((c - o) * vox / scale) < (1 - spec.overlap) * (r_eff + ro) for o, ro in zip(centres, radii)):
            continue
        centres.append(c)
        radii.append(r_eff)
        label += 1
        rot = _rotation(rng, ndim)
        ext = np.ceil(np.max(semi) / vox + 1).astype(int)
        lo = np.maximum(np.floor(c).astype(int) - ext, 0)
        hi = np.minimum(np.floor(c).astype(int) + ext + 1, shape)
        if np.any(hi <= lo):
            continue
        grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij")
        d = (np.stack([g - ci for g, ci in zip(grids, c)], axis=-1) * vox) @ rot
        r2 = np.sum((d / semi) ** 2, axis=-1).astype(np.float32)
        if spec.irregularity:
            r2 = _irregular(r2, d / semi, spec.irregularity, aux)
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        win = (r2 < 1.0) & (r2 < depth[sl])
        depth[sl][win] = r2[win]
        labels[sl][win] = label
    labels = _relabel_connected(labels)
    image = _render(labels, depth, spec, rng, aux)
    return image, labels


def _against(centres: list[np.ndarray], radii: list[float], r_eff: float, scale: np.ndarray, overlap: float,
             top: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A centre touching a random earlier object (at the sum of the radii, less half the allowed
    penetration, in a random direction), inside the volume."""
    j = int(rng.integers(len(centres)))
    direction = rng.normal(size=len(scale))
    direction /= np.linalg.norm(direction) or 1.0
    c = centres[j] + direction * (1 - overlap / 2) * (radii[j] + r_eff) * scale
    return np.clip(c, 0, top)


def _irregular(r2: np.ndarray, u: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    """Perturb an ellipsoid's normalised radius: lobes and asymmetry from cubic terms of the
    direction (smooth, so the outline stays one blob)."""
    norm = np.sqrt(np.maximum(r2, 1e-12))[..., None]
    direction = u / norm
    bump = np.zeros(r2.shape, dtype=np.float32)
    for _ in range(3):
        v = rng.normal(size=u.shape[-1])
        bump += rng.uniform(-1, 1) * (direction @ (v / np.linalg.norm(v))) ** 3
    return (r2 / (1 + amount * bump) ** 2).astype(np.float32)


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


def _render(labels: np.ndarray, depth: np.ndarray, spec: SyntheticSpec, rng: np.random.Generator,
            aux: np.random.Generator) -> np.ndarray:
    n = int(labels.max())
    brightness = np.concatenate([[0.0], rng.uniform(*spec.brightness, size=n)])
    inside = labels > 0
    img = np.zeros(labels.shape, dtype=np.float32)
    r2 = np.where(inside, depth, 1.0)
    texture = ndimage.gaussian_filter(rng.normal(size=labels.shape).astype(np.float32), 1.5)
    img[inside] = (brightness[labels[inside]] * (1.0 - 0.25 * r2[inside]) * (1 + spec.texture * texture[inside]))
    if spec.chromatin:
        spots = ndimage.gaussian_filter(aux.normal(size=labels.shape).astype(np.float32), 0.8)
        img[inside & (spots > 1.5 * spots.std())] *= 1 + spec.chromatin
    # a dark seam where objects touch makes boundaries visible but not trivial
    edges = np.zeros_like(inside)
    for ax in range(labels.ndim):
        diff = np.diff(labels, axis=ax) != 0
        both = np.diff(inside.astype(np.int8), axis=ax) == 0
        seam = diff & both & inside.take(range(labels.shape[ax] - 1), axis=ax)
        idx = [slice(None)] * labels.ndim
        idx[ax] = slice(0, -1)
        edges[tuple(idx)] |= seam
    img[edges] *= spec.seam
    sigma = [spec.blur] * labels.ndim
    if labels.ndim == 3:
        sigma[0] = spec.blur * 1.5 / max(spec.anisotropy, 1e-6) if spec.anisotropy > 1 else spec.blur
        if spec.blur_z is not None:
            sigma[0] = spec.blur_z
    img = ndimage.gaussian_filter(img, sigma)
    if spec.haze:
        img = img + spec.haze * _haze(img, aux)
    if spec.attenuation and labels.ndim == 3:
        z = np.arange(labels.shape[0], dtype=np.float32) / max(labels.shape[0] - 1, 1)
        img = img * np.exp(np.log1p(-min(spec.attenuation, 0.999)) * z)[:, None, None]
    photons = spec.background + spec.photons * np.clip(img, 0, None)
    noisy = rng.poisson(photons).astype(np.float32) + rng.normal(0, spec.read_noise, size=img.shape)
    return np.clip(noisy, 0, 65535).astype(np.uint16)


def _haze(signal: np.ndarray, rng: np.random.Generator, scale: float = 24.0) -> np.ndarray:
    """Out-of-focus and scattered light in [0, ~1]: half a wide blur of the signal, half a smooth
    random field (uneven illumination), both normalised to their maximum."""
    blurred = ndimage.gaussian_filter(signal, [max(1.0, s / 8) for s in signal.shape])
    coarse = rng.uniform(0, 1, size=[max(2, int(np.ceil(s / scale)) + 1) for s in signal.shape])
    field = ndimage.zoom(coarse, [s / c for s, c in zip(signal.shape, coarse.shape)], order=1, grid_mode=True,
                         mode="nearest")[tuple(slice(0, s) for s in signal.shape)]
    peak = float(blurred.max()) or 1.0
    return (0.5 * blurred / peak + 0.5 * field).astype(np.float32)


# Typical looks, for evaluation and as corners of the generalist's training ranges (voxels; z first).
APPEARANCES: dict[str, dict[str, Any]] = {
    # the bundled model's training look (pipeline demo)
    "demo": {"radius": (5.0, 10.0), "anisotropy": 2.0, "density": 0.25, "overlap": 0.0},
    # light-sheet: z 3x coarser with a PSF elongated along z, signal falling with depth, haze, few photons,
    # small dense nuclei in touching clusters
    "lightsheet": {"radius": (5.0, 8.0), "z_scale": 2.0, "density": 0.3, "overlap": 0.1, "clusters": 0.4,
                   "blur_z": 1.5, "attenuation": 0.5, "haze": 0.3, "photons": 60.0, "read_noise": 3.0,
                   "texture": 0.4, "chromatin": 0.5, "seam": 0.85, "brightness": (0.3, 1.0)},
    # the same, denser, z 2.5x coarser and fewer photons: a deep, crowded tissue
    "lightsheet-dense": {"radius": (5.0, 8.0), "z_scale": 2.5, "density": 0.35, "overlap": 0.1, "clusters": 0.4,
                         "blur_z": 1.5, "attenuation": 0.5, "haze": 0.3, "photons": 50.0, "read_noise": 3.0,
                         "texture": 0.4, "chromatin": 0.5, "seam": 0.85, "brightness": (0.3, 1.0)},
    # confocal: large isotropic nuclei with chromatin texture, bright and dim, touching
    "confocal": {"radius": (12.0, 20.0), "anisotropy": 1.0, "density": 0.35, "overlap": 0.1, "clusters": 0.3,
                 "texture": 0.8, "chromatin": 0.8, "irregularity": 0.25, "brightness": (0.15, 1.0), "photons": 120.0},
    # dense nuclei about 7 voxels across in z and 15 in-plane (z sampled ~2x coarser), like StarDist's 3D sample
    "stardist-like": {"radius": (6.5, 8.5), "z_scale": 2.1, "density": 0.45, "overlap": 0.1, "clusters": 0.6,
                      "blur_z": 1.0, "texture": 0.5, "seam": 0.8, "photons": 150.0, "brightness": (0.3, 1.0)},
    # widefield-like: strong haze, low contrast, mild anisotropy
    "widefield": {"radius": (5.0, 9.0), "anisotropy": 2.0, "density": 0.3, "overlap": 0.05, "blur": 1.5,
                  "haze": 0.8, "photons": 80.0, "seam": 0.9},
}


def appearance(name: str, **overrides: Any) -> SyntheticSpec:
    """The :data:`APPEARANCES` look ``name`` as a spec (fields overridable by keyword)."""
    if name not in APPEARANCES:
        raise ValueError(f"unknown appearance '{name}'; use one of {', '.join(APPEARANCES)}")
    return SyntheticSpec(**{**APPEARANCES[name], **overrides})


def partial_annotation(labels: np.ndarray, fraction: float, rng: np.random.Generator, ring: int = 2) -> np.ndarray:
    """What a person who labelled ``fraction`` of the objects would mark as annotated: those
    objects and a ring of ``ring`` voxels of background around them (they saw where each one
    ends), never a voxel of an object they left out."""
    ids = np.unique(labels[labels > 0])
    chosen = rng.choice(ids, size=max(1, round(fraction * ids.size)), replace=False) if ids.size else ids
    mine = np.isin(labels, chosen)
    near = ndimage.binary_dilation(mine, iterations=ring) if ring else mine
    return near & ((labels == 0) | mine)


def draw_spec(ranges: Mapping[str, Any], rng: np.random.Generator) -> SyntheticSpec:
    """A spec whose fields are drawn from ``ranges``: a ``[low, high]`` pair of a scalar field is
    drawn uniformly (log-uniformly for ``photons``); other values are used as given."""
    known = {f.name: f for f in fields(SyntheticSpec)}
    values: dict[str, Any] = {}
    for key, value in ranges.items():
        if key not in known:
            raise ValueError(f"unknown synthetic field '{key}'; use one of {', '.join(known)}")
        ranged = isinstance(value, list | tuple) and len(value) == 2 and key not in ("shape", "radius", "brightness")
        if not ranged:
            values[key] = tuple(value) if isinstance(value, list) else value
        elif key == "photons":
            values[key] = float(np.exp(rng.uniform(np.log(value[0]), np.log(value[1]))))
        else:
            values[key] = float(rng.uniform(value[0], value[1]))
    return SyntheticSpec(**values)
