"""The public API: :func:`predict` and :func:`segment`, each the data flow of a run.

``prepare`` validates everything and writes nothing; the engine (serial or Dask) is
opened next, so a cluster that cannot start leaves no output behind; the store opens
the output (new, or resumed when an identical earlier run was interrupted); the stages
do the work; the store records provenance and completion.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .cluster.deploy import open_engine
from .clustering import ClusteringParams, Method, make_method, resolve_params
from .config import Config
from .errors import SpaceError, space_error
from .geometry import Box
from .network.metadata import CheckpointInfo
from .plan.labels import linkable
from .plan.outputs import plan_outputs
from .plan.prepare import Prepared, as_config, prepare
from .plan.region import REGION, covering_blocks, edge_ids
from .plan.sizing import auto_blocks_per_task, planned_workers
from .plan.space import Estimate, check_space, free_bytes, gib
from .runtime.engine import Engine
from .runtime.lock import RunLock
from .runtime.output import check_output
from .runtime.resume import provenance, resume_parts
from .runtime.store import ZOOMED, Store
from .runtime.timelapse import segment_timelapse, selected_timepoints
from .stages import (
    FragmentsStage,
    MergeStage,
    ObjectsStage,
    PredictStage,
    RelabelStage,
    RestoreStage,
    ScanStage,
    Task,
)
from .stages.ids import label_dtype
from .stages.labels import LabelsStage, Occupied, open_label_image
from .stages.objects import scratch_layout
from .stages.relabel import SEGMENTATION, relabel_skip, restore_plan
from .volume.ome_metadata import physical_grid

logger = logging.getLogger(__name__)

ConfigLike = Config | dict[str, Any] | str | Path


def clustering_params(cfg: Config, info: CheckpointInfo | dict[str, Any]) -> ClusteringParams:
    """The run's clustering parameters: config, else calibrated with the model, else from the loss margins."""
    return resolve_params(cfg.clustering, info if isinstance(info, CheckpointInfo) else CheckpointInfo.model_validate(info))


def clustering_method(run: Prepared) -> Method:
    params, c = clustering_params(run.config, run.checkpoint.info), run.config
    return make_method(params, c.merge.min_contact, c.merge.max_distance, c.clustering.backend, c.clustering.device)


@contextmanager
def _open_store(run: Prepared, stage: str, params: dict[str, Any], engine: Engine, need: Estimate) -> Iterator[Store]:
    """The output group: new (with provenance), or the interrupted identical run's; locked for
    this run until it ends (see :mod:`pipeline.runtime.lock`). A write that fails for space ends the
    run with one line naming the path and ``need``."""
    out = run.config.output
    run_id, layout = uuid.uuid4().hex, scratch_layout(run) if stage == "segment" else None
    lock = RunLock(out.path, run_id)
    try:
        store, resumed = Store.open(out.path, out.overwrite, resume_parts(run, stage, params, layout), run_id, lock)
        if not resumed:
            store.update_attrs({"pipeline": {**provenance(run), "parameters": params}})
        engine.also_check(lock.check)
        yield store
    except Exception as exc:
        full = space_error(exc)
        if full is None:
            raise
        raise space_refusal(run, full, need) from None
    finally:
        lock.release()


def space_refusal(run: Prepared, error: SpaceError, need: Estimate) -> SpaceError:
    """A write that failed for space, in one line: what, where, how much the run needs."""
    out = Path(run.config.output.path)
    where = f"'{error.path}'" if error.path else f"into output.path '{out}'"
    reason = str(error).split(" writing ")[0]
    return SpaceError(
        f"{reason} writing {where} (free on its filesystem now: {gib(free_bytes(error.path or out))}; this run needs "
        f"{need.describe()}); everything written so far is kept: free space (or raise the quota) and rerun the "
        "same command to resume", error.path)


def _unreadable(store: Store, found: dict[str, list[int]]) -> dict[str, Any] | None:
    """The input chunks read as empty: all in ``qc/unreadable.json``, the first ones in the attributes."""
    if not found:
        return None
    rows = [{"chunk": chunk, "region": region} for chunk, region in sorted(found.items())]
    store.qc_path("unreadable.json").write_text(json.dumps(rows, indent=1))
    logger.warning("%d input chunk(s) could not be read and were read as empty (input.unreadable: empty), first: %s; "
                   "all in %s", len(rows), rows[0]["chunk"], store.qc_path("unreadable.json"))
    return {"chunks": len(rows), "first": rows[:UNREADABLE_LISTED], "all": "qc/unreadable.json"}


