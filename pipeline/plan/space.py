"""How much a run writes, and whether it fits.

``pipeline plan`` prints :func:`estimate` (segmentation, scratch, label image, objects, QC) and
the free space of the output's filesystem; ``pipeline run`` (and ``predict``) refuses to start
when that filesystem has clearly less free space than the run needs (:func:`check_space`).

Sizes are estimates: label arrays are compressed (zstd), so their size depends on the data.
The ratios below were measured on synthetic nuclei (``benchmarks/faults.py``, RESULTS.md);
the block faces' ids are compressed (:data:`FACE_ID_BYTES`), their evidence per fragment bounded
from below by :data:`FACE_VOXELS_PER_FRAGMENT`. A run is refused only when the free space is below
:data:`CLEARLY` times the estimate: an estimate off by that much is not a near miss.
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SpaceError
from ..runtime.markers import marked_blocks

if TYPE_CHECKING:
    from .labels import LabelTarget
    from .prepare import Prepared

logger = logging.getLogger(__name__)

# On disk, measured (benchmarks/faults.py `space`, RESULTS.md) on synthetic nuclei at 10-40% of the volume
# (blocks 24 x 48 x 48), the densest kept: bytes per voxel
LABELS_BYTES = 0.13  # uint32 labels, zstd: segmentation, each label image level, resampled labels
FRAGMENTS_BYTES = 0.11  # block-local fragment ids (uint32), zstd (scratch)
STATS_BYTES = 0.07  # partial object statistics (scratch)
OBJECT_BYTES = 0.05  # the objects table: Parquet parts and objects.csv
FLOAT_BYTES = 3.8  # float32 embeddings and foreground (predict), zstd: about incompressible
# bytes per voxel of the planes where blocks meet (faces): the seam records in qc/
SEAM_BYTES = 0.8
QC_BLOCK_BYTES = 128  # qc/blocks.npz per block
FACE_ID_BYTES = 0.5  # a face voxel's fragment id (uint64), zstd: measured 0.09-0.3 (RESULTS.md), kept high
EVIDENCE_ITEMSIZE = 8  # face evidence: float64 fragment means, one per fragment and plane
FACE_VOXELS_PER_FRAGMENT = 16  # face voxels per fragment of a plane, at least (dense small nuclei; usually more)
CLEARLY = 0.5  # refuse when free space is below this fraction of the estimate


@dataclass(frozen=True)
class Estimate:
    """Bytes the run writes, by part; ``scratch`` is removed when the run completes."""

    parts: dict[str, int]
    elsewhere: int = 0  # the label image under the input image (another folder, maybe another filesystem)

    @property
    def peak(self) -> int:
        """The most the output holds at once: everything, scratch included (removed at the end)."""
        return sum(self.parts.values())

    @property
    def final(self) -> int:
        return self.peak - self.parts.get("scratch", 0)

    def over_time(self, n: int) -> Estimate:
        """``n`` time points run one after the other: what each keeps, ``n`` times; the scratch of one."""
        return Estimate({k: v if k == "scratch" else v * n for k, v in self.parts.items()}, self.elsewhere * n)

    def describe(self) -> str:
        parts = ", ".join(f"{name} {gib(n)}" for name, n in self.parts.items())
        where = f"; label image under the input image {gib(self.elsewhere)}" if self.elsewhere else ""
        return f"about {gib(self.peak)} at the peak, {gib(self.final)} kept ({parts}{where})"


def gib(n: float) -> str:
    """Bytes in words: ``1.2 GiB``, ``340 MiB``, ``12 KiB``."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def face_planes(volume: tuple[int, ...], grid: tuple[int, ...]) -> int:
    """Voxels of the block planes that touch a neighbour, both sides of every face."""
    return sum(2 * (g - 1) * math.prod(v for b, v in enumerate(volume) if b != a) for a, g in enumerate(grid))


def evidence_bytes(run: Prepared) -> float:
    """Bytes of face evidence per face voxel and embedding dimension: connectivity keeps every voxel's
    float32 embedding; the other methods one float64 mean per fragment and plane (see
    :mod:`pipeline.runtime.faces`), :data:`FACE_VOXELS_PER_FRAGMENT` voxels of a plane each."""
    from ..clustering import resolve_params

    if resolve_params(run.config.clustering, run.checkpoint.info).method == "connectivity":
        return 4.0
    return EVIDENCE_ITEMSIZE / FACE_VOXELS_PER_FRAGMENT


