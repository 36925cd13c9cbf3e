"""The input's intensity statistics for ``percentile`` normalisation, from data the volume holds.

A lattice of chunks spread over the volume misses the data of a sparse volume (an embryo in a
large field, a cleared organ in its bath): every chunk it picks may be one the store never wrote,
which reads as the fill value, and the percentiles collapse to (fill, fill). So:

* the sample is drawn from the chunks the store lists (:func:`pipeline.plan.empty.stored_chunks`,
  the listing empty-space skipping already takes), spread evenly over them; an input that cannot
  be listed (TIFF, HDF5) is sampled on the lattice of all its chunks;
* the fill value is left out of the sample where the volume is mostly fill (absent chunks count
  as fill), so the percentiles describe the objects and their surroundings, not the bath;
* a degenerate result (high <= low) is refused with the fixes, never normalised by a scale of 1,
  unless the sample is the whole stored volume and holds one value (every block is then empty);
* a volume whose store holds no chunk at all is all fill: every block is empty and skipped, and
  the statistics place the fill value at 0 so it reads as background.

:class:`IntensityStats` records what the numbers came from: ``pipeline plan`` prints it and the
run's provenance keeps it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..geometry import Box
from ..network.model import Normalisation
from ..network.predict import NormStats
from ..volume.errors import InputError
from ..volume.input_volume import InputVolume
from .empty import stored_chunks

SAMPLE_VOXELS = 1 << 23  # at most this many voxels read for the statistics
MOSTLY_FILL = 0.5  # leave the fill value out where more of the volume than this is fill


@dataclass(frozen=True)
class IntensityStats:
    """Normalisation constants and where they came from."""

    stats: NormStats
    low: float  # the percentiles (or the fixed offset and offset + scale)
    high: float
    source: str  # in words, e.g. "12 of 4096 chunks (the stored ones), 8.4 Mvox, fill value 0 left out"
    voxels: int = 0  # voxels the percentiles were taken over
    chunks_sampled: int = 0
    chunks_stored: int | None = None  # None: the store could not be listed
    chunks_total: int = 0
    fill_excluded: bool = False

    def record(self) -> dict[str, Any]:
        """What the run's provenance and ``pipeline plan`` show."""
        return {"offset": self.stats.offset, "scale": self.stats.scale, "low": self.low, "high": self.high,
                "source": self.source, "voxels": self.voxels, "chunks_sampled": self.chunks_sampled,
                "chunks_stored": self.chunks_stored, "chunks_total": self.chunks_total,
                "fill_excluded": self.fill_excluded}


def spread(n_items: int, n: int) -> np.ndarray:
    """``n`` indices spread evenly over ``range(n_items)`` (all of them when ``n >= n_items``)."""
    return np.unique(np.linspace(0, n_items - 1, max(1, min(n, n_items))).round().astype(np.int64))


