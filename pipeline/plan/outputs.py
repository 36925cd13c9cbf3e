"""What a ``segment`` run writes, planned in one place before the engine opens: the output group
(may it be created or resumed), the region of a region run and the blocks it computes, the label
image (:mod:`pipeline.plan.labels`), the blocks known empty from the input store's listing, and the
space all of it needs (:mod:`pipeline.plan.space`). Everything here reads metadata only and writes
nothing: a run that would be refused fails before a cluster starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..geometry import Box
from ..runtime.output import check_output
from ..stages.scan import listed_empty
from .labels import LabelTarget, check_labels, label_target
from .prepare import Prepared
from .region import (
    RegionError,
    RegionRecord,
    computed_box,
    covering_blocks,
    input_box,
    region_box,
    zoomed_region,
)
from .space import Estimate, check_space


@dataclass(frozen=True)
class Area:
    """A region run's boxes: the region and the computed box, on the input grid and on the grid
    the blocks cover (the same without ``input.diameter``)."""

    requested: Box
    grid: Box
    computed_grid: Box
    computed: Box

    def record(self, blocks: int, edge: np.ndarray) -> RegionRecord:
        return RegionRecord(self.requested, self.computed, blocks, tuple(int(i) for i in edge))

    def to_json(self) -> list[list[int]]:
        return [list(self.requested.offset), list(self.requested.shape)]


def region_area(run: Prepared, region: Box) -> Area:
    """The boxes of a region run over ``region`` (input voxels; clipped to the volume)."""
    shape = run.volume.shape
    if not isinstance(region, Box):
        raise RegionError(f"region must be a pipeline.geometry.Box, got {type(region).__name__}")
    requested = region_box(list(zip(region.offset, region.end, strict=True)), shape)
    if run.zoom is None:
        box = computed_box(run.plan, requested)
        return Area(requested, requested, box, box)
    grid = zoomed_region(requested, run.zoom, run.plan.volume)
    box = computed_box(run.plan, grid)
    return Area(requested, grid, box, input_box(box, run.zoom, shape, run.plan.volume))



@dataclass(frozen=True)
class Outputs:
    """A segment run's outputs, decided: ``target`` (the label image; None for ``output.labels:
    none`` and region runs), ``area`` and ``blocks`` (a region run's boxes and the plan's blocks
    that meet it; None: every block), ``absent`` (blocks whose input chunks the store does not hold;
    None: not known) and ``need`` (the space the run needs)."""

    target: LabelTarget | None
    area: Area | None
    blocks: list[int] | None
    absent: np.ndarray | None
    need: Estimate


def plan_outputs(run: Prepared, region: Box | None = None) -> Outputs:
    """Check and plan everything a segment run over ``run`` (or over ``region`` of it) writes;
    raises the one-line error of the first thing that would refuse it."""
    out = run.config.output
    check_output(out.path, out.overwrite)
    area = region_area(run, region) if region is not None else None
    target = label_target(run) if area is None else None
    if target is not None:
        check_labels(target, Path(out.path), out.overwrite)
    blocks = covering_blocks(run.plan, area.grid) if area else None
    absent = listed_empty(run.plan, run.empty, run.config.input, run.zoom, run.listing)
    need = check_space(run, target, fraction=work_fraction(len(run.plan), blocks, absent))
    return Outputs(target, area, blocks, absent, need)


def work_fraction(total: int, blocks: list[int] | None, absent: np.ndarray | None) -> float:
    """The share of the plan's blocks that can write anything: those of a region run (``blocks``),
    less those known empty from the store's listing (``absent``); arrays hold only their chunks."""
    wanted = np.ones(total, dtype=bool) if blocks is None else np.isin(np.arange(total), blocks)
    if absent is not None:
        wanted &= ~absent
    return float(wanted.sum()) / total
