"""Orchestration: the only module that builds Dask work.

Each task receives a small, picklable :class:`Job` plus a list of block
indices, reads its own input from zarr, and writes its own output chunks (one
writer per chunk). Tasks are submitted through a sliding window so that the
client never holds more than a bounded number of futures, whatever the volume
size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .blocks import BlockPlan
from .cluster import ClusteringParams
from .config import Config, InputConfig, load_config, validate_config
from .deploy import open_client, torch_threads
from .io import (
    InputError,
    InputVolume,
    OutputError,
    create_array,
    open_array,
    open_group,
    open_input,
    percentiles,
    prepare_output,
)
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
    run_id: str = ""
    marker: str = "done"

    def array(self, name: str, mode: str = "r+") -> Any:
        """An output array, opened once per process and run."""
        return _open_cached(str(Path(self.output) / name), mode, self.run_id)


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
    warn_chunking(vol.chunks, plan)
    return Setup(config, vol, spec, plan, stats, ckpt)


def chunks_per_block(chunks: Sequence[int], plan: BlockPlan) -> float:
    """Average number of input chunks one block's read box touches."""
    total = 1.0
    for c, w, r, ctx, g in zip(chunks, plan.write_shape, plan.read_shape, plan.context, plan.grid, strict=True):
        starts = [i * w - ctx for i in range(g)]
        total *= sum((s + r - 1) // c - s // c + 1 for s in starts) / g
    return total


def warn_chunking(chunks: Sequence[int], plan: BlockPlan) -> None:
    """Explain the I/O cost of input chunks that do not fit the write blocks."""
    if all(w % c == 0 or c % w == 0 for w, c in zip(plan.write_shape, chunks, strict=True)):
        return
    have = chunks_per_block(chunks, plan)
    aligned = []
    for w, c, st in zip(plan.write_shape, chunks, plan.step, strict=True):
        unit = c * st // math.gcd(c, st)  # a multiple of both the chunk and the step
        aligned.append(max(unit, round(w / unit) * unit))
    ideal = chunks_per_block(chunks, BlockPlan(plan.volume, aligned, plan.context, plan.step))
    ratio = have * math.prod(chunks) / math.prod(plan.read_shape)
    logger.warning(
        "input chunks %s do not fit blocks.write_shape %s: each block reads %.1f chunks (%.1fx the voxels it "
        "needs); with blocks.write_shape %s it would read %.1f chunks of larger blocks; or rechunk the input",
        list(chunks), list(plan.write_shape), have, ratio, aligned, ideal,
    )


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


def make_job(s: Setup, threads: int | None, marker: str) -> Job:
    m = s.config.model
    return Job(s.config.input, str(s.config.output.path), s.checkpoint, m.device, m.precision,
               m.channels_last, threads, s.stats, s.plan, uuid.uuid4().hex, marker)


# ------------------------------------------------------------------ resume


def resume_key(s: Setup, stage: str, params: dict[str, Any]) -> str:
    """Hash of everything that determines a stage's block outputs."""
    c = s.config
    payload = {
        "stage": stage, "plan": s.plan.digest(), "model": checkpoint_digest(s.checkpoint),
        "input": [str(Path(c.input.path).resolve()), c.input.dataset, c.input.scale_level],
        "stats": [s.stats.offset, s.stats.scale], "precision": c.model.precision, "params": params,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def open_output(s: Setup, key: str) -> tuple[Any, bool]:
    """A new output group, or the unfinished one of an earlier identical run (resume).

    Never replaces an existing output without ``output.overwrite``; refuses to resume
    output made with a different plan, model or parameters."""
    cfg = s.config
    path = Path(cfg.output.path)
    if path.exists() and not cfg.output.overwrite:
        try:
            group = open_group(path)
            attrs = dict(group.attrs)
        except Exception:  # noqa: BLE001 - not a zarr group: handled by prepare_output's message
            attrs = {}
        if attrs.get("complete") is False and "resume_key" in attrs:
            if attrs["resume_key"] != key:
                raise OutputError(
                    f"output.path '{path}' holds an unfinished run made with a different plan, model or "
                    f"parameters (key {attrs['resume_key']}, this run {key}); pass --overwrite to start "
                    "again, or rerun with the original config to resume"
                )
            return group, True
    group = prepare_output(path, cfg.output.overwrite)
    group.attrs.update({"resume_key": key, "complete": False})
    return group, False


def pending_blocks(job: Job, resumed: bool) -> tuple[list[int], list[int]]:
    """``(todo, done)`` block indices, from the stage's done-marker array."""
    all_blocks = list(range(len(job.plan)))
    if not resumed:
        return all_blocks, []
    done = np.asarray(job.array(job.marker, mode="r")[...]).ravel()
    return [i for i in all_blocks if not done[i]], [i for i in all_blocks if done[i]]


def mark_done(job: Job, block: Any) -> None:
    job.array(job.marker)[tuple(slice(i, i + 1) for i in block.index)] = 1


# ------------------------------------------------------------------ task execution


@lru_cache(maxsize=64)
def _open_cached(path: str, mode: str, run_id: str) -> Any:
    return open_array(path, mode=mode)


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


def prefetched(job: Job, linears: Sequence[int]) -> Iterator[tuple[Any, np.ndarray]]:
    """``(block, input)`` pairs; the next block's input is read in a background thread
    while the caller computes on the current one (I/O overlaps compute)."""
    from concurrent.futures import ThreadPoolExecutor

    blocks = [job.plan.block_at(lin) for lin in linears]
    if not blocks:
        return
    with ThreadPoolExecutor(1, thread_name_prefix="prefetch") as pool:
        nxt = pool.submit(read_input, job, blocks[0].read)
        for i, block in enumerate(blocks):
            data = nxt.result()
            if i + 1 < len(blocks):
                nxt = pool.submit(read_input, job, blocks[i + 1].read)
            yield block, data


def predict_task(job: Job, linears: Sequence[int]) -> list[int]:
    """Predict blocks and write embeddings + foreground. Returns the block indices done."""
    pred = get_predictor(job.checkpoint, job.device, job.precision, job.channels_last, job.threads)
    emb = job.array("embeddings")
    fg = job.array("foreground")
    for block, data in prefetched(job, linears):
        out = pred(data, job.stats)
        rel = block.valid.to_slices(relative_to=block.write)
        emb[(slice(None), *block.valid.to_slices())] = out[(slice(0, -1), *rel)]
        fg[block.valid.to_slices()] = out[(-1, *rel)]
        mark_done(job, block)
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
    extra: Callable[[Sequence[int]], tuple[Any, ...]] | None = None,
) -> Iterator[Any]:
    """Run ``fn(job, batch, *extra(batch))`` for every batch, serially or on
    ``client``; yield results as they complete, at most ``window`` in flight."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="task", disable=not progress, leave=True)
    try:
        if client is None:
            for batch in batches:
                yield fn(job, batch, *(extra(batch) if extra else ()))
                bar.update(1)
            return
        from distributed import as_completed

        workers = client.scheduler_info()["workers"].values()
        resources = {"model": 1} if gpu and any("model" in w.get("resources", {}) for w in workers) else None
        nthreads = sum(client.nthreads().values()) or 1
        window = window or max(16, 4 * nthreads)
        it = iter(batches)

        # the job (a few KB) travels with every task instead of being scattered once: scattered
        # data lost with a worker cannot be recomputed and would cancel every task that needs it
        def submit(batch: Sequence[int]) -> Any:
            args = extra(batch) if extra else ()
            return client.submit(fn, job, batch, *args, pure=False, resources=resources)

        pending = as_completed([submit(b) for b in _take(it, window)])
        seen: set[str] = set()
        for fut in pending:
            # a result lost with a dead worker is recomputed and as_completed may report
            # its future a second time: take each result once
            if fut.key in seen:
                continue
            seen.add(fut.key)
            result = fut.result()
            fut.release()
            for batch in _take(it, 1):
                pending.add(submit(batch))
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
    group, resumed = open_output(s, resume_key(s, "predict", {"channels_last": cfg.model.channels_last}))
    if not resumed:
        dtype = "float64" if cfg.model.precision == "float64" else "float32"
        create_array(group, "embeddings", (E, *plan.volume), (E, *plan.write_shape), dtype)
        create_array(group, "foreground", plan.volume, plan.write_shape, dtype)
        create_array(group, "done", plan.grid, (1,) * plan.ndim, "uint8")
        group.attrs.update({"pipeline": provenance(s)})
    job = make_job(s, torch_threads(cfg.cluster), "done")
    todo, done = pending_blocks(job, resumed)
    logger.info("predict: %d blocks of %s (read %s), %d already done", len(plan), plan.write_shape,
                plan.read_shape, len(done))
    batches = [todo[i : i + cfg.blocks.blocks_per_task] for i in range(0, len(todo), cfg.blocks.blocks_per_task)]
    t0 = time.perf_counter()
    with _client(cfg, client) as c:
        for _ in execute(c, predict_task, job, batches, desc="predict", total=len(batches),
                         progress=progress, gpu=True):
            pass
    group.attrs.update({"complete": True, "resumed_blocks": len(done)})
    logger.info("predict: done in %.1f s -> %s", time.perf_counter() - t0, cfg.output.path)
    return Path(cfg.output.path)


def _client(cfg: Config, client: Any) -> Any:
    """Use the caller's client when given, else open (and later close) the configured one."""
    return nullcontext(client) if client is not None else open_client(cfg.cluster)


# ------------------------------------------------------------------ segmentation


@dataclass(frozen=True)
class SegJob:
    """A :class:`Job` plus the clustering and merge parameters."""

    job: Job
    params: ClusteringParams
    min_contact: int
    max_distance: float
    embed_dim: int

    @property
    def stride(self) -> int:
        return math.prod(self.job.plan.write_shape)

    @property
    def out(self) -> Path:
        return Path(self.job.output)


def _face_axes(plan: BlockPlan) -> list[int]:
    return [a for a, g in enumerate(plan.grid) if g > 1]


def _plane(box: Any, axis: int) -> tuple[slice, ...]:
    return tuple(s for i, s in enumerate(box.to_slices()) if i != axis)


def cluster_task(sj: SegJob, linears: Sequence[int]) -> list[dict[str, Any]]:
    """Predict + cluster blocks; write fragment ids and face planes. Returns per-block summaries."""
    from .cluster import fragments
    from .merge import fragment_ids

    job = sj.job
    pred = get_predictor(job.checkpoint, job.device, job.precision, job.channels_last, job.threads)
    frag = job.array("scratch/fragments")
    results = []
    for block, data in prefetched(job, linears):
        lin = block.linear
        out = pred(data, job.stats)
        rel = block.valid.to_slices(relative_to=block.write)
        emb, fg = out[(slice(0, -1), *rel)], out[(-1, *rel)]
        local = fragments(emb, fg, sj.params)
        ids = fragment_ids(local, lin, sj.stride)
        frag[block.valid.to_slices()] = ids
        k = int(local.max())
        sizes = np.bincount(local.ravel(), minlength=k + 1)[1:]
        if sj.params.method != "connectivity":  # faces carry each fragment's mean embedding (the evidence)
            sums = np.stack([np.bincount(local.ravel(), weights=e.ravel(), minlength=k + 1) for e in emb])
            means = sums / np.maximum(np.bincount(local.ravel(), minlength=k + 1), 1)
            face_emb = means[:, local]
        else:
            face_emb = emb
        for a in _face_axes(job.plan):
            i, g = block.index[a], job.plan.grid[a]
            plane = _plane(block.valid, a)
            for side, pos, boundary in ((1, 0, i - 1), (0, -1, i)):
                if 0 <= boundary < g - 1:
                    job.array(f"scratch/face_lab_{a}")[(boundary, side, *plane)] = ids.take(pos, axis=a)
                    job.array(f"scratch/face_emb_{a}")[(boundary, side, slice(None), *plane)] = face_emb.take(pos, axis=a + 1)
        mark_done(job, block)
        results.append({"linear": lin, "count": k, "sizes": sizes.astype(np.int64)})
    return results


def summary_task(sj: SegJob, linears: Sequence[int]) -> list[dict[str, Any]]:
    """Summaries of blocks clustered by an earlier (interrupted) run, from their fragments."""
    frag = sj.job.array("scratch/fragments", mode="r")
    out = []
    for lin in linears:
        block = sj.job.plan.block_at(lin)
        ids = frag[block.valid.to_slices()]
        local = np.where(ids > 0, ids - np.uint64(lin) * np.uint64(sj.stride), 0).astype(np.int64)
        sizes = np.bincount(local.ravel())[1:]
        out.append({"linear": lin, "count": int(local.max()), "sizes": sizes.astype(np.int64)})
    return out


def pair_task(sj: SegJob, linears: Sequence[int]) -> np.ndarray:
    """Accepted fragment pairs across the upper faces of the given blocks, reduced."""
    from .merge import accept_by_evidence, components, face_pairs

    edges = []
    plan = sj.job.plan
    for lin in linears:
        block = plan.block_at(lin)
        for a in _face_axes(plan):
            i = block.index[a]
            if i >= plan.grid[a] - 1:
                continue
            plane = _plane(block.valid, a)
            lab = sj.job.array(f"scratch/face_lab_{a}", mode="r")
            emb = sj.job.array(f"scratch/face_emb_{a}", mode="r")
            la, lb = lab[(i, 0, *plane)], lab[(i, 1, *plane)]
            ea, eb = emb[(i, 0, slice(None), *plane)], emb[(i, 1, slice(None), *plane)]
            if sj.params.method == "connectivity":
                pairs, _ = face_pairs(la, lb, ea, eb, sj.params.threshold)
                edges.append(pairs)
            else:
                pairs, contact = face_pairs(la, lb)
                if len(pairs):
                    ma = _first_value(la, ea, pairs[:, 0])
                    mb = _first_value(lb, eb, pairs[:, 1])
                    edges.append(accept_by_evidence(pairs, contact, ma, mb, sj.min_contact, sj.max_distance))
    return components(edges)


def _first_value(lab: np.ndarray, emb: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The face value stored for each id (constant per fragment for meanshift faces)."""
    flat = lab.ravel()
    order = np.argsort(flat, kind="stable")
    pos = order[np.searchsorted(flat[order], ids)]
    return emb.reshape(emb.shape[0], -1)[:, pos].T


def relabel_task(sj: SegJob, linears: Sequence[int], tables: Sequence[np.ndarray], dtype: str) -> list[dict[str, np.ndarray]]:
    """Map fragment ids to global ids with each block's own table; write ``segmentation``."""
    from .merge import object_stats

    frag = sj.job.array("scratch/fragments", mode="r")
    seg = sj.job.array("segmentation")
    stats = []
    for lin, table in zip(linears, tables, strict=True):
        block = sj.job.plan.block_at(lin)
        ids = frag[block.valid.to_slices()]
        local = np.where(ids > 0, ids - np.uint64(lin) * np.uint64(sj.stride), 0).astype(np.int64)
        labels = table[local].astype(dtype)
        seg[block.valid.to_slices()] = labels
        stats.append(object_stats(labels, block.valid.offset))
    return stats


def _tables_for(tables: Sequence[np.ndarray], linears: Sequence[int]) -> list[np.ndarray]:
    return [tables[i] for i in linears]


def _finalize(mapping: np.ndarray, counts: np.ndarray, stride: int, sizes: list[np.ndarray], min_size: int) -> tuple[list[np.ndarray], int]:
    from .merge import global_tables

    return global_tables(counts, stride, mapping, sizes, min_size)


def reduce_tree(
    client: Any, leaf: Callable[..., Any], combine: Callable[[Sequence[Any]], Any], job: Any,
    batches: list[list[int]], *, fan_in: int = 8, desc: str, progress: bool,
) -> Any:
    """``combine`` over the leaf results, as a tree of tasks (no task sees all leaves).

    Returns the root result as a future (or a value in serial mode)."""
    from tqdm import tqdm

    if client is None:
        level = [leaf(job, b) for b in tqdm(batches, desc=desc, disable=not progress)]
        while len(level) > 1:
            level = [combine(level[i : i + fan_in]) for i in range(0, len(level), fan_in)]
        return level[0] if level else combine([])
    from distributed import as_completed

    def _combine(*parts: Any) -> Any:
        return combine(parts)

    nthreads = sum(client.nthreads().values()) or 1
    window = max(16, 4 * nthreads)
    it = iter(batches)
    depth: dict[str, int] = {}
    buckets: dict[int, list[Any]] = {}

    def submit_leaf(batch: Sequence[int]) -> Any:
        fut = client.submit(leaf, job, batch, pure=False)
        depth[fut.key] = 0
        return fut

    bar = tqdm(total=len(batches), desc=desc, unit="task", disable=not progress)
    pending = as_completed([submit_leaf(b) for b in _take(it, window)])
    for fut in pending:
        if fut.key not in depth:  # reported twice (recomputed after a worker was lost)
            continue
        d = depth.pop(fut.key)
        if d == 0:
            bar.update(1)
            for b in _take(it, 1):
                pending.add(submit_leaf(b))
        bucket = buckets.setdefault(d, [])
        bucket.append(fut)
        if len(bucket) == fan_in:
            parent = client.submit(_combine, *bucket, pure=False)
            depth[parent.key] = d + 1
            buckets[d] = []
            pending.add(parent)
    bar.close()
    rest = [f for d in sorted(buckets) for f in buckets[d]]
    return rest[0] if len(rest) == 1 else client.submit(_combine, *rest, pure=False)


def clustering_params(cfg: Config, extra: dict[str, Any]) -> ClusteringParams:
    """The config's values, else the ones calibrated on validation data and stored in the
    checkpoint (used only for the method they were calibrated for), else defaults from the
    loss margins: connectivity threshold ``delta_d``, agglomeration threshold ``0.2 delta_d``,
    merge distance ``4/3 delta_d``, growth into foreground > 0.5 within 3 voxels, bandwidth
    ``(delta_v + delta_d) / 2``."""
    delta_v = float(extra.get("delta_v", 0.5))
    delta_d = float(extra.get("delta_d", 1.5))
    calibrated = dict(extra.get("clustering") or {})
    calibrated.setdefault("method", "connectivity")  # checkpoints calibrated before agglomeration existed
    c = cfg.clustering
    method = c.method or calibrated["method"]
    cal = calibrated if calibrated["method"] == method else {}
    default_threshold = 0.2 * delta_d if method == "agglomeration" else delta_d

    def pick(value: Any, key: str, default: Any) -> Any:
        return value if value is not None else type(default)(cal.get(key, default))

    fg = pick(c.foreground_threshold, "foreground_threshold", 0.5)
    return ClusteringParams(
        method=method,
        foreground_threshold=fg,
        threshold=pick(c.threshold, "threshold", default_threshold),
        merge_distance=pick(c.merge_distance, "merge_distance", 4 / 3 * delta_d),
        grow_threshold=pick(c.grow_threshold, "grow_threshold", min(0.5, fg)),
        grow_distance=pick(c.grow_distance, "grow_distance", ClusteringParams.grow_distance),
        bandwidth=pick(c.bandwidth, "bandwidth", (delta_v + delta_d) / 2),
        min_size=pick(c.min_size, "min_size", 0),
    )


def segment(
    config: Config | dict[str, Any] | str | Path, client: Any = None, progress: bool = False
) -> Path:
    """Predict, cluster, merge and relabel: write ``segmentation`` (uint32, or uint64 when
    more than 2**32 - 1 objects) and ``objects.csv`` to the output group."""
    from .merge import combine_stats, components, label_dtype

    cfg = as_config(config)
    s = setup(cfg)
    plan = s.plan
    _, extra = load_checkpoint(s.checkpoint)
    cp = clustering_params(cfg, extra)
    E = s.spec.embed_dim
    max_distance = cfg.merge.max_distance or (cp.merge_distance if cp.method == "agglomeration" else cp.bandwidth)
    params = {**cp.as_dict(), "min_contact": cfg.merge.min_contact, "max_distance": max_distance}
    group, resumed = open_output(s, resume_key(s, "segment", params))
    meta = provenance(s)
    meta["clustering"] = params
    logger.info("segment: clustering %s", params)
    if not resumed:
        scratch = group.create_group("scratch")
        create_array(scratch, "fragments", plan.volume, plan.write_shape, "uint64")
        create_array(scratch, "done", plan.grid, (1,) * plan.ndim, "uint8")
        emb_dtype = "float64" if cfg.model.precision == "float64" else "float32"
        for a in _face_axes(plan):
            plane = [v for i, v in enumerate(plan.volume) if i != a]
            pchunk = [w for i, w in enumerate(plan.write_shape) if i != a]
            nb = plan.grid[a] - 1
            create_array(scratch, f"face_lab_{a}", (nb, 2, *plane), (1, 1, *pchunk), "uint64")
            create_array(scratch, f"face_emb_{a}", (nb, 2, E, *plane), (1, 1, E, *pchunk), emb_dtype)
        group.attrs.update({"pipeline": meta})
    sj = SegJob(make_job(s, torch_threads(cfg.cluster), "scratch/done"), cp, cfg.merge.min_contact, max_distance, E)
    todo, done = pending_blocks(sj.job, resumed)
    if resumed:
        logger.info("segment: resuming, %d of %d blocks already clustered", len(done), len(plan))
    per = cfg.blocks.blocks_per_task
    batches = _chunks(len(plan), per)
    t0 = time.perf_counter()
    counts = np.zeros(len(plan), dtype=np.int64)
    sizes: list[np.ndarray] = [np.zeros(0, np.int64)] * len(plan)
    with _client(cfg, client) as c:
        stage1 = [(cluster_task, [todo[i : i + per] for i in range(0, len(todo), per)], True, "predict+cluster"),
                  (summary_task, [done[i : i + 64] for i in range(0, len(done), 64)], False, "resume")]
        for fn, fn_batches, gpu, desc in stage1:
            for results in execute(c, fn, sj, fn_batches, desc=desc, total=len(fn_batches),
                                   progress=progress, gpu=gpu):
                for r in results:
                    counts[r["linear"]] = r["count"]
                    if cp.min_size:
                        sizes[r["linear"]] = r["sizes"]
        t1 = time.perf_counter()
        root = reduce_tree(c, pair_task, components, sj, batches, desc="merge", progress=progress)
        if c is None:
            tables, n = _finalize(root, counts, sj.stride, sizes, cp.min_size)
        else:
            fin = c.submit(_finalize, root, counts, sj.stride, sizes, cp.min_size, pure=False)
            n = c.submit(lambda x: x[1], fin).result()
            tables_f = c.submit(lambda x: x[0], fin)
        dtype = label_dtype(n)
        create_array(group, "segmentation", plan.volume, plan.write_shape, dtype)
        t2 = time.perf_counter()
        if c is None:
            def extra_args(batch: Sequence[int]) -> tuple[Any, ...]:
                return (_tables_for(tables, batch), dtype)
        else:
            def extra_args(batch: Sequence[int]) -> tuple[Any, ...]:
                return (c.submit(_tables_for, tables_f, batch, pure=False), dtype)
        parts: list[dict[str, np.ndarray]] = []
        for stats in execute(c, relabel_task, sj, batches, desc="relabel", total=len(batches),
                             progress=progress, extra=extra_args):
            parts.extend(stats)
            if len(parts) > 64:
                parts = [combine_stats(parts)]
    objects = combine_stats(parts)
    write_objects(Path(cfg.output.path) / "objects.csv", objects, s.volume.voxel_size)
    t3 = time.perf_counter()
    group = open_group(cfg.output.path)
    meta["timing_s"] = {"predict_cluster": round(t1 - t0, 3), "merge": round(t2 - t1, 3), "relabel": round(t3 - t2, 3)}
    meta["objects"] = n
    meta["resumed_blocks"] = len(done)
    attrs: dict[str, Any] = {"pipeline": meta, "complete": True, "resumed_blocks": len(done)}
    if s.volume.ome is not None:
        attrs["ome"] = ome_label_metadata(s.volume, cfg)
    group.attrs.update(attrs)
    import shutil

    shutil.rmtree(Path(cfg.output.path) / "scratch", ignore_errors=True)
    logger.info("segment: %d objects in %.1f s -> %s", n, t3 - t0, cfg.output.path)
    return Path(cfg.output.path)


def write_objects(path: Path, objects: dict[str, np.ndarray], voxel_size: Sequence[float] | None) -> None:
    """Objects table: id, voxel count, bounding box (start inclusive, end exclusive), centroid."""
    nd = objects["lo"].shape[1] if objects["lo"].ndim == 2 and objects["lo"].shape[1] else 0
    axes = "zyx"[-nd:] if nd else ""
    header = ["id", "voxels"] + [f"bbox_start_{a}" for a in axes] + [f"bbox_end_{a}" for a in axes] + [f"centroid_{a}" for a in axes]
    if voxel_size:
        header += ["volume"]
    lines = [",".join(header)]
    vol = float(np.prod(voxel_size)) if voxel_size else None
    for i in range(len(objects["id"])):
        row = [str(int(objects["id"][i])), str(int(objects["count"][i]))]
        row += [str(int(x)) for x in objects["lo"][i]] + [str(int(x)) for x in objects["hi"][i]]
        row += [f"{x / objects['count'][i]:.3f}" for x in objects["sum"][i]]
        if vol is not None:
            row.append(f"{objects['count'][i] * vol:.6g}")
        lines.append(",".join(row))
    path.write_text("\n".join(lines) + "\n")


def ome_label_metadata(vol: InputVolume, cfg: Config) -> dict[str, Any]:
    """NGFF 0.5 metadata that makes the output group an OME-Zarr label image whose
    single scale level is the ``segmentation`` array, with the input's axes and voxel size."""
    axes = vol.ome["axes"] if vol.ome else [{"name": a, "type": "space"} for a in "zyx"[-vol.ndim:]]
    scale = list(vol.voxel_size) if vol.voxel_size else [1.0] * vol.ndim
    return {
        "version": "0.5",
        "multiscales": [{
            "name": "segmentation",
            "axes": axes,
            "datasets": [{"path": "segmentation",
                          "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
        }],
        "image-label": {"version": "0.5", "source": {"image": str(cfg.input.path)}},
    }