def sample_boxes(vol: InputVolume, stored: np.ndarray | None, cell: tuple[int, ...] | None,
                 max_voxels: int = SAMPLE_VOXELS) -> list[Box]:
    """Whole chunks to read, spread evenly: over the stored cells of ``stored`` (one flag per
    cell of spatial size ``cell``; a cell is a chunk, or a shard of several chunks, whose central
    chunk is taken), or over every chunk when ``stored`` is None. Deterministic; never more than
    ``max_voxels`` voxels (at least one chunk)."""
    chunks = vol.chunks
    n = max(1, max_voxels // max(math.prod(chunks), 1))
    volume = Box.from_shape(vol.shape)
    if stored is None or cell is None:
        grid = [-(-s // c) for s, c in zip(vol.shape, chunks, strict=True)]
        picks = [np.unravel_index(int(k), grid) for k in spread(math.prod(grid), n)]
        return [Box(tuple(int(i) * c for i, c in zip(idx, chunks, strict=True)), chunks).intersect(volume)
                for idx in picks]
    cells = np.flatnonzero(stored.ravel())
    out = []
    for k in spread(len(cells), n):
        idx = np.unravel_index(int(cells[k]), stored.shape)
        start = []
        for i, cs, c, size in zip(idx, cell, chunks, vol.shape, strict=True):
            lo, hi = int(i) * cs, min((int(i) + 1) * cs, size)
            start.append(lo + ((hi - lo) // 2 // c) * c)  # the chunk at the cell's centre
        out.append(Box(tuple(start), chunks).intersect(volume))
    return out if cells.size else []


def percentile_stats(sample: np.ndarray, fill: float | None, absent_fraction: float, low: float,
                     high: float) -> tuple[float, float, int, bool]:
    """``(p_low, p_high, voxels, fill_excluded)`` of the finite values of ``sample`` (drawn from the
    stored chunks). The fill value is left out when the volume is mostly fill: the absent part of
    the volume (``absent_fraction``) plus the fill voxels of the sample, scaled to the stored part;
    otherwise the absent part counts as fill voxels, as in the volume."""
    finite = sample[np.isfinite(sample)]
    excluded = False
    if fill is not None and np.isfinite(fill) and finite.size:
        at_fill = finite == fill
        fill_fraction = absent_fraction + (1.0 - absent_fraction) * float(at_fill.mean())
        if fill_fraction > MOSTLY_FILL and not at_fill.all():
            finite, excluded = finite[~at_fill], True
        elif absent_fraction > 0:  # the absent chunks hold the fill value: they count as they are in the volume
            extra = round(finite.size * absent_fraction / (1.0 - absent_fraction))
            finite = np.concatenate([finite, np.full(extra, fill, dtype=finite.dtype)])
    if finite.size == 0:
        return math.nan, math.nan, 0, excluded
    lo, hi = np.percentile(finite, [low, high])
    return float(lo), float(hi), int(finite.size), excluded


def degenerate(where: str, low: float, high: float, source: str) -> InputError:
    """The refusal of statistics that cannot normalise (high <= low)."""
    what = "no finite voxel" if math.isnan(low) else f"low {low:.6g} >= high {high:.6g}"
    return InputError(
        f"input {where}: the intensity percentiles for normalisation are degenerate ({what}; from {source}); "
        "set fixed values with model.normalisation: {kind: scale, offset: <background>, scale: <bright - "
        "background>}, or give empty.mask to sample inside the specimen")


def intensity_stats(vol: InputVolume, norm: Normalisation, override: Normalisation | None = None,
                    listing: tuple[np.ndarray, tuple[int, ...]] | bool | None = True) -> IntensityStats:
    """The run's normalisation constants: fixed ones (``override`` or the model's ``scale``
    kind), else percentiles of a sample of the chunks the store holds. ``listing``: the store's
    :func:`~pipeline.plan.empty.stored_chunks` when already taken (True: take it here)."""
    norm = override or norm
    if norm.kind == "scale":
        stats = NormStats.from_values(norm, 0.0, 1.0)
        return IntensityStats(stats, norm.offset, norm.offset + norm.scale, "fixed (model.normalisation: scale)")
    found = stored_chunks(vol) if listing is True else listing
    stored, cell = found if isinstance(found, tuple) else (None, None)
    fill = getattr(vol.array, "fill_value", None)
    fill = float(fill) if fill is not None and np.asarray(fill).dtype.kind in "uif" else None
    total = math.prod(-(-s // c) for s, c in zip(vol.shape, vol.chunks, strict=True))
    n_stored = int(stored.sum()) if stored is not None else None
    if stored is not None and n_stored == 0:  # all fill: every block is skipped as empty
        offset = fill if fill is not None and np.isfinite(fill) else 0.0
        return IntensityStats(NormStats(offset, 1.0), offset, offset + 1.0, "no stored chunk: the volume is all "
                              "fill value, every block empty", chunks_stored=0, chunks_total=total)
    boxes = sample_boxes(vol, stored, cell)
    sample = np.concatenate([vol.read(b).ravel() for b in boxes])
    absent = 0.0 if stored is None else 1.0 - float(stored.mean())
    low, high, voxels, excluded = percentile_stats(sample, fill, absent, norm.low, norm.high)
    of = (f"{len(boxes)} of the {n_stored} stored chunks ({total} in the grid)" if stored is not None and absent
          else f"{len(boxes)} of {total} chunks (a lattice)")
    source = f"percentiles {norm.low:g}/{norm.high:g} of {voxels / 1e6:.2f} Mvox in {of}" + \
             (f", fill value {fill:g} left out" if excluded else "")
    if not high > low:
        values = np.unique(sample[np.isfinite(sample)])
        if values.size == 1 and len(boxes) == (n_stored if n_stored is not None else total):
            # the sample is the whole (stored) volume and holds one value: every block is empty
            return IntensityStats(NormStats(float(values[0]), 1.0), float(values[0]), float(values[0]) + 1.0,
                                  f"every stored voxel is {values[0]:g} ({len(boxes)} chunks read): every block "
                                  "empty", int(sample.size), len(boxes), n_stored, total)
        raise degenerate(vol.where or repr(vol.path), low, high, source)
    return IntensityStats(NormStats.from_values(norm, low, high), low, high, source, voxels, len(boxes), n_stored,
                          total, excluded)
