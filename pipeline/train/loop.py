"""The training loop: discriminative loss, Adam with a cosine schedule, periodic validation.

:func:`train` starts from a fresh model, fine-tunes given weights (``init``: a fresh
schedule) or resumes a checkpoint (``resume``: the schedule goes on), draws augmented crops,
validates every ``val_every`` iterations (two clustering candidates; the full grid at the
end) and writes checkpoints whose metadata (:class:`~pipeline.network.metadata.CheckpointInfo`)
records the iterations, loss margins, metrics, the calibrated clustering and the typical
object diameter of the training labels; the best validation AP@0.5 is also kept as
``<out>.best.pt``. Progress is a bar on a terminal and log lines elsewhere.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import ConfigError
from ..network.checkpoint import checkpoint_authors, open_checkpoint, save_checkpoint
from ..network.loss import LossWeights, discriminative_loss
from ..network.metadata import CheckpointInfo, local_author
from ..network.model import UNet, init_model
from ..runtime.progress import EVERY_S
from .calibrate import split_volumes, train_device, validate, validation_seconds
from .config import Schedule, TrainConfig, check_out, schedule
from .data import CropSampler, Volume, batches, touches

logger = logging.getLogger(__name__)


def starting_model(cfg: TrainConfig) -> tuple[UNet, int, str]:
    """The model to train, the iteration it has done and its foreground target: fresh from
    ``cfg.model``, the weights and architecture of ``cfg.init`` (iteration 0), or the checkpoint
    ``cfg.resume`` (its count); the target as configured, else as the checkpoint learnt it."""
    if cfg.resume or cfg.init:
        ckpt = open_checkpoint(cfg.resume or cfg.init)  # type: ignore[arg-type]
        target = cfg.foreground_target or ckpt.info.foreground_target or "mask"
        if cfg.resume:
            logger.info("resuming %s at iteration %d", cfg.resume, ckpt.info.iterations)
            return ckpt.model, ckpt.info.iterations, target
        if "model" in cfg.model_fields_set and cfg.model != ckpt.spec:
            raise ConfigError(f"init '{cfg.init}' brings its own architecture, which differs from the config's "
                              "'model' section; remove 'model' (fine-tuning keeps the architecture of 'init')")
        logger.info("fine-tuning %s (%d iterations trained), a fresh schedule, foreground target %s", cfg.init,
                    ckpt.info.iterations, target)
        return ckpt.model, 0, target
    return init_model(cfg.model, seed=cfg.seed), 0, cfg.foreground_target or "mask"


def check_window(window: tuple[int, ...], step: tuple[int, ...]) -> None:
    if len(window) != len(step) or any(o % s or o <= s for o, s in zip(window, step)):
        raise ConfigError(
            f"output_shape {list(window)} must be a multiple of step {list(step)} and larger than it "
            f"on every axis (e.g. {[2 * s for s in step]})"
        )


class TrainProgress:
    """A tqdm bar on a terminal; elsewhere (a SLURM log, redirected output, ``-q``) a log line
    every :data:`~pipeline.runtime.progress.EVERY_S` seconds: iteration, mean loss, speed, time left."""

    def __init__(self, sch: Schedule, start: int, bar: bool) -> None:
        from tqdm import tqdm

        self.sch, self.start = sch, start
        self.bar = tqdm(total=None if sch.time_limit_s else sch.iterations, desc="train") if bar else None
        self.t0 = self.last = time.perf_counter()
        self.losses: list[float] = []

    def update(self, done: int, parts: dict[str, float]) -> None:
        self.losses.append(parts["total"])
        if self.bar is not None:
            self.bar.update()
            self.bar.set_postfix(loss=f"{parts['total']:.3f}", fg=f"{parts['fg']:.3f}")
            return
        now = time.perf_counter()
        if now - self.last >= EVERY_S:
            self.last = now
            logger.info(self.line(done, now - self.t0))

    def line(self, done: int, elapsed: float) -> str:
        """``train: iteration 120 of 1000, loss 0.412 (last 50), 0.80 it/s, 18.2 min left``."""
        n = done - self.start
        rate = n / elapsed if elapsed > 0 else 0.0
        recent = self.losses[-50:]
        if self.sch.time_limit_s:
            total, left = "", max(0.0, self.sch.time_limit_s - elapsed)
        else:
            total, left = f" of {self.start + self.sch.iterations}", (self.sch.iterations - n) / rate if rate else 0.0
        return (f"train: iteration {done}{total}, loss {np.mean(recent):.3f} (last {len(recent)}), "
                f"{rate:.2f} it/s, {left / 60:.1f} min left")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train(cfg: TrainConfig, progress: bool = False) -> Path:
    """Train, fine-tune or resume a model as ``cfg`` says; returns the checkpoint path ``cfg.out``.
    ``progress``: a bar when standard error is a terminal (else log lines)."""
    check_out(cfg)
    t0 = time.perf_counter()  # a time limit counts everything from here
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = train_device(cfg)
    model, start_iter, target = starting_model(cfg)
    spec = model.spec
    sch = schedule(cfg, spec.step, device)
    check_window(sch.output_shape, spec.step)
    volumes, val = split_volumes(cfg)
    if any(v.image.ndim != spec.ndim for v in volumes + val):
        raise ConfigError(f"training volumes must be {spec.ndim}D like the model")
    diameter = training_diameter(volumes)
    sampler = CropSampler(volumes, spec, sch.output_shape, cfg.augment, rng, target)
    logger.info("training on %d volume(s) (%d partly annotated), validating on %d: batch %d of output %s, lr %g, %s "
                "on %s", len(volumes), sum(v.annotated is not None for v in volumes), len(val), sch.batch_size,
                list(sch.output_shape), sch.lr, f"{sch.time_limit_s:.0f} s" if sch.time_limit_s else
                f"{sch.iterations} iterations", device)
    timing: dict[str, float] = {}
    if val and start_iter == 0 and cfg.init:  # where the fine-tune starts, and what validating costs
        start = validate(model, val, cfg.loss.delta_d, device, full=False, timing=timing)
        logger.info("before fine-tuning: validation AP@0.5 %.3f avAP %.3f at %s", start["ap50"], start["avap"],
                    start["clustering"])
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=sch.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=sch.iterations, eta_min=sch.lr * 0.05)
    weights = LossWeights(**cfg.loss.model_dump())
    amp = device == "cuda"
    best, history = -1.0, []
    end = start_iter + sch.iterations
    bar = TrainProgress(sch, start_iter, progress and sys.stderr.isatty())
    metrics: dict[str, Any] = {}
    stream = batches(sampler, sch.batch_size, cfg.workers, cfg.seed, pin=device == "cuda")
    done, told = start_iter, False
    while done < end:
        elapsed = time.perf_counter() - t0
        last = done + 1 == end
        if sch.time_limit_s:
            # the cosine schedule follows the elapsed fraction of the time budget, less the final
            # calibration (estimated from the last validation), so the limit is the whole run's
            budget = sch.time_limit_s - (validation_seconds(timing, cfg.calibrate) if timing else 0.0)
            if timing and not told:
                told = True
                logger.info("the final validation%s is estimated at %.0f s: training stops at %.0f s of the %.0f s limit",
                            " and calibration" if cfg.calibrate else "", sch.time_limit_s - budget, budget,
                            sch.time_limit_s)
            frac = min(1.0, elapsed / max(budget, 1e-9))
            for group in opt.param_groups:
                group["lr"] = sch.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
            last = last or frac >= 1.0
        x, y, fg, w = (t.to(device, non_blocking=True) for t in next(stream))
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        loss, parts = discriminative_loss(out.float(), y, weights, fg, w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if not sch.time_limit_s:
            sched.step()
        history.append(parts["total"])
        done += 1
        bar.update(done, parts)
        if val and (done % sch.val_every == 0 or last):
            model.eval()
            # the full calibration grid at the end (unless calibrate: false), two candidates before
            started = time.perf_counter()
            metrics = validate(model, val, cfg.loss.delta_d, device, full=last and cfg.calibrate, timing=timing,
                               by=cfg.calibrate_by,
                               deadline=t0 + sch.time_limit_s if sch.time_limit_s and last else None)
            if last and cfg.calibrate:
                logger.info("calibrated the clustering on %d validation volume(s) in %.0f s", len(val),
                            time.perf_counter() - started)
            logger.info("iteration %d: loss %.4f (mean of last %d), validation AP@0.5 %.3f avAP %.3f at %s",
                        done, float(np.mean(history[-sch.val_every:])), min(len(history), sch.val_every),
                        metrics["ap50"], metrics["avap"], metrics["clustering"])
            info = checkpoint_info(cfg, done, metrics, time.perf_counter() - t0, diameter, target)
            save_checkpoint(model.cpu(), cfg.out, info)
            if metrics["ap50"] > best:
                best = metrics["ap50"]
                save_checkpoint(model, Path(cfg.out).with_suffix(".best.pt"), info)
            model.to(device).train()
        if last:
            break
    bar.close()
    if not val:
        save_checkpoint(model.cpu(), cfg.out, checkpoint_info(cfg, done, metrics, time.perf_counter() - t0, diameter, target))
    seconds = time.perf_counter() - t0
    logger.info("trained %d iterations in %.0f s (%.2f it/s, batch %d, %s) -> %s", done - start_iter, seconds,
                (done - start_iter) / seconds, sch.batch_size, device, cfg.out)
    return Path(cfg.out)


def training_diameter(volumes: list[Volume]) -> tuple[float, ...] | None:
    """Typical object diameter of the training labels (median per axis over the volumes'
    :func:`~pipeline.qc.metrics.object_diameters`), recorded for ``input.diameter``. In a partly
    annotated volume only objects annotated whole count (none of their voxels next to an
    unannotated one)."""
    from ..qc.metrics import object_diameters

    found = []
    for v in volumes:
        labels = v.known_labels()
        if v.annotated is not None:
            cut = np.unique(labels[touches(~v.annotated) & (labels > 0)])
            whole = np.where(np.isin(labels, cut), 0, labels)
            labels = whole if whole.any() else labels  # a mask drawn tight around each object: take them all
        try:
            found.append(object_diameters(labels))
        except ValueError:  # no object large enough in this volume
            continue
    return tuple(round(float(d), 2) for d in np.median(np.array(found), axis=0)) if found else None


def trainers(cfg: TrainConfig) -> tuple[str, ...]:
    """Who trained the model (:func:`local_author`), then the authors of the model it was fine-tuned
    from or resumes (:func:`checkpoint_authors`)."""
    source = cfg.resume or cfg.init
    base = checkpoint_authors(open_checkpoint(source)) if source is not None else ()
    return tuple(dict.fromkeys((local_author(), *base)))


def checkpoint_info(cfg: TrainConfig, iterations: int, metrics: dict[str, Any], seconds: float,
                    diameter: tuple[float, ...] | None = None, target: str | None = None) -> CheckpointInfo:
    """The metadata of a training checkpoint; ``metrics`` as :func:`validate` returns them
    (its ``clustering`` becomes the checkpoint's calibration), or empty without validation."""
    metrics = dict(metrics)
    clustering = metrics.pop("clustering", None)
    return CheckpointInfo(trained=True, iterations=iterations, delta_v=cfg.loss.delta_v, delta_d=cfg.loss.delta_d,
                          metrics=metrics, seed=cfg.seed, train_seconds=round(seconds, 1),
                          **({"clustering": clustering} if clustering else {}),
                          **({"diameter": diameter} if diameter else {}),
                          **({"fine_tuned_from": str(cfg.init)} if cfg.init else {}),
                          foreground_target=target or cfg.foreground_target or "mask",
                          authors=trainers(cfg))
