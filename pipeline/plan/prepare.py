"""What is known before any block runs: the config, the input (metadata only), the
checkpoint (read and hashed once), the block plan and the normalisation constants.

Everything here is cheap and writes nothing: a bad config, input or model fails before
a cluster is started or an output created. ``pipeline plan`` prints :func:`plan_summary`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import JOBQUEUE_KINDS, Config, load_config, validate_config
from ..network.checkpoint import Checkpoint, open_checkpoint
from ..network.model import ModelSpec
from ..network.predict import NormStats
from ..volume.cache import auto_capacity
from ..volume.errors import InputError
from ..volume.input_volume import InputVolume
from ..volume.io import open_input, percentiles
from ..volume.resample import ZoomedVolume, voxel_diameter, zoom_factors, zoom_warnings
from . import cost
from .blocks import BlockPlan, sweep_axes, sweep_chunks
from .empty import EmptySource, empty_source

logger = logging.getLogger(__name__)


def as_config(config: Config | dict[str, Any] | str | Path) -> Config:
    """A validated :class:`Config` from a config, a dict or a YAML path."""
    if isinstance(config, Config):
        return config
    if isinstance(config, dict):
        return validate_config(config)
    return load_config(config)


def auto_write_shape(volume: Sequence[int], step: Sequence[int], target: int) -> tuple[int, ...]:
    """``n * step`` near ``target`` per axis, no larger than the volume rounded up to ``step``."""
    out = []
    for v, s in zip(volume, step, strict=True):
        n = max(1, round(target / s))
        out.append(min(n * s, -(-v // s) * s))
    return tuple(out)


@dataclass(frozen=True)
class Prepared:
    """A validated run: stays in the client (the model is never sent to workers)."""

    config: Config
    volume: InputVolume
    checkpoint: Checkpoint
    plan: BlockPlan
    stats: NormStats
    empty: EmptySource | None = None  # how empty blocks are found (None: never skipped)
    zoom: tuple[float, ...] | None = None  # input.diameter's resampling (None: the input's own grid)
    notes: tuple[str, ...] = ()  # why input.diameter's resampling may not help (pipeline plan shows them)

    @property
    def grid(self) -> Any:
        """The volume the blocks cover: the input, or the input resampled by ``zoom``."""
        return ZoomedVolume(self.volume, self.zoom) if self.zoom else self.volume

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
    zoom = None
    if cfg.input.diameter is not None:
        diameter = cfg.input.diameter if cfg.input.diameter_unit == "voxel" else \
            voxel_diameter(cfg.input.diameter, vol.voxel_size, f"'{cfg.input.path}'")
        trained = cfg.model.diameter or ckpt.info.diameter
        if isinstance(trained, int | float):
            trained = (float(trained),) * vol.ndim
        zoom = zoom_factors(diameter, trained, vol.ndim,
                            f"model.checkpoint '{cfg.model.checkpoint}'")
    notes: list[str] = []
    if zoom:
        notes = zoom_warnings(zoom, trained, spec.step)  # type: ignore[arg-type]
        for note in notes:
            logger.warning("input.diameter: %s", note)
    grid = ZoomedVolume(vol, zoom) if zoom else vol
    if zoom:
        logger.info("input.diameter %s: resampling %s by %s to %s", cfg.input.diameter, list(vol.shape),
                    [round(z, 4) for z in zoom], list(grid.shape))
    write = cfg.blocks.write_shape or (auto_write_shape(grid.shape, spec.step, cfg.blocks.target_size)
                                       if cfg.blocks.target_size else
                                       begun_write_shape(cfg, grid.shape, spec.step)
                                       or ranked_blocks(cfg, spec, grid.shape, grid.chunks)[0].write)
    plan = BlockPlan(grid.shape, write, spec.context, spec.step)
    norm = spec.normalisation
    low, high = percentiles(vol, norm.low, norm.high) if norm.kind == "percentile" else (0.0, 1.0)
    needed = cache_needed(plan, grid.chunks, vol)
    if not zoom and cache_capacity(vol) < needed:  # halos decode chunks again: their shape matters
        warn_chunking(vol.chunks, plan)
    warn_cache(cfg.input.chunk_cache_mib, needed)
    stats = NormStats.from_values(norm, low, high)
    return Prepared(cfg, vol, ckpt, plan, stats, empty_source(cfg, vol, stats, plan.write_shape, grid.shape), zoom,
                    tuple(notes))


UNKNOWN_WORKERS = 8  # an existing scheduler (kind address), or GPUs not known before the cluster starts


def begun_write_shape(cfg: Config, volume: Sequence[int], step: Sequence[int]) -> tuple[int, ...] | None:
    """The automatic write shape an unfinished run at ``output.path`` began with (same volume and
    step; not with ``output.overwrite``): a resumed run keeps its plan on another cluster, whose
    workers and memory would make another choice. None: nothing to resume."""
    from ..runtime.store import unfinished_key

    out = Path(cfg.output.path)
    if cfg.output.overwrite or not out.is_dir() or unfinished_key(out) is None:
        return None
    import zarr

    plan = dict(zarr.open_group(str(out), mode="r").attrs).get("resume", {}).get("plan", {})
    if plan.get("volume") != list(volume) or plan.get("step") != list(step) or not plan.get("write_shape"):
        return None
    write = tuple(int(w) for w in plan["write_shape"])
    logger.info("blocks: resuming %s with the write shape it began with, %s", out, list(write))
    return write


def planned_workers(cluster: Any) -> int:
    """Workers the cluster config asks for: ``n_workers`` (local, and batch jobs: worker processes in
    all; adaptive: its maximum); local-cuda its listed devices; otherwise :data:`UNKNOWN_WORKERS`."""
    if cluster.kind == "serial":
        return 1
    if cluster.kind == "local":
        return int(cluster.n_workers)
    if cluster.kind in JOBQUEUE_KINDS:
        wanted = cluster.adaptive.maximum if cluster.adaptive else cluster.n_workers
        return int(math.ceil(wanted / cluster.processes) * cluster.processes)  # whole jobs
    if cluster.kind == "local-cuda" and cluster.devices:
        return len(cluster.devices)
    return UNKNOWN_WORKERS


TASKS_PER_WORKER = 16  # enough tasks to balance the load and to resume from
TASK_BYTES = 512 << 20  # network output held per task


def auto_blocks_per_task(blocks: int, workers: int, block_bytes: int, batch_size: int = 1) -> int:
    """Blocks per task: many small blocks are batched (per-task overhead), as long as every
    worker still gets ``TASKS_PER_WORKER`` tasks and a task holds at most ``TASK_BYTES``
    of network output; never fewer than the blocks of one forward pass."""
    per = max(1, blocks // (workers * TASKS_PER_WORKER))
    return max(batch_size, min(per, max(1, TASK_BYTES // max(block_bytes, 1))))


def gpu_memory(cfg: Config) -> int | None:
    """Bytes of the GPU the model will run on: configured, else the visible one's (None: CPU)."""
    if cfg.blocks.gpu_memory_gib:
        return int(cfg.blocks.gpu_memory_gib * 2**30)
    if cfg.model.device == "cpu":
        return None
    import torch

    return int(torch.cuda.get_device_properties(0).total_memory) if torch.cuda.is_available() else None


