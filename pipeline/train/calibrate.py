"""Validation and calibration: which clustering method and parameters suit a model.

:func:`validate` predicts whole validation volumes, clusters them with every candidate
of :func:`clustering_grid` and returns the best by AP@0.5 (then avAP); training stores
the winner in its checkpoints as the model's default clustering. :func:`calibrate`
does the same for an existing checkpoint and writes a copy with the new calibration.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..clustering import ClusteringParams, fragments, remove_small
from ..config import ConfigError
from ..network.checkpoint import load_checkpoint, save_checkpoint
from ..network.predict import Predictor, predict_whole
from ..runtime.progress import EVERY_S
from .config import TrainConfig, check_out
from .data import Volume, load_volumes, norm_stats, synthetic_volumes

logger = logging.getLogger(__name__)


def clustering_grid(delta_d: float, median_size: float, full: bool = True) -> list[dict[str, Any]]:
    """Candidate clustering parameters scored by :func:`validate` (scaled by the loss margin
    ``delta_d`` and the median object size of the validation data). ``full=False``: two
    candidates, for the cheap validations during training (the full grid costs about a
    minute of CPU per three (32,96,96) volumes, as long as 1000 GPU iterations)."""
    def conn(fg: float, k: float) -> dict[str, Any]:
        return {"method": "connectivity", "foreground_threshold": fg, "threshold": round(k * delta_d, 4)}

    def agg(fg: float, k: float, t: float = 0.2) -> dict[str, Any]:
        return {"method": "agglomeration", "foreground_threshold": fg, "threshold": round(t * delta_d, 4),
                "merge_distance": round(k * delta_d, 4), "grow_threshold": min(0.5, fg),
                "grow_distance": ClusteringParams.grow_distance}

    if not full:
        return [{**conn(0.5, 1.0), "min_size": 0}, {**agg(0.7, 4 / 3), "min_size": int(0.1 * median_size)}]
    grid: list[dict[str, Any]] = []
    # dim, low-contrast data needs the strict end (measured: fine-tunes); 0.9 between: the CPU generalist's
    # synthetic looks peak at 0.95, where real BBBC050 nuclei split (0.565 vs 0.941 at 0.9, RESULTS.md)
    for fg in (0.5, 0.7, 0.85, 0.9, 0.95):
        grid += [conn(fg, k) for k in (0.5, 0.75, 1.0, 1.25)]
        grid += [agg(fg, k, t) for t in (0.2, 0.13) for k in (1.0, 4 / 3, 5 / 3)]
    sizes = sorted({0, int(0.1 * median_size), int(0.25 * median_size)})
    return [{**g, "min_size": m} for g in grid for m in sizes]


def _keyed(grid: list[dict[str, Any]], first: list[dict[str, Any]]) -> list[list[tuple[int, dict[str, Any]]]]:
    """The grid's candidates (with their grid position) grouped by clustering key (all but
    ``min_size``: one clustering per key), the keys of ``first`` first, then in grid order."""
    groups: dict[tuple[Any, ...], list[tuple[int, dict[str, Any]]]] = {}
    for i, cand in enumerate(grid):
        groups.setdefault(tuple((k, v) for k, v in cand.items() if k != "min_size"), []).append((i, cand))
    early = [k for k in (tuple((k, v) for k, v in c.items() if k != "min_size") for c in first) if k in groups]
    return [groups[k] for k in dict.fromkeys([*early, *groups])]


def ranking(pooled_ap50: float, avap: float, per_volume_ap50: list[float], index: int, by: str = "pooled") -> tuple[float, ...]:
    """The sort key of a calibration candidate (higher is better). ``pooled``: AP@0.5 over all the
    validation volumes' objects pooled, then avAP, then the earlier in the grid. ``worst``: first the
    AP@0.5 of the volume the candidate does worst on, so that volumes with many objects (one dense look)
    cannot outvote a look with few (a real volume of 16 nuclei), then as ``pooled``."""
    head = (min(per_volume_ap50),) if by == "worst" else ()
    return (*head, pooled_ap50, avap, -index)


def validate(model: torch.nn.Module, volumes: list[Volume], delta_d: float, device: str,
             full: bool = True, timing: dict[str, float] | None = None, deadline: float | None = None,
             by: str = "pooled") -> dict[str, Any]:
    """AP@0.5 and avAP on whole validation volumes for every candidate of
    :func:`clustering_grid`; the best by :func:`ranking` (``by``: pooled or worst) is returned
    as ``clustering`` and stored in the checkpoint as the model's default method and parameters
    (with ``worst_ap50``, the AP@0.5 of the volume it does worst on).
    Partly annotated volumes are scored on their annotated voxels only
    (:func:`pipeline.qc.metrics.restrict`). ``timing`` (a dict) receives the seconds of prediction
    and of clustering and scoring per clustering key, from which :func:`validation_seconds`
    estimates a full calibration. ``deadline`` (a :func:`time.perf_counter` value): no clustering
    key is started that would end past it, except the quick candidates' (scored first, always: a
    training paused past its limit once saved the first quick candidate, connectivity at AP@0.5 0.19,
    over the agglomeration at 0.79), so a time limit holds; the full grid logs progress lines."""
    from ..qc.metrics import pooled, scores, volume_tables

    t0 = time.perf_counter()
    pred = Predictor(model, device=device)
    outs = [predict_whole(pred, v.image[None], norm_stats(v.image, model.spec)) for v in volumes]
    t1 = time.perf_counter()
    sizes = np.concatenate([np.bincount(v.known_labels().ravel())[1:] for v in volumes])
    median = float(np.median(sizes[sizes > 0])) if (sizes > 0).any() else 0.0
    quick = clustering_grid(delta_d, median, False)
    groups = _keyed(clustering_grid(delta_d, median, full), quick)
    uncut = len(_keyed(quick, []))  # the quick candidates' keys: never cut (a cut must not pick a worse method)
    best: dict[str, Any] = {}
    said, scored, keys = t1, 0, 0
    spent: dict[str, list[float]] = {}  # seconds per clustering key, by method
    for group in groups:
        now = time.perf_counter()
        if deadline is not None and keys >= uncut and now + (now - t1) / keys > deadline:
            logger.info("calibration cut at the time limit: %d of %d clustering settings scored (%d keys of %d) in "
                        "%.0f s", scored, sum(map(len, groups)), keys, len(groups), now - t1)
            break
        params = ClusteringParams.from_dict({**group[0][1], "min_size": 0})  # min_size varies within a key
        segs = [fragments(o[:-1], o[-1], params) for o in outs]
        for index, cand in group:
            tables = volume_tables((remove_small(seg, cand["min_size"]), v.labels, v.annotated)
                                   for seg, v in zip(segs, volumes))
            s = scores(pooled(tables))
            each = [scores(t).at(0.5)["ap"] for t in tables] if len(tables) > 1 else [s.at(0.5)["ap"]]
            row = {"ap50": s.at(0.5)["ap"], "avap": s.avap, "worst_ap50": min(each), "clustering": cand,
                   "key": ranking(s.at(0.5)["ap"], s.avap, each, index, by)}
            if not best or row["key"] > best["key"]:
                best = row
        scored, keys = scored + len(group), keys + 1
        spent.setdefault(params.method, []).append(time.perf_counter() - now)
        if full and time.perf_counter() - said >= EVERY_S:
            said = time.perf_counter()
            logger.info("calibrating: %d of %d clustering settings scored, best AP@0.5 %.3f (worst volume %.3f) so "
                        "far (%.0f s)", scored, sum(map(len, groups)), best["ap50"], best["worst_ap50"], said - t1)
    if timing is not None:
        timing.update(predict=t1 - t0, **{f"per_key_{m}": float(np.mean(v)) for m, v in spent.items()})
    model.train()
    best.pop("key", None)
    return best


def validation_seconds(timing: dict[str, float], full: bool = True) -> float:
    """Estimated seconds of a validation (the full grid, or the two candidates), from the
    ``timing`` an earlier :func:`validate` measured: its prediction, and per clustering method the
    seconds of one key (clustered and scored), times the keys of that method in the grid."""
    methods = [group[0][1]["method"] for group in _keyed(clustering_grid(1.0, 100.0, full), [])]
    known = [v for k, v in timing.items() if k.startswith("per_key_")]
    fallback = max(known) if known else 0.0
    # x2: clustering a trained model's output tends to cost more than an earlier one's (more fragments), and
    # the grid's finer agglomeration thresholds cost about 2x the quick candidate's (measured: 0.26 vs 0.12 s)
    return timing["predict"] + 2.0 * sum(timing.get(f"per_key_{m}", fallback) for m in methods)


def train_device(cfg: TrainConfig) -> str:
    """The torch device of training and calibration: ``cfg.device``, ``auto`` = cuda when there is one."""
    if cfg.device != "auto":
        return cfg.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def split_volumes(cfg: TrainConfig) -> tuple[list[Volume], list[Volume]]:
    """``(training, validation)`` volumes: ``validation`` when given, else the last
    ``validation_split`` of the training list (which keeps at least one); ``validation_split``
    0: the training volumes themselves."""
    volumes = load_volumes(cfg.data)
    if cfg.synthetic:
        volumes += synthetic_volumes(cfg.synthetic, cfg.workers)
    val = load_volumes(cfg.validation)
    if not val and cfg.validation_split == 0:
        logger.info("validating on the %d training volume(s) (validation_split: 0)", len(volumes))
        return volumes, volumes
    if not val:
        k = min(cfg.validation_split, len(volumes) - 1)
        volumes, val = volumes[: len(volumes) - k], volumes[len(volumes) - k :]
    return volumes, val


def calibrate(cfg: TrainConfig) -> Path:
    """Score the clustering grid for the checkpoint ``cfg.resume`` (or ``cfg.init``) on the
    validation volumes of ``cfg`` (as training would; partly annotated ones on their annotated
    voxels) and write it with the best parameters to ``cfg.out``.

    The metadata stays a dict so that its other keys are written back unchanged."""
    source = cfg.resume or cfg.init
    if source is None:
        raise ConfigError("calibrate needs the checkpoint to calibrate: --checkpoint, or 'resume'/'init' in the config")
    check_out(cfg)
    model, extra = load_checkpoint(source)
    _, val = split_volumes(cfg)
    device = train_device(cfg)
    model.to(device).eval()
    metrics = validate(model, val, float(extra.get("delta_d", cfg.loss.delta_d)), device, by=cfg.calibrate_by)
    logger.info("calibrated on %d volume(s): AP@0.5 %.3f (worst volume %.3f) avAP %.3f with %s", len(val),
                metrics["ap50"], metrics["worst_ap50"], metrics["avap"], metrics["clustering"])
    extra = {**extra, "metrics": {k: metrics[k] for k in ("ap50", "avap", "worst_ap50")},
             "clustering": metrics["clustering"]}
    return save_checkpoint(model.cpu(), cfg.out, extra)
