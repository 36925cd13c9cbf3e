"""Orchestration: the only module that builds Dask work.

Each task receives a small, picklable :class:`Job` plus a list of block
indices, reads its own input from zarr, and writes its own output chunks (one
writer per chunk). Tasks are submitted through a sliding window so that the
client never holds more than a bounded number of futures, whatever the volume
size.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .blocks import BlockPlan
from .config import Config, InputConfig, load_config, validate_config
from .deploy import open_client, torch_threads
from .io import InputError, InputVolume, create_array, open_array, open_input, percentiles, prepare_output
from .model import ModelSpec, checkpoint_digest, load_checkpoint, resolve_checkpoint
from .predict import NormStats, get_predictor

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------ job description


@dataclass(frozen=True)
class Job:
    """Everything a block task needs; small and picklable."""

    input: InputConfig
    output: str
    checkpoint: str
    device: str
    precision: str
    channels_last: bool
    threads: int | None
    stats: NormStats
    plan: BlockPlan


def as_config(config: Config | dict[str, Any] | str | Path) -> Config:
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
class Setup:
    """What is known before any block runs (all cheap to compute)."""

    config: Config
    volume: InputVolume
    spec: ModelSpec
    plan: BlockPlan
    stats: NormStats
    checkpoint: str


def setup(config: Config) -> Setup:
    """Open the input, read the model spec, check they fit, plan blocks."""
    vol = open_input(config.input)
    model, _ = load_checkpoint(config.model.checkpoint)
    spec = model.spec
    if vol.ndim != spec.ndim:
        raise InputError(
            f"input '{config.input.path}' is {vol.ndim}D {list(vol.shape)} but the model "
            f"'{config.model.checkpoint}' is {spec.ndim}D; use a {spec.ndim}D volume or another model"
        )
    if vol.channels != spec.in_channels:
        raise InputError(
            f"input '{config.input.path}' has {vol.channels} channel(s) but the model expects "
            f"{spec.in_channels}; select the channel(s) or use another model"
        )
    write = config.blocks.write_shape or auto_write_shape(vol.shape, spec.step, config.blocks.target_size)
    plan = BlockPlan(vol.shape, write, spec.context, spec.step)
    norm = spec.normalisation
    if norm.kind == "percentile":
        lo, hi = percentiles(vol, norm.low, norm.high)
        stats = NormStats.from_values(norm, lo, hi)
    else:
        stats = NormStats.from_values(norm, 0.0, 1.0)
    ckpt = str(resolve_checkpoint(config.model.checkpoint).resolve())
    return Setup(config, vol, spec, plan, stats, ckpt)


def plan_summary(s: Setup) -> dict[str, Any]:
    """Numbers printed by ``pipeline plan``."""
    plan = s.plan
    voxel_bytes = 4
    read_vox = math.prod(plan.read_shape)
    write_vox = math.prod(plan.write_shape)
    feats = s.spec.base_features
    # raw block + normalised copy + first-level features (x2 for the skip) + output
    est = read_vox * voxel_bytes * (2 + 2 * feats) + write_vox * voxel_bytes * (s.spec.out_channels + 1)
    return {
        "volume_shape": list(plan.volume),
        "input_dtype": str(s.volume.dtype),
        "step": list(plan.step),
        "context": list(plan.context),
        "write_shape": list(plan.write_shape),
        "read_shape": list(plan.read_shape),
        "grid": list(plan.grid),
        "blocks": len(plan),
        "redundancy": round(plan.redundancy, 3),
        "memory_per_block_mib": round(est / 2**20, 1),
        "plan_digest": plan.digest(),
    }


def make_job(s: Setup, threads: int | None) -> Job:
    m = s.config.model
    return Job(s.config.input, str(s.config.output.path), s.checkpoint, m.device, m.precision,
               m.channels_last, threads, s.stats, s.plan)


# ------------------------------------------------------------------ task execution


@lru_cache(maxsize=8)
def _volume(cfg: InputConfig) -> InputVolume:
    return open_input(cfg)


def read_input(job: Job, box: Any) -> np.ndarray:
    data = _volume(job.input).read(box)
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise InputError(
            f"input '{job.input.path}' holds {bad} NaN/inf values in the region {box}; "
            "replace them (e.g. with 0) before running"
        )
    return data


def predict_task(job: Job, linears: Sequence[int]) -> list[int]:
    """Predict blocks and write embeddings + foreground. Returns the block indices done."""
    pred = get_predictor(job.checkpoint, job.device, job.precision, job.channels_last, job.threads)
    emb = open_array(Path(job.output) / "embeddings")
    fg = open_array(Path(job.output) / "foreground")
    for lin in linears:
        block = job.plan.block_at(lin)
        out = pred(read_input(job, block.read), job.stats)
        rel = block.valid.to_slices(relative_to=block.write)
        emb[(slice(None), *block.valid.to_slices())] = out[(slice(0, -1), *rel)]
        fg[block.valid.to_slices()] = out[(-1, *rel)]
    return list(linears)


def _chunks(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def execute(
    client: Any,
    fn: Callable[..., Any],
    job: Any,
    batches: Iterable[Sequence[int]],
    *,
    desc: str,
    total: int,
    progress: bool,
    gpu: bool = False,
    window: int | None = None,
) -> Iterator[Any]:
    """Run ``fn(job, batch)`` for every batch, serially or on ``client``; yield results
    as they complete. At most ``window`` tasks are in flight at a time."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="task", disable=not progress, leave=True)
    try:
        if client is None:
            for batch in batches:
                yield fn(job, batch)
                bar.update(1)
            return
        from distributed import as_completed

        workers = client.scheduler_info()["workers"].values()
        resources = {"model": 1} if gpu and any("model" in w.get("resources", {}) for w in workers) else None
        nthreads = sum(client.nthreads().values()) or 1
        window = window or max(16, 4 * nthreads)
        job_future = client.scatter(job, broadcast=True)
        it = iter(batches)
        pending = as_completed()
        for batch in _take(it, window):
            pending.add(client.submit(fn, job_future, batch, pure=False, resources=resources))
        for fut in pending:
            result = fut.result()
            fut.release()
            for batch in _take(it, 1):
                pending.add(client.submit(fn, job_future, batch, pure=False, resources=resources))
            bar.update(1)
            yield result
    finally:
        bar.close()