UNREADABLE_LISTED = 100  # unreadable chunks listed in the attributes (all of them in qc/unreadable.json)


def predict(config: ConfigLike, client: Any = None, progress: bool = False) -> Path:
    """Predict embeddings (array ``embeddings``, channels first) and the foreground
    probability (array ``foreground``) for the whole input, block by block."""
    run = prepare(config)
    cfg, plan = run.config, run.plan
    check_output(cfg.output.path, cfg.output.overwrite)
    need = check_space(run, None, predict_only=True)
    t0 = time.perf_counter()
    with open_engine(cfg.cluster, client, progress) as engine, \
            _open_store(run, "predict", {"channels_last": cfg.model.channels_last}, engine, need) as store:
        logger.info("predict: %d blocks of %s (read %s)", len(plan), plan.write_shape, plan.read_shape)
        stage = PredictStage(Task.of(run, store), run.spec.embed_dim)
        for _ in stage.run(engine, run.blocks_per_task):
            pass
        store.finish({"resumed_blocks": stage.resumed, "recomputed_blocks": stage.recomputed,
                      "unreadable_input": _unreadable(store, stage.unreadable)})
    logger.info("predict: done in %.1f s -> %s", time.perf_counter() - t0, cfg.output.path)
    return Path(cfg.output.path)


