"""The ``labels`` stage: the segmentation as an OME-Zarr label image, a pyramid written level
by level, blockwise (see :mod:`pipeline.volume.ome` and, for its metadata, :mod:`pipeline.volume.ome_metadata`).

Each level is cut into whole-chunk task boxes; a task reads what its box needs of the level
it comes from (the ``segmentation``, or the level before), resamples it label-safely and
writes its box, so no task ever holds more than one box and its source. Boxes are marked done
per level and task (``scratch/done_labels_<level>/<first>-<last>-<count>.json``, see
:mod:`pipeline.stages.base`) and a resumed run skips finished ones. The group
gets its metadata, and the ``labels`` group its entry, once every level is written.

One copy of the labels: the group is opened (:func:`open_label_image`) before relabelling, and
the level at the segmented resolution is the ``segmentation`` array itself (a
:class:`~pipeline.runtime.links.Link`: relabel or restore write it there, and the output group holds a
symbolic link ``segmentation`` to it), so this stage writes only the other levels. Where the
output's filesystem takes no links (:func:`pipeline.plan.labels.linkable`), that level is a copy, written here.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import zarr

from ..geometry import Box
from ..plan.blocks import BlockPlan
from ..plan.empty import any_within
from ..plan.labels import LabelTarget, recorded_output
from ..plan.shards import shard_shape
from ..runtime.engine import Batch, Engine
from ..runtime.integrity import owned_chunks
from ..runtime.store import Store
from ..runtime.tasks import batched
from ..volume.io import create_array, open_array, open_group, write_region
from ..volume.ome import Level, downsample_labels, nearest_indices
from ..volume.ome_metadata import labels_list
from .base import damaged_markers
from .relabel import SEGMENTATION

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

def open_label_image(store: Store, target: LabelTarget) -> bool:
    """Client side, before anything writes the segmentation: the label image group, new
    (replacing what :func:`pipeline.plan.labels.check_labels` allowed; True) or the one this output's interrupted run
    began (False). Its levels are created when they are written (:meth:`LabelsStage.run`)."""
    if store.has_markers(LabelsStage.name) and recorded_output(target.group) == str(Path(store.path).resolve()):
        return False
    new_label_group(target, Path(store.path))
    store.clear_markers_of(f"{LabelsStage.name}_")  # a resumed run that now writes another label image
    store.create_markers(LabelsStage.name)
    return True


def new_label_group(target: LabelTarget, output: Path) -> None:
    """The label image's group, empty (what was there removed), recording the run ``output`` that
    writes it; the ``labels`` group above it made where there is none."""
    t = target
    if t.group.exists():
        shutil.rmtree(t.group)
    labels = zarr.open_group(str(t.labels_group), mode="a", zarr_format=t.zarr_format)  # type: ignore[arg-type]
    if not dict(labels.attrs):  # a new labels group: valid and empty until the label image is complete
        labels.attrs.put({"labels": []} if t.version == "0.4" else {"ome": {"version": t.version, "labels": []}})
    group = zarr.open_group(str(t.group), mode="w", zarr_format=t.zarr_format)  # type: ignore[arg-type]
    group.attrs.update({"pipeline": {"output": str(output.resolve()), "complete": False}})


@dataclass(frozen=True)
class Occupied:
    """Where the segmentation can hold labels: one flag per block of the run's plan (False: the
    block holds no fragment, its labels are the fill value), ``write`` voxels per block, on the
    grid the blocks cover, ``zoom`` times the segmentation's (input.diameter) when given."""

    flags: np.ndarray  # bool, the plan's grid
    write: tuple[int, ...]
    zoom: tuple[float, ...] | None = None

    def boxes(self, plan: BlockPlan, scale: Sequence[float]) -> np.ndarray:
        """One flag per block of ``plan`` (a label level's task boxes; ``scale``: segmentation
        voxels per level voxel): True where the box may hold a label. Conservative by one voxel
        where coordinates are not integer multiples (upsampled levels, resampling)."""
        zoom = self.zoom or (1.0,) * plan.ndim
        ranges = []
        for a in range(plan.ndim):
            starts = np.arange(plan.grid[a], dtype=np.int64) * plan.write_shape[a]
            stops = np.minimum(starts + plan.write_shape[a], plan.volume[a])
            f = scale[a] * zoom[a]
            exact = float(f).is_integer()
            lo = starts * int(f) if exact else np.floor(starts * f).astype(np.int64) - 1
            hi = stops * int(f) if exact else np.ceil(stops * f).astype(np.int64) + 1
            ranges.append((np.maximum(lo, 0), hi))
        return any_within(self.flags, self.write, ranges)


def level_scales(levels: Sequence[Level]) -> list[tuple[float, ...]]:
    """Segmentation voxels per voxel of each level (1 for its copy, 1/f upsampled, the product
    of the factors down the chain)."""
    out: list[tuple[float, ...]] = []
    for level in levels:
        if level.kind == "copy":
            out.append((1.0,) * len(level.shape))
        elif level.kind == "up":
            out.append(tuple(1.0 / f for f in level.factors))
        else:
            out.append(tuple(s * f for s, f in zip(out[level.source], level.factors, strict=True)))
    return out


def _level_plan(level: Level, shards: Sequence[int] | None = None) -> BlockPlan:
    """The level's task boxes: whole chunks, or whole shards of a sharded level (one writer each)."""
    nd = len(level.shape)
    return BlockPlan(level.shape, tuple(shards) if shards else level.task_shape, (0,) * nd, (1,) * nd)


