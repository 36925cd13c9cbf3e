"""How big blocks and tasks are: the write shape (configured, resumed, or the least predicted
cost within a worker's memory, see :mod:`pipeline.plan.cost`), blocks per task, the workers and
memory a cluster config plans for, and how blocks meet the input's chunks (over-read, cache)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import JOBQUEUE_KINDS, Config
from ..network.model import ModelSpec
from ..runtime.output import unfinished_key
from ..volume.cache import auto_capacity
from ..volume.input_volume import InputVolume
from . import cost
from .blocks import BlockPlan, sweep_chunks

logger = logging.getLogger(__name__)


def auto_write_shape(volume: Sequence[int], step: Sequence[int], target: int) -> tuple[int, ...]:
    """``n * step`` near ``target`` per axis, no larger than the volume rounded up to ``step``."""
    out = []
    for v, s in zip(volume, step, strict=True):
        n = max(1, round(target / s))
        out.append(min(n * s, -(-v // s) * s))
    return tuple(out)


UNKNOWN_WORKERS = 8  # an existing scheduler (kind address), or GPUs not known before the cluster starts


def begun_write_shape(cfg: Config, volume: Sequence[int], step: Sequence[int]) -> tuple[int, ...] | None:
    """The automatic write shape an unfinished run at ``output.path`` began with (same volume and
    step; not with ``output.overwrite``): a resumed run keeps its plan on another cluster, whose
    workers and memory would make another choice. None: nothing to resume."""
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


def ranked_blocks(cfg: Config, spec: ModelSpec, volume: Sequence[int], chunks: Sequence[int],
                  live: cost.Live | None = None) -> list[cost.Terms]:
    """Candidate write shapes for ``volume`` read from ``chunks``, cheapest first
    (:func:`pipeline.plan.cost.ranked`, on the cluster's workers, within :func:`block_memory`;
    ``live``: blocks of a sparse volume not known empty, see :func:`pipeline.plan.empty.live_counter`)."""
    memory, _ = block_memory(cfg)
    found = cost.ranked(volume, spec.step, spec.context, chunks, memory, spec.base_features,
                        spec.out_channels, coefficients(cfg), planned_workers(cfg.cluster), live)
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