def estimate(run: Prepared, target: LabelTarget | None, predict_only: bool = False) -> Estimate:
    """The output's size for ``run`` (``predict_only``: ``pipeline predict``'s arrays). The face
    files: per face voxel a compressed id and its share of the evidence (:func:`evidence_bytes`), plus a
    24-byte header per block."""
    plan, spec = run.plan, run.spec
    grid_voxels = math.prod(plan.volume)
    if predict_only:
        itemsize = 8 if run.config.model.precision == "float64" else 4
        return Estimate({"embeddings and foreground": int(grid_voxels * (spec.embed_dim + 1) * FLOAT_BYTES * itemsize / 4),
                         "scratch": 16 * len(plan)})
    voxels = math.prod(run.volume.shape)
    planes = face_planes(plan.volume, plan.grid)
    faces = planes * (FACE_ID_BYTES + spec.embed_dim * evidence_bytes(run)) + 24 * len(plan)
    scratch = grid_voxels * FRAGMENTS_BYTES + faces + voxels * STATS_BYTES + (grid_voxels * LABELS_BYTES if run.zoom else 0)
    segmentation = voxels * LABELS_BYTES
    # the label image's full-resolution level is the segmentation itself (written once, linked)
    labels = sum(math.prod(lv.shape) for lv in target.levels if lv.kind != "copy") * LABELS_BYTES if target else 0
    inside = target is None or target.mode == "standalone"
    return Estimate({"segmentation": int(segmentation if inside else 0), "scratch": int(scratch),
                     "label image": int(labels if inside else 0), "objects": int(voxels * OBJECT_BYTES),
                     "qc": int(planes * SEAM_BYTES + len(plan) * QC_BLOCK_BYTES)},
                    elsewhere=int(0 if inside else labels + segmentation))


def free_bytes(path: str | Path) -> int:
    """Free bytes (for this user) on the filesystem of ``path`` (its nearest existing folder)."""
    p = Path(path).absolute()
    base = next((a for a in (p, *p.parents) if a.exists()), Path("/"))
    return int(shutil.disk_usage(base).free)


def done_fraction(output: Path) -> float:
    """How much of an interrupted run's output exists already (its fragments stage's blocks)."""
    markers = output / "scratch" / "done_fragments"
    plan = output / "scratch" / "done_predict"
    folder = markers if markers.is_dir() else plan if plan.is_dir() else None
    if folder is None:
        return 0.0
    try:
        import zarr

        blocks = int(dict(zarr.open_group(str(output), mode="r").attrs)["pipeline"]["plan"]["blocks"])
    except Exception:  # noqa: BLE001 - not ours or unreadable: count nothing as done
        return 0.0
    return min(1.0, marked_blocks(folder) / max(blocks, 1))


def check_space(run: Prepared, target: LabelTarget | None, predict_only: bool = False, fraction: float = 1.0,
                timepoints: int = 1) -> Estimate:
    """Refuse to start (:class:`SpaceError`, with the numbers) when the output's filesystem has
    clearly less free space than the run needs; a resumed run needs only what is left. ``fraction``:
    the share of the plan's blocks a region run computes (its arrays hold only their chunks);
    ``timepoints``: a time-lapse of that many time points like ``run``'s."""
    need = estimate(run, target, predict_only).over_time(timepoints)
    if fraction < 1.0:
        need = Estimate({k: int(v * fraction) for k, v in need.parts.items()}, elsewhere=int(need.elsewhere * fraction))
    out = run.config.output
    if not out.check_space:
        return need
    left = need.peak
    if Path(out.path).exists() and not out.overwrite:
        left = int(need.peak * (1.0 - done_fraction(Path(out.path))))
    free = free_bytes(out.path)
    if free < CLEARLY * left:
        raise SpaceError(
            f"output.path '{out.path}': its filesystem has {gib(free)} free, and this run needs {need.describe()}"
            + (f", {gib(left)} of it still to write" if left != need.peak else "")
            + "; free space, choose another output.path, or set output.check_space: false if the estimate is wrong "
            "for this data", str(out.path))
    if free < left:
        logger.warning("output.path '%s': %s free, this run may need %s; it may run out of space", out.path,
                       gib(free), need.describe())
    return need


def space_summary(run: Prepared, target: LabelTarget | None, timepoints: int = 1) -> dict[str, Any]:
    """What ``pipeline plan`` prints about space (``timepoints``: of a time-lapse like ``run``)."""
    need = estimate(run, target).over_time(timepoints)
    return {"output_size": need.describe(), "output_free_space": gib(free_bytes(run.config.output.path))}