UNKNOWN_WORKER_MEMORY = 4 << 30  # a worker of an existing scheduler (kind address): its limit is not known


def worker_memory(cluster: Any) -> int:
    """Memory limit of one Dask worker of ``cluster`` (serial: this machine's): local as Dask
    resolves ``memory_limit`` ('auto': the machine's share of the worker's threads), batch jobs
    ``memory / processes``, an existing scheduler :data:`UNKNOWN_WORKER_MEMORY`."""
    from dask.system import CPU_COUNT
    from dask.utils import parse_bytes
    from distributed.system import MEMORY_LIMIT

    if cluster.kind == "local":
        if cluster.memory_limit == "auto":
            return int(MEMORY_LIMIT * min(1, cluster.threads_per_worker / CPU_COUNT))
        return min(int(parse_bytes(cluster.memory_limit)), MEMORY_LIMIT)
    if cluster.kind in JOBQUEUE_KINDS:
        return int(parse_bytes(cluster.memory) // cluster.processes)
    if cluster.kind == "address":
        return UNKNOWN_WORKER_MEMORY
    return int(MEMORY_LIMIT // (len(cluster.devices) if cluster.kind == "local-cuda" and cluster.devices else 1))


# block_bytes measured against a CPU forward pass of the bundled model (benchmarks/blocks.py calibrate):
# the peak is 1.4-2.8x the estimate (201-394 B per read voxel vs 141-153; the most on small blocks), so a
# CPU block gets a quarter of the worker's memory where a GPU block gets half of the GPU's.
CPU_MEMORY_SHARE = 4
GPU_MEMORY_SHARE = 2


def block_memory(cfg: Config) -> tuple[int, str]:
    """Bytes :func:`block_bytes` of one block may use, and what that is a share of: half the GPU's
    memory, else a quarter of the worker's, divided by ``model.batch_size`` (the blocks of one pass)."""
    memory = gpu_memory(cfg)
    if memory is not None:
        return memory // GPU_MEMORY_SHARE // cfg.model.batch_size, f"GPU with {memory / 2**30:.0f} GiB"
    memory = worker_memory(cfg.cluster)
    return (memory // CPU_MEMORY_SHARE // cfg.model.batch_size,
            f"CPU worker with {memory / 2**30:.1f} GiB")


def block_bytes(spec: ModelSpec, write: Sequence[int]) -> int:
    """Estimated memory of one block through the network (:func:`pipeline.plan.cost.block_bytes`)."""
    return cost.block_bytes(write, spec.context, spec.base_features, spec.out_channels)


def coefficients(cfg: Config) -> cost.Coefficients:
    """The cost model's coefficients for the device the model runs on."""
    return cost.CPU if gpu_memory(cfg) is None else cost.GPU


def ranked_blocks(cfg: Config, spec: ModelSpec, volume: Sequence[int], chunks: Sequence[int]) -> list[cost.Terms]:
    """Candidate write shapes for ``volume`` read from ``chunks``, cheapest first
    (:func:`pipeline.plan.cost.ranked`, on the cluster's workers, within :func:`block_memory`)."""
    memory, _ = block_memory(cfg)
    found = cost.ranked(volume, spec.step, spec.context, chunks, memory, spec.base_features,
                        spec.out_channels, coefficients(cfg), planned_workers(cfg.cluster))
    if block_bytes(spec, found[0].write) > memory:
        logger.warning("even blocks of one model step %s need about %.0f MiB, more than the %.0f MiB a block may "
                       "use; give the workers more memory or set blocks.write_shape", list(spec.step),
                       block_bytes(spec, found[0].write) / 2**20, memory / 2**20)
    return found


def chunks_per_block(chunks: Sequence[int], plan: BlockPlan) -> float:
    """Average number of input chunks one block's read box touches."""
    total = 1.0
    for v, c, w, ctx, g in zip(plan.volume, chunks, plan.write_shape, plan.context, plan.grid, strict=True):
        total *= cost.axis_chunks(v, w, ctx, c) / g
    return total


def over_read(chunks: Sequence[int], plan: BlockPlan) -> float:
    """Voxels of input chunks decompressed per voxel a block's read box needs (1.0: none wasted)."""
    return chunks_per_block(chunks, plan) * math.prod(chunks) / math.prod(plan.read_shape)


OVER_READ_WARN = 1.5  # warn when blocks decompress this many times the voxels aligned blocks would


def aligned_write(chunks: Sequence[int], plan: BlockPlan) -> tuple[int, ...]:
    """The write shape nearest the plan's that is a multiple of both the input chunks and the step."""
    aligned = []
    for w, c, st in zip(plan.write_shape, chunks, plan.step, strict=True):
        unit = c * st // math.gcd(c, st)
        aligned.append(max(unit, round(w / unit) * unit))
    return tuple(aligned)


def warn_chunking(chunks: Sequence[int], plan: BlockPlan) -> None:
    """Explain the I/O cost of input chunks that do not fit the write blocks: warn when the
    over-read (input voxels decompressed per voxel read, halo included) is more than
    :data:`OVER_READ_WARN` times what blocks aligned to the chunks would have. Only for reads
    that the chunk cache does not spare that cost (off, too small, or not a local zarr array)."""
    aligned = aligned_write(chunks, plan)
    better = BlockPlan(plan.volume, aligned, plan.context, plan.step)
    ratio = over_read(chunks, plan)
    if ratio <= OVER_READ_WARN * over_read(chunks, better):
        return
    have, ideal = chunks_per_block(chunks, plan), chunks_per_block(chunks, better)
    logger.warning(
        "input chunks %s do not fit blocks.write_shape %s: each block reads %.1f chunks (%.1fx the voxels it "
        "needs); with blocks.write_shape %s it would read %.1f chunks of larger blocks; or rechunk the input",
        list(chunks), list(plan.write_shape), have, ratio, aligned, ideal,
    )


def block_choice(cfg: Config) -> str:
    """How the write shape was chosen."""
    if cfg.blocks.write_shape:
        return "blocks.write_shape"
    if cfg.blocks.target_size:
        return f"blocks.target_size {cfg.blocks.target_size}"
    return "least predicted cost"


def cache_needed(plan: BlockPlan, chunks: Sequence[int], vol: InputVolume) -> int:
    """Bytes of decoded input chunks (of ``vol``, seen on the plan's grid with ``chunks``) a process's
    cache holds so that blocks in sweep order decode each chunk once (:func:`pipeline.plan.blocks.sweep_chunks`)."""
    return sweep_chunks(plan, chunks) * math.prod(vol.chunks) * vol.dtype.itemsize * vol.channels


def cache_capacity(vol: InputVolume) -> int:
    """Bytes of decoded chunks a process keeps for ``vol`` (automatic: as this machine's processes would)."""
    if not vol.cached:
        return 0
    return vol.cache_mib << 20 if vol.cache_mib else auto_capacity()


def warn_cache(mib: int | None, needed: int) -> None:
    """Warn when a configured ``input.chunk_cache_mib`` cannot hold the chunks the block order reuses."""
    if mib and mib << 20 < needed:
        logger.warning("input.chunk_cache_mib %d holds less than the %.0f MiB of input chunks the block order "
                       "reuses: halos decode chunks again (up to ~3x per axis); raise it or leave it automatic",
                       mib, needed / 2**20)


def plan_summary(run: Prepared) -> dict[str, Any]:
    """Numbers printed by ``pipeline plan``."""
    plan = run.plan
    memory, sized_for = block_memory(run.config)
    workers = planned_workers(run.config.cluster)
    return {
        "volume_shape": list(plan.volume),
        "input_dtype": str(run.volume.dtype),
        "step": list(plan.step),
        "context": list(plan.context),
        "write_shape": list(plan.write_shape),
        "write_shape_from": block_choice(run.config),
        "read_shape": list(plan.read_shape),
        "grid": list(plan.grid),
        "blocks": len(plan),
        "blocks_per_task": run.blocks_per_task,
        "redundancy": round(plan.redundancy, 3),
        "memory_per_block_mib": round(block_bytes(run.spec, plan.write_shape) / 2**20, 1),
        "blocks_sized_for": f"{sized_for}: at most {memory / 2**20:.0f} MiB per block",
        "predicted_cost_s": round(cost.predicted_cost(plan.volume, plan.write_shape, plan.context, run.grid.chunks,
                                                      coefficients(run.config), workers), 1),
        "input_chunks": list(run.volume.chunks),
        "input_over_read": round(over_read(run.grid.chunks, plan), 2),
        "block_order": "".join("zyx"[-plan.ndim:][a] for a in sweep_axes(plan, run.grid.chunks)),
        "cache_needed_mib": round(cache_needed(plan, run.grid.chunks, run.volume) / 2**20, 1),
        "zoom": list(run.zoom) if run.zoom else None,
        "diameter_check": "; ".join(run.notes) if run.notes else ("ok" if run.zoom else "no resampling"),
        "input_shape": list(run.volume.shape),
        "empty_blocks_from": run.empty.describe() if run.empty else "not skipped (empty.skip: false)",
        "plan_digest": plan.digest(),
    }


def cost_table(run: Prepared, rows: int = 5) -> list[str]:
    """The plan's write shape and the next cheapest candidates, as lines of a table: blocks,
    redundancy, over-read, memory per block and predicted cost relative to the plan's
    (:mod:`pipeline.plan.cost`: the device's coefficients, the cluster's workers)."""
    plan, spec = run.plan, run.spec
    workers = planned_workers(run.config.cluster)
    chosen = cost.terms(plan.volume, plan.write_shape, plan.context, run.grid.chunks)
    others = [t for t in ranked_blocks(run.config, spec, plan.volume, run.grid.chunks) if t.write != chosen.write]
    coeff = coefficients(run.config)
    base = chosen.cost(coeff, workers)
    header = ("write shape", "blocks", "redundancy", "over-read", "MiB/block", "cost")
    table = [header]
    for k, t in enumerate([chosen, *others[: rows - 1]]):
        table.append((str(list(t.write)) + (" *" if k == 0 else ""), str(t.blocks), f"{t.redundancy:.2f}",
                      f"{t.over_read:.2f}", f"{block_bytes(spec, t.write) / 2**20:.0f}",
                      f"{t.cost(coeff, workers) / base:.2f}x"))
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            for r in table]
