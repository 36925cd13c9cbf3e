"""``input.diameter: auto``: the objects' size measured by the model itself, before planning.

The model segments a few sampled boxes of the input at a ladder of isotropic zooms (1/4 to 1: the
input is never upsampled for a measurement, interpolated data makes the model split objects); at each
zoom the objects that touch no face of a box are measured
(:func:`~pipeline.qc.metrics.diameters_per_object`) and their size taken back to input voxels. An
object's true size does not depend on the zoom it is looked at, so where the model resolves the
objects, the measurements of neighbouring zooms agree; below it the objects are too small for the
network and merge, above it they are larger than it was trained on and split (the measured size
collapses). The estimate is that of the two neighbouring zooms that agree best, then measured once
more between them with the axes where the objects are smaller (flat light-sheet nuclei in z) zoomed
up to look as large as on the largest axis; that measurement is taken when it stays within 25% of
the ladder's on every axis.

The run resamples by one zoom for every axis, from the in-plane size (:func:`auto_zoom`, like a
single-number ``input.diameter`` or cellpose's ``diameter``), and only where that size is outside the
+-30% the model tolerates: resampling one axis by interpolation lowered AP on every anisotropic look,
even with the ground truth's size, and resampling within the tolerance only smooths (RESULTS.md).

Everything is deterministic (fixed boxes, fixed zooms, the model on the CPU) so that ``pipeline
plan`` and the run agree; a rerun of a begun output keeps its zoom (:func:`begun_zoom`). Cost: six
forward passes of three boxes of about 0.3 Mvox at the model's scale (RESULTS.md).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import Config
from ..geometry import Box
from ..network.checkpoint import Checkpoint
from ..network.predict import NormStats, Predictor
from ..qc.metrics import diameters_per_object
from ..volume.resample import TOLERATED, ZoomedVolume, zoom_factors

logger = logging.getLogger(__name__)

LADDER = tuple(2.0 ** (k / 2) for k in range(-4, 1))  # isotropic zooms tried: 0.25 ... 1 (never upsampled)
AGREE = 0.25  # a refined measurement further than this from the ladder's is not taken
BOXES = 3  # boxes sampled (those with the most foreground-bright voxels among the probes)
MIN_OBJECTS = 6  # interior objects a zoom needs for a measurement
MIN_VOXELS = 8  # an object's voxels (at the model's scale) to be measured


class DiameterUnknown(ValueError):
    """No zoom of the ladder gave enough whole objects to measure."""


@dataclass(frozen=True)
class Measurement:
    """What the model's fragments measured at one zoom."""

    zoom: tuple[float, ...]
    diameter: tuple[float, ...] | None  # input voxels per axis (None: too few whole objects)
    objects: int


@dataclass(frozen=True)
class SizeEstimate:
    """``input.diameter: auto``'s result, for the plan and the log."""

    diameter: tuple[float, ...]  # input voxels per axis
    steps: tuple[Measurement, ...]  # the ladder, then the refinement
    boxes: int
    seconds: float

    def describe(self) -> str:
        ladder = ", ".join(f"x{m.zoom[-1]:.2f}: " + ("-" if m.diameter is None else
                                                    "/".join(f"{d:.1f}" for d in m.diameter))
                           for m in self.steps[:len(LADDER)])
        return (f"measured {[round(d, 1) for d in self.diameter]} voxels (model's fragments in {self.boxes} "
                f"sampled boxes, {self.steps[-1].objects} whole objects; ladder {ladder}; {self.seconds:.1f} s)")


Segmenter = Callable[[np.ndarray], np.ndarray]  # raw (C, *read) block -> labels of its (*write) centre


def box_shape(trained: Sequence[float], step: Sequence[int]) -> tuple[int, ...]:
    """The output box at the model's scale: about 8 training diameters in-plane, 3 along z
    (3D), a multiple of the model's ``step``: tens of whole objects per box."""
    factors = [3.0] + [8.0] * (len(trained) - 1) if len(trained) == 3 else [8.0] * len(trained)
    return tuple(max(s, s * round(f * d / s)) for f, d, s in zip(factors, trained, step, strict=True))