def _take(it: Iterator[Sequence[int]], n: int) -> list[Sequence[int]]:
    out = []
    for _ in range(n):
        try:
            out.append(next(it))
        except StopIteration:
            break
    return out


def provenance(s: Setup) -> dict[str, Any]:
    import dask
    import distributed
    import torch
    import zarr

    return {
        "pipeline_version": __version__,
        "config": s.config.model_dump(mode="json"),
        "model_digest": checkpoint_digest(s.checkpoint),
        "model_spec": s.spec.model_dump(mode="json"),
        "plan": plan_summary(s),
        "normalisation": {"offset": s.stats.offset, "scale": s.stats.scale},
        "versions": {
            "numpy": np.__version__, "torch": torch.__version__, "dask": dask.__version__,
            "distributed": distributed.__version__, "zarr": zarr.__version__,
        },
    }


# ------------------------------------------------------------------ public API


def predict(
    config: Config | dict[str, Any] | str | Path, client: Any = None, progress: bool = False
) -> Path:
    """Predict embeddings (array ``embeddings``, channels first) and the foreground
    probability (array ``foreground``) for the whole input, block by block."""
    cfg = as_config(config)
    s = setup(cfg)
    plan = s.plan
    E = s.spec.embed_dim
    group = prepare_output(cfg.output.path, cfg.output.overwrite)
    dtype = "float64" if cfg.model.precision == "float64" else "float32"
    create_array(group, "embeddings", (E, *plan.volume), (E, *plan.write_shape), dtype)
    create_array(group, "foreground", plan.volume, plan.write_shape, dtype)
    group.attrs.update({"pipeline": provenance(s)})
    logger.info("predict: %d blocks of %s (read %s)", len(plan), plan.write_shape, plan.read_shape)
    batches = _chunks(len(plan), cfg.blocks.blocks_per_task)
    t0 = time.perf_counter()
    with _client(cfg, client) as c:
        job = make_job(s, torch_threads(cfg.cluster))
        for _ in execute(c, predict_task, job, batches, desc="predict", total=len(batches),
                         progress=progress, gpu=True):
            pass
    logger.info("predict: done in %.1f s -> %s", time.perf_counter() - t0, cfg.output.path)
    return Path(cfg.output.path)


def _client(cfg: Config, client: Any) -> Any:
    """Use the caller's client when given, else open (and later close) the configured one."""
    return nullcontext(client) if client is not None else open_client(cfg.cluster)
