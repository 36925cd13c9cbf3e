"""What is known before any block runs: the config, the input (metadata only), the
checkpoint (read and hashed once), the block plan and the normalisation constants.

Everything here is cheap and writes nothing: a bad config, input or model fails before
a cluster is started or an output created. ``pipeline plan`` prints
:func:`pipeline.plan.summary.plan_summary`; blocks are sized in :mod:`pipeline.plan.sizing`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config, load_config, validate_config
from ..network.checkpoint import Checkpoint, open_checkpoint
from ..network.model import ModelSpec, Normalisation
from ..network.predict import NormStats
from ..volume.errors import InputError
from ..volume.input_volume import InputVolume
from ..volume.io import open_input
from ..volume.resample import ZoomedVolume, voxel_diameter, zoom_factors, zoom_warnings
from .blocks import BlockPlan
from .cost import Live
from .diameter import (
    DiameterUnknown,
    SizeEstimate,
    auto_zoom,
    begun_zoom,
    estimate_diameter,
    inplane,
    model_segmenter,
)
from .empty import EmptySource, Listing, empty_source, live_counter, stored_chunks
from .intensity import IntensityStats, intensity_stats
from .measure import Measure, measured
from .sizing import (
    auto_blocks_per_task,
    auto_write_shape,
    begun_write_shape,
    cache_capacity,
    cache_needed,
    planned_workers,
    ranked_blocks,
    warn_cache,
    warn_chunking,
)

logger = logging.getLogger(__name__)


def as_config(config: Config | dict[str, Any] | str | Path) -> Config:
    """A validated :class:`Config` from a config, a dict or a YAML path."""
    if isinstance(config, Config):
        return config
    if isinstance(config, dict):
        return validate_config(config)
    return load_config(config)


@dataclass(frozen=True)
class Prepared:
    """A validated run: stays in the client (the model is never sent to workers)."""

    config: Config
    volume: InputVolume
    checkpoint: Checkpoint
    plan: BlockPlan
    intensity: IntensityStats  # the normalisation constants and what they were computed from
    empty: EmptySource | None = None  # how empty blocks are found (None: never skipped)
    zoom: tuple[float, ...] | None = None  # input.diameter's resampling (None: the input's own grid)
    notes: tuple[str, ...] = ()  # why input.diameter's resampling may not help (pipeline plan shows them)
    live: Live | None = None  # write shape -> blocks not known empty from the listing (a sparse volume)
    listing: Listing | None = None  # the store's one listing: which chunks it holds (None: cannot tell)
    diameter: str | None = None  # where input.diameter's size came from (given, auto: measured), for the plan
    estimate: SizeEstimate | None = None  # input.diameter auto's measurement (None: given, kept or not set)
    measure: Measure | None = None  # what the objects table measures of the input (objects.*)

    @property
    def grid(self) -> Any:
        """The volume the blocks cover: the input, or the input resampled by ``zoom``."""
        return ZoomedVolume(self.volume, self.zoom) if self.zoom else self.volume

    @property
    def stats(self) -> NormStats:
        return self.intensity.stats

    @property
    def spec(self) -> ModelSpec:
        return self.checkpoint.spec

    @property
    def blocks_per_task(self) -> int:
        """Configured, else :func:`auto_blocks_per_task`."""
        return self.per_task(len(self.plan))

    def per_task(self, blocks: int) -> int:
        """Blocks per task for a run of ``blocks`` blocks (a region run computes fewer than the plan's)."""
        c = self.config
        return c.blocks.blocks_per_task or auto_blocks_per_task(
            blocks, planned_workers(c.cluster), 4 * (self.spec.embed_dim + 1) * math.prod(self.plan.write_shape),
            c.model.batch_size)


def prepare(config: Config | dict[str, Any] | str | Path) -> Prepared:
    """Open the input, read the checkpoint, check they fit, plan blocks, take percentiles."""
    cfg = as_config(config)
    vol = open_input(cfg.input)
    ckpt = open_checkpoint(cfg.model.checkpoint)
    spec = ckpt.spec
    if vol.ndim != spec.ndim:
        raise InputError(
            f"input '{cfg.input.path}' is {vol.ndim}D {list(vol.shape)} but the model "
            f"'{cfg.model.checkpoint}' is {spec.ndim}D; use a {spec.ndim}D volume or another model"
        )
    if vol.channels != spec.in_channels:
        raise InputError(
            f"input '{cfg.input.path}' has {vol.channels} channel(s) but the model expects "
            f"{spec.in_channels}; " + (f"set input.channel to one of 0..{vol.channels - 1}"
                                       if spec.in_channels == 1 else "give an input with that many channels")
            + " or use another model"
        )
    measure = measured(cfg, vol)
    override = cfg.model.normalisation
    listing = stored_chunks(vol)
    intensity = intensity_stats(vol, spec.normalisation, Normalisation(**override.model_dump()) if override else None,
                                listing=listing)
    logger.info("normalisation: offset %.6g, scale %.6g from %s", intensity.stats.offset, intensity.stats.scale,
                intensity.source)
    zoom, notes, sized, estimate = object_size(cfg, vol, ckpt, intensity.stats)
    grid = ZoomedVolume(vol, zoom) if zoom else vol
    live = None if zoom or not cfg.empty.skip else \
        live_counter(vol, listing, intensity.stats, cfg.empty.threshold, spec.context)
    write = cfg.blocks.write_shape or (auto_write_shape(grid.shape, spec.step, cfg.blocks.target_size)
                                       if cfg.blocks.target_size else
                                       begun_write_shape(cfg, grid.shape, spec.step)
                                       or ranked_blocks(cfg, spec, grid.shape, grid.chunks, live)[0].write)
    plan = BlockPlan(grid.shape, write, spec.context, spec.step)
    needed = cache_needed(plan, grid.chunks, vol)
    if not zoom and cache_capacity(vol) < needed:  # halos decode chunks again: their shape matters
        warn_chunking(vol.chunks, plan)
    warn_cache(cfg.input.chunk_cache_mib, needed)
    return Prepared(cfg, vol, ckpt, plan, intensity,
                    empty_source(cfg, vol, intensity.stats, plan.write_shape, grid.shape), zoom, tuple(notes), live,
                    listing, sized, estimate, measure)


def object_size(cfg: Config, vol: InputVolume, ckpt: Checkpoint,
                stats: NormStats) -> tuple[tuple[float, ...] | None, list[str], str | None, SizeEstimate | None]:
    """``input.diameter``'s zoom (None: the input's own grid), why it may not help, where the
    diameter came from (None: not given) and auto's measurement."""
    if cfg.input.diameter is None:
        return None, [], None, None
    estimate = None
    trained = cfg.model.diameter or ckpt.info.diameter
    if isinstance(trained, int | float):
        trained = (float(trained),) * vol.ndim
    where = f"model.checkpoint '{cfg.model.checkpoint}'"
    if cfg.input.diameter == "auto":
        if trained is None or len(trained) != vol.ndim:
            zoom_factors(1.0, trained, vol.ndim, where)  # the message for a model without a usable diameter
        begun = begun_zoom(cfg)
        if begun is not None:
            zoom, sized = begun[0], "auto: kept from the output being resumed"
        else:
            spec = ckpt.spec
            try:
                estimate = estimate_diameter(vol, stats, trained, spec.context, spec.step,
                                             model_segmenter(ckpt, cfg, stats))
            except DiameterUnknown:
                raise InputError(f"input.diameter auto: the model found too few whole objects in '{cfg.input.path}' "
                                 "at any zoom to measure them; give input.diameter (voxels per axis, e.g. measured "
                                 "in napari) or leave it out") from None
            zoom = auto_zoom(estimate.diameter, trained, vol.ndim, where)
            sized = (f"auto: {estimate.describe()}; in-plane {inplane(estimate.diameter):.1f} "
                     + ("within the model's tolerance: not resampled" if zoom is None else
                        "sets one zoom for every axis"))
    else:
        diameter = cfg.input.diameter if cfg.input.diameter_unit == "voxel" else \
            voxel_diameter(cfg.input.diameter, vol.voxel_size, f"'{cfg.input.path}'")
        zoom, sized = zoom_factors(diameter, trained, vol.ndim, where), f"given: {cfg.input.diameter}"
    notes = zoom_warnings(zoom, trained, ckpt.spec.step) if zoom else []
    for note in notes:
        logger.warning("input.diameter: %s", note)
    if zoom:
        logger.info("input.diameter %s: resampling %s by %s to %s", cfg.input.diameter, list(vol.shape),
                    [round(z, 4) for z in zoom], list(ZoomedVolume(vol, zoom).shape))
    return zoom, notes, sized, estimate