def probe_centres(volume: object, stats: NormStats, count: int = BOXES, per_axis: int = 4) -> list[tuple[int, ...]]:
    """Centres (input voxels) of the ``count`` boxes to measure: a grid of small probes over the
    volume, ranked by how many of their voxels are brighter than half the normalised range (where
    objects are; ties: grid order). Deterministic."""
    shape = volume.shape  # type: ignore[attr-defined]
    probe = tuple(min(n, p) for n, p in zip(shape, (16, 64, 64)[-len(shape):], strict=True))
    grids = [sorted({round((n - p) * (k + 0.5) / per_axis) for k in range(per_axis)})
             for n, p in zip(shape, probe, strict=True)]
    scored = []
    for offset in np.stack(np.meshgrid(*grids, indexing="ij"), -1).reshape(-1, len(shape)):
        data = volume.read(Box(tuple(int(o) for o in offset), probe))  # type: ignore[attr-defined]
        bright = float(((data.astype(np.float32) - stats.offset) / stats.scale > 0.5).mean())
        scored.append((-bright, tuple(int(o + p // 2) for o, p in zip(offset, probe, strict=True))))
    scored.sort(key=lambda t: t[0])  # stable: grid order breaks ties
    return [c for _, c in scored[:count]]


def measure(volume: object, zoom: tuple[float, ...], centres: Sequence[tuple[int, ...]], out: tuple[int, ...],
            context: tuple[int, ...], step: tuple[int, ...], segment: Segmenter) -> Measurement:
    """Segment the boxes around ``centres`` on the grid resampled by ``zoom`` and measure the whole
    objects: the median per axis over all boxes' objects, in input voxels."""
    grid = ZoomedVolume(volume, zoom) if any(z != 1.0 for z in zoom) else volume
    shape = grid.shape  # type: ignore[attr-defined]
    found = []
    size = tuple(max(st, min(o, n) // st * st) for o, n, st in zip(out, shape, step, strict=True))
    for centre in centres:
        start = tuple(max(0, min(round(c * z) - s // 2, n - s))
                      for c, z, s, n in zip(centre, zoom, size, shape, strict=True))
        read = Box(tuple(s - c for s, c in zip(start, context, strict=True)),
                   tuple(s + 2 * c for s, c in zip(size, context, strict=True)))
        labels = segment(grid.read(read))  # type: ignore[attr-defined]
        labels = labels[tuple(slice(0, min(s, n - a)) for s, n, a in zip(size, shape, start, strict=True))]
        found.append(diameters_per_object(labels, MIN_VOXELS, interior=True))
    each = np.concatenate(found) if found else np.empty((0, len(zoom)))
    if len(each) < MIN_OBJECTS:
        return Measurement(zoom, None, len(each))
    return Measurement(zoom, tuple(float(d / z) for d, z in zip(np.median(each, axis=0), zoom, strict=True)),
                       len(each))


def plateau(steps: Sequence[Measurement]) -> tuple[int, tuple[float, ...]]:
    """The ladder's estimate: the mean per axis of the two neighbouring zooms whose measurements
    agree best (the smallest ratio of their geometric-mean sizes; ties: the smaller zooms), and the
    index of the first of them."""
    pairs = [(abs(float(np.mean(np.log(a.diameter)) - np.mean(np.log(b.diameter)))), k)
             for k, (a, b) in enumerate(itertools.pairwise(steps))
             if a.diameter is not None and b.diameter is not None]
    if not pairs:
        raise DiameterUnknown("no two neighbouring zooms gave enough whole objects")
    k = min(pairs)[1]
    return k, tuple(float(v) for v in np.mean([steps[k].diameter, steps[k + 1].diameter], axis=0))


def refined_zoom(zoom: float, diameter: Sequence[float]) -> tuple[float, ...]:
    """The plateau's ``zoom`` per axis, raised on the axes where the objects are smaller than on
    the largest one so that they appear as large as there (at most 1): flat objects (light-sheet
    nuclei in z) are then as large as the network resolves on every axis."""
    big = max(diameter)
    return tuple(min(1.0, zoom * big / d) for d in diameter)


def agrees(refined: Sequence[float], estimate: Sequence[float]) -> bool:
    """Whether a refined measurement is within :data:`AGREE` (relative) of the ladder's on every
    axis (a larger change means the model split or merged the objects at that zoom)."""
    return all(abs(math.log(r / e)) <= math.log1p(AGREE) for r, e in zip(refined, estimate, strict=True))


def estimate_diameter(volume: object, stats: NormStats, trained: Sequence[float], context: tuple[int, ...],
                      step: tuple[int, ...], segment: Segmenter) -> SizeEstimate:
    """Measure the objects' diameter (input voxels per axis): the ladder's plateau, then one
    measurement at the plateau's zoom with the anisotropy evened out (:func:`refined_zoom`)."""
    t0 = time.perf_counter()
    out = box_shape(trained, step)
    centres = probe_centres(volume, stats)
    ndim = len(trained)
    steps = [measure(volume, (z,) * ndim, centres, out, context, step, segment) for z in LADDER]
    k, diameter = plateau(steps)
    zoom = refined_zoom(math.sqrt(steps[k].zoom[0] * steps[k + 1].zoom[0]), diameter)
    steps.append(measure(volume, zoom, centres, out, context, step, segment))
    refined = steps[-1].diameter
    if refined is not None and agrees(refined, diameter):
        diameter = refined
    estimate = SizeEstimate(diameter, tuple(steps), len(centres), time.perf_counter() - t0)
    logger.info("input.diameter auto: %s", estimate.describe())
    return estimate



def model_segmenter(checkpoint: Checkpoint, cfg: Config, stats: NormStats) -> Segmenter:
    """The run's model and clustering on the CPU (the same estimate wherever the client runs)."""
    from ..clustering import make_method, resolve_params

    predictor = Predictor(checkpoint.model, device="cpu")
    method = make_method(resolve_params(cfg.clustering, checkpoint.info), backend=cfg.clustering.backend, device="cpu")

    def segment(block: np.ndarray) -> np.ndarray:
        out = predictor(block, stats)
        return method.fragments(out[:-1], out[-1])

    return segment


def begun_zoom(cfg: Config) -> tuple[tuple[float, ...] | None] | None:
    """``(zoom,)``: the zoom (None: unzoomed) an output at ``output.path`` was begun with by a run
    of this input (not with ``output.overwrite``), so that a rerun resumes rather than measures
    again (a measurement is deterministic on one machine, not across CPUs); a time-lapse's time
    point after the first: the first's (objects keep one scale over the movie). None: no such output."""
    out = Path(cfg.output.path)
    first = out.parent / "t00000"  # a time-lapse's later time point (pipeline.runtime.timelapse's layout): the
    if (cfg.input.timepoint is not None and out.parent.name == "timepoints" and not (out / "zarr.json").is_file()
            and (first / "zarr.json").is_file()):  # zoom of its first, one scale for the whole movie
        out = first
    if cfg.output.overwrite or not (out / "zarr.json").is_file():
        return None
    import zarr

    resume = dict(zarr.open_group(str(out), mode="r").attrs).get("resume") or {}
    recorded = resume.get("input") or {}
    if recorded.get("path") != str(Path(cfg.input.path).resolve()) or recorded.get("dataset") != cfg.input.dataset:
        return None
    zoom = resume.get("zoom")
    logger.info("input.diameter auto: %s was begun with zoom %s; kept (not measured again)", out, zoom)
    return (None if zoom is None else tuple(float(z) for z in zoom),)


def inplane(diameter: Sequence[float]) -> float:
    """The in-plane size of a measured diameter: the geometric mean of y and x (every axis of a
    2D model), the one number the run's zoom follows."""
    axes = diameter[-2:]
    return float(math.exp(sum(math.log(d) for d in axes) / len(axes)))


def auto_zoom(diameter: Sequence[float], trained: Sequence[float], ndim: int, where: str) -> tuple[float, ...] | None:
    """The run's zoom for a measured ``diameter``: one for every axis, from the in-plane size (like
    a single-number ``input.diameter``), and none while that is within the +-30% the model
    tolerates (:data:`~pipeline.volume.resample.TOLERATED`; resampling by 0.85 lowered AP@0.5 on
    the stardist-like look from 0.65 to 0.49, RESULTS.md)."""
    zoom = zoom_factors(inplane(diameter), trained, ndim, where)
    if zoom is None or all(abs(math.log(z)) <= math.log1p(TOLERATED) for z in zoom):
        return None
    return zoom