def segment(config: ConfigLike, client: Any = None, progress: bool = False, region: Box | None = None) -> Path:
    """Predict, cluster, merge and relabel: write ``segmentation`` (uint32, or uint64 when more than
    2**32 - 1 objects) and the objects table (``objects/part-*.parquet``, ``objects.csv`` when small) to
    the output group; then the OME-Zarr label image (``output.labels``). A time-lapse input: each time
    point so, into one (t, z, y, x) result (:mod:`pipeline.timelapse`). With ``region`` (input voxels),
    only the blocks of the full run's plan that meet it are computed, and the output holds their
    labels (0 elsewhere), their objects table and a :class:`~pipeline.plan.region.RegionRecord` (no
    label image): objects clear of the computed box's edge are the full run's (:mod:`pipeline.plan.region`)."""
    if (timepoints := selected_timepoints(cfg := as_config(config), region)) is not None:
        return segment_timelapse(cfg, timepoints, segment, client, progress)
    run = prepare(cfg)
    cfg, per = run.config, run.blocks_per_task
    method = clustering_method(run)
    outputs = plan_outputs(run, region)
    target, area, blocks, absent = outputs.target, outputs.area, outputs.blocks, outputs.absent
    min_size = method.params.min_size
    logger.info("segment: clustering %s", ", ".join(f"{k} {v}" for k, v in method.describe().items()))
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    params = method.describe() if area is None else {**method.describe(), "region": area.to_json()}
    with open_engine(cfg.cluster, client, progress) as engine, _open_store(run, "segment", params, engine, outputs.need) as store:
        if target is not None:
            if linkable(target, Path(store.path)):  # the label image's level 0 is the segmentation, written once
                store = replace(store, links=(target.segmentation(),))
            if open_label_image(store, target) and store.links:  # a new label image: no segmentation in it yet
                reset_after_fragments(store)
        task = Task.of(run, store)
        fragments = FragmentsStage(task, method, run.spec.embed_dim)
        if blocks is not None:
            per = run.per_task(len(blocks))
        outside = np.ones(len(run.plan), bool) if area else np.zeros(len(run.plan), bool)
        outside[blocks or []] = False
        fragments.skip = outside
        if run.empty is not None:
            fragments.skip = ScanStage(run.plan, run.empty, absent).run(engine, blocks) | outside
        counts, empty = fragments.summaries(engine, per)
        empty &= ~outside  # blocks outside a region were not skipped as empty space
        if fragments.computed and store.has_markers(RelabelStage.name):  # blocks changed after relabel began
            logger.info("segment: %d blocks computed again; relabelling every block", fragments.computed)
            reset_after_fragments(store)
        timing["fragments"] = time.perf_counter() - t0
        tables, n = MergeStage(task, method).run(engine, counts, min_size, per, blocks)
        timing["merge"] = time.perf_counter() - t0 - sum(timing.values())
        relabel = RelabelStage(task, label_dtype(n), ZOOMED if run.zoom else SEGMENTATION, stats=not run.zoom)
        relabel.skip = relabel_skip(run.plan, counts, relabel.ring)  # elsewhere the fill value (0) stands
        for _ in relabel.run(engine, per, per_batch=relabel.tables_of(engine, tables)):
            pass
        timing["relabel"] = time.perf_counter() - t0 - sum(timing.values())
        record = None
        if area is not None:  # the objects on the edge of the computed box, before scratch goes
            labels = store.array(ZOOMED if run.zoom else SEGMENTATION, mode="r")
            record = area.record(len(blocks or []), edge_ids(labels, area.computed_grid, run.plan.volume))
        if run.zoom:
            restore(run, task, label_dtype(n), engine, area.computed if area else None)
            timing["restore"] = time.perf_counter() - t0 - sum(timing.values())
        grid = physical_grid(run.volume, cfg.input.scale_level)
        table = ObjectsStage(store, *(grid or (None, None)), task.measure).run(engine, n, cfg.output.objects_csv)
        timing["objects"] = time.perf_counter() - t0 - sum(timing.values())
        occupied = Occupied((counts > 0).reshape(run.plan.grid), run.plan.write_shape, run.zoom)
        label_image = LabelsStage(store, target, label_dtype(n), occupied, cfg.output.shards).run(engine) if target else None
        if label_image is not None:
            timing["labels"] = time.perf_counter() - t0 - sum(timing.values())
        meta = {**store.attrs()["pipeline"], "timing_s": {k: round(v, 3) for k, v in timing.items()}, "objects": n,
                "objects_table": table, "resumed_blocks": fragments.resumed, "recomputed_blocks": fragments.recomputed,
                "label_image": str(label_image) if label_image is not None else None,
                "unreadable_input": _unreadable(store, fragments.unreadable),
                "empty_blocks": {"skipped": int(empty.sum()), "of": len(run.plan),
                                 "decided_by": run.empty.describe() if run.empty else None}}
        if record is not None:
            meta[REGION] = record.to_json()
        attrs: dict[str, Any] = {"pipeline": meta, "resumed_blocks": fragments.resumed}
        store.write_empty(run.plan, empty)
        store.finish(attrs)
    logger.info("segment: %d objects in %.1f s -> %s", n, time.perf_counter() - t0, cfg.output.path)
    return Path(cfg.output.path)


def reset_after_fragments(store: Store) -> None:
    """Forget every stage after ``fragments`` (relabel, restore, the label image) and the object
    statistics: global ids change when any block's fragments do."""
    for stage in (RelabelStage.name, RestoreStage.name):
        store.clear_markers(stage)
    store.clear_markers_of(f"{LabelsStage.name}_")  # each level's; the label image group stays (it may hold the segmentation)
    store.clear_stats()


def restore(run: Prepared, task: Task, dtype: str, engine: Any, box: Box | None = None) -> None:
    """``input.diameter``: the labels of the resampled grid back onto the input grid (only the
    blocks that meet ``box``, when given)."""
    assert run.zoom is not None
    plan = restore_plan(run.volume.shape, run.plan, run.zoom)
    per = run.config.blocks.blocks_per_task or auto_blocks_per_task(
        len(plan), planned_workers(run.config.cluster), 16 * math.prod(plan.write_shape))
    logger.info("restore: labels from the resampled %s grid to the input's %s", list(run.plan.volume),
                list(plan.volume))
    stage = RestoreStage(replace(task, plan=plan, sweep=None), dtype, run.plan.volume, run.zoom)
    if box is not None:
        stage.skip = np.ones(len(plan), bool)
        stage.skip[covering_blocks(plan, box)] = False
    for _ in stage.run(engine, per):
        pass


__all__ = ["as_config", "clustering_params", "predict", "prepare", "segment"]