class LabelsStage:
    """Writes the label image's levels (client: :meth:`run`; tasks: :meth:`write`)."""

    name = "labels"

    def __init__(self, store: Store, target: LabelTarget, dtype: str, occupied: Occupied | None = None,
                 shards: str | tuple[int, ...] = "none") -> None:
        self.store = store
        self.shards = shards  # output.shards
        self.target = target
        self.dtype = dtype
        self.occupied = occupied  # where the segmentation can hold labels (None: anywhere)
        self.resumed = 0
        self.skipped = 0  # task boxes over empty space: never tasks, the fill value (0) stands

    def marker(self, level: Level) -> str:
        return f"{self.name}_{level.path}"

    # ------------------------------------------------------------ worker side

    def _compute(self, level: Level, box: Box) -> np.ndarray:
        if level.kind == "copy":
            return np.asarray(self.store.array(SEGMENTATION, mode="r")[box.to_slices()])
        if level.kind == "up":
            seg = self.store.array(SEGMENTATION, mode="r")
            index = [nearest_indices(o, s, f, n)
                     for o, s, f, n in zip(box.offset, box.shape, level.factors, seg.shape, strict=True)]
            lo = [int(i[0]) for i in index]
            data = np.asarray(seg[tuple(slice(a, int(i[-1]) + 1) for a, i in zip(lo, index, strict=True))])
            return data[np.ix_(*(i - a for i, a in zip(index, lo, strict=True)))]
        src = open_array(self.target.group / self.target.levels[level.source].path, mode="r")
        read = Box(tuple(o * f for o, f in zip(box.offset, level.factors, strict=True)),
                   tuple(s * f for s, f in zip(box.shape, level.factors, strict=True))).intersect(Box.from_shape(src.shape))
        coarse = downsample_labels(np.asarray(src[read.to_slices()]), level.factors)
        out = np.zeros(box.shape, coarse.dtype)  # an image level one voxel longer than ceil(n / f): background
        fit = tuple(slice(0, min(a, b)) for a, b in zip(box.shape, coarse.shape, strict=True))
        out[fit] = coarse[fit]
        return out

    def _shard(self, level: Level, box: Box) -> np.ndarray:
        """A whole shard's labels, computed in boxes of :attr:`Level.task_shape` (the memory one task of
        an unsharded level takes) into one buffer, so the shard file is written once."""
        out = np.zeros(box.shape, self.dtype)
        for part in BlockPlan(box.shape, level.task_shape, (0,) * box.ndim, (1,) * box.ndim):
            out[part.valid.to_slices()] = self._compute(level, part.valid.shift(box.offset))
        return out

    def write(self, linears: Batch, index: int) -> int:
        """Compute and write the task boxes ``linears`` of level ``index``; mark them done."""
        level = self.target.levels[index]
        arr = open_array(self.target.group / level.path)
        plan = _level_plan(level, getattr(arr, "shards", None))
        for i in linears:
            block = plan.block_at(i)
            write_region(arr, block.valid.to_slices(), self._shard(level, block.valid) if getattr(arr, "shards", None)
                         else self._compute(level, block.valid))
        if len(linears):  # one marker file per task, vouching for the chunks it alone wrote
            boxes = [plan.block_at(i).valid for i in linears]
            self.store.mark_done(self.marker(level), linears,
                                 files=owned_chunks(arr, self.target.group / level.path, boxes))
        return len(linears)

    # ------------------------------------------------------------ client side

    @property
    def linked(self) -> bool:
        """Whether the segmentation is this label image's copy level (written by relabel/restore)."""
        return self.store.link(SEGMENTATION) is not None

    def run(self, engine: Engine) -> Path:
        """Write every level not written yet (finer, then coarser; the copy of the segmentation too
        when it is not :attr:`linked`), then the metadata."""
        t = self.target
        open_label_image(self.store, t)
        dims = [a["name"] for a in t.axes]
        order = sorted(range(len(t.levels)), key=lambda i: (t.levels[i].kind != "copy", t.levels[i].kind == "up", i))
        for i in order:
            level = t.levels[i]
            if level.kind == "copy" and self.linked:
                continue
            if not self.store.has_markers(self.marker(level)):  # not begun, or reset with the segmentation
                create_array(open_group(t.group), level.path, level.shape, level.chunks, self.dtype, overwrite=True,
                             dims=dims, shards=shard_shape(self.shards, level.shape, level.chunks))
                self.store.create_markers(self.marker(level))
            plan = _level_plan(level, getattr(open_array(t.group / level.path, mode="r"), "shards", None))
            index = self.store.index(self.marker(level), len(plan))
            damaged = damaged_markers(engine, self.store, self.marker(level), index, content=False)
            if damaged:
                self.store.drop_markers(self.marker(level), [n for n, _ in damaged])
            done = self.store.done(self.marker(level), len(plan))
            self.resumed += int(done.sum())
            wanted = ~done
            if self.occupied is not None:
                held = self.occupied.boxes(plan, level_scales(t.levels)[i])
                self.skipped += int((wanted & ~held).sum())
                wanted &= held
            todo = np.flatnonzero(wanted)
            for _ in engine.map(self.write, batched(todo, 1), i, desc=f"{self.name} {level.path}"):
                pass
        self.finish()
        logger.info("labels: %d levels %s -> %s (%d task boxes resumed, %d over empty space skipped%s)", len(t.levels),
                    [list(lv.shape) for lv in t.levels], t.group, self.resumed, self.skipped,
                    f"; level {t.copy.path} is the segmentation" if self.linked else "")
        return t.group

    def finish(self) -> None:
        t = self.target
        group = open_group(t.group)
        group.attrs.put(t.attrs(Path(self.store.path)))
        labels = open_group(t.labels_group)
        labels.attrs.put(labels_list(dict(labels.attrs), t.version, t.name))


__all__ = ["LabelsStage", "Occupied", "open_label_image"]
