"""The training loop: discriminative loss, Adam with a cosine schedule, periodic validation.

:func:`train` starts from a fresh model or resumes a checkpoint, draws augmented crops,
validates every ``val_every`` iterations (two clustering candidates; the full grid at
the end) and writes checkpoints whose metadata (:class:`~pipeline.checkpoint.CheckpointInfo`)
records the iterations, loss margins, metrics and the calibrated clustering; the best
validation AP@0.5 is also kept as ``<out>.best.pt``.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import CheckpointInfo, open_checkpoint, save_checkpoint
from ..config import ConfigError
from ..loss import LossWeights, discriminative_loss
from ..model import init_model
from .calibrate import split_volumes, train_device, validate
from .config import TrainConfig, check_out
from .data import CropSampler, batches

logger = logging.getLogger(__name__)


def train(cfg: TrainConfig, progress: bool = False) -> Path:
    """Train (or resume) a model as ``cfg`` says; returns the checkpoint path ``cfg.out``."""
    from tqdm import tqdm

    check_out(cfg)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = train_device(cfg)
    start_iter = 0
    if cfg.resume:
        ckpt = open_checkpoint(cfg.resume)
        model, start_iter = ckpt.model, ckpt.info.iterations
        logger.info("resuming from %s at iteration %d", cfg.resume, start_iter)
    else:
        model = init_model(cfg.model, seed=cfg.seed)
    spec = model.spec
    out_shape = cfg.output_shape or tuple(3 * s for s in spec.step)
    if len(out_shape) != spec.ndim or any(o % s or o <= s for o, s in zip(out_shape, spec.step)):
        raise ConfigError(
            f"output_shape {list(out_shape)} must be a multiple of step {list(spec.step)} and larger than it "
            f"on every axis (e.g. {[2 * s for s in spec.step]})"
        )
    volumes, val = split_volumes(cfg)
    if any(img.ndim != spec.ndim for img, _ in volumes + val):
        raise ConfigError(f"training volumes must be {spec.ndim}D like the model")
    diameter = training_diameter(volumes)
    sampler = CropSampler(volumes, spec, out_shape, cfg.augment, rng, cfg.foreground_target)
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.iterations, eta_min=cfg.lr * 0.05)
    weights = LossWeights(**cfg.loss.model_dump())
    amp = device == "cuda"
    best, history = -1.0, []
    t0 = time.perf_counter()
    end = start_iter + cfg.iterations
    bar = tqdm(total=None if cfg.time_limit_s else cfg.iterations, disable=not progress, desc="train")
    metrics: dict[str, Any] = {}
    stream = batches(sampler, cfg.batch_size, cfg.workers, cfg.seed, pin=device == "cuda")
    done = start_iter
    while done < end:
        elapsed = time.perf_counter() - t0
        last = done + 1 == end
        if cfg.time_limit_s:
            # the cosine schedule follows the elapsed fraction of the time budget
            frac = min(1.0, elapsed / cfg.time_limit_s)
            for group in opt.param_groups:
                group["lr"] = cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
            last = last or frac >= 1.0
        x, y, fg = (t.to(device, non_blocking=True) for t in next(stream))
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            out = model(x)
        loss, parts = discriminative_loss(out.float(), y, weights, fg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if not cfg.time_limit_s:
            sched.step()
        history.append(parts["total"])
        bar.update()
        bar.set_postfix(loss=f"{parts['total']:.3f}", fg=f"{parts['fg']:.3f}")
        done += 1
        if val and (done % cfg.val_every == 0 or last):
            model.eval()
            # the full calibration grid at the end, two candidates at intermediate validations
            metrics = validate(model, val, cfg.loss.delta_d, device, full=last)
            logger.info("iteration %d: loss %.4f (mean of last %d), validation AP@0.5 %.3f avAP %.3f at %s",
                        done, float(np.mean(history[-cfg.val_every:])), min(len(history), cfg.val_every),
                        metrics["ap50"], metrics["avap"], metrics["clustering"])
            info = checkpoint_info(cfg, done, metrics, time.perf_counter() - t0, diameter)
            save_checkpoint(model.cpu(), cfg.out, info)
            if metrics["ap50"] > best:
                best = metrics["ap50"]
                save_checkpoint(model, Path(cfg.out).with_suffix(".best.pt"), info)
            model.to(device).train()
        if last:
            break
    bar.close()
    if not val:
        save_checkpoint(model.cpu(), cfg.out, checkpoint_info(cfg, done, metrics, time.perf_counter() - t0, diameter))
    seconds = time.perf_counter() - t0
    logger.info("trained %d iterations in %.0f s (%.2f it/s, batch %d, %s) -> %s", done - start_iter, seconds,
                (done - start_iter) / seconds, cfg.batch_size, device, cfg.out)
    return Path(cfg.out)


def training_diameter(volumes: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, ...] | None:
    """Typical object diameter of the training labels (median per axis over the volumes'
    :func:`~pipeline.metrics.object_diameters`), recorded for ``input.diameter``."""
    from ..metrics import object_diameters

    found = []
    for _, labels in volumes:
        try:
            found.append(object_diameters(labels))
        except ValueError:  # no object large enough in this volume
            continue
    return tuple(round(float(d), 2) for d in np.median(np.array(found), axis=0)) if found else None


def checkpoint_info(cfg: TrainConfig, iterations: int, metrics: dict[str, Any], seconds: float,
                    diameter: tuple[float, ...] | None = None) -> CheckpointInfo:
    """The metadata of a training checkpoint; ``metrics`` as :func:`validate` returns them
    (its ``clustering`` becomes the checkpoint's calibration), or empty without validation."""
    metrics = dict(metrics)
    clustering = metrics.pop("clustering", None)
    return CheckpointInfo(trained=True, iterations=iterations, delta_v=cfg.loss.delta_v, delta_d=cfg.loss.delta_d,
                          metrics=metrics, seed=cfg.seed, train_seconds=round(seconds, 1),
                          **({"clustering": clustering} if clustering else {}),
                          **({"diameter": diameter} if diameter else {}))
