"""Training with the discriminative loss on (image, instance labels) volumes.

Random crops whose output window is larger than ``step`` on every axis (the
paper's condition for consistent embeddings), augmentation (flips, in-plane 90
degree rotations, elastic deformation, intensity scale/shift, gaussian noise),
a validation split scored with AP@0.5 of the connectivity clustering, and
checkpoints that carry the full spec (resumable).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from scipy import ndimage

from .blocks import reflect_indices
from .cluster import ClusteringParams, fragments, remove_small
from .config import ConfigError, Frozen, read_yaml
from .io import read_image
from .loss import LossWeights, discriminative_loss
from .model import ModelSpec, init_model, load_checkpoint, save_checkpoint
from .predict import NormStats, Predictor, normalise, predict_whole

logger = logging.getLogger(__name__)


class VolumeSource(Frozen):
    image: Path
    labels: Path
    image_dataset: str | None = None
    labels_dataset: str | None = None
    labels_are_mask: bool = Field(False, description="labels are a binary mask: use its connected components")


class SyntheticSource(Frozen):
    count: int = Field(8, gt=0)
    shape: tuple[int, ...] = (32, 96, 96)
    radius: tuple[float, float] = (4.0, 9.0)
    anisotropy: float = Field(1.0, gt=0)
    density: float = Field(0.6, gt=0, le=1)
    overlap: float = Field(0.15, ge=0, lt=1)
    seed: int = 0


class AugmentConfig(Frozen):
    flips: bool = True
    rotations: bool = True
    elastic: float = Field(0.5, ge=0, le=1, description="probability of an elastic deformation")
    elastic_strength: float = Field(2.0, ge=0, description="displacement std in voxels")
    intensity: bool = True
    noise: float = Field(0.05, ge=0, description="max gaussian noise std (normalised units)")


class LossConfig(Frozen):
    delta_v: float = Field(0.5, gt=0)
    delta_d: float = Field(1.5, gt=0)
    alpha: float = Field(1.0, ge=0)
    beta: float = Field(1.0, ge=0)
    gamma: float = Field(0.001, ge=0)
    foreground: float = Field(1.0, ge=0)


class TrainConfig(Frozen):
    model: ModelSpec = ModelSpec()
    resume: Path | None = Field(None, description="checkpoint to continue from (its spec wins)")
    data: tuple[VolumeSource, ...] = ()
    synthetic: SyntheticSource | None = None
    validation: tuple[VolumeSource, ...] = Field((), description="held-out volumes; none: the last "
                                                 "'validation_split' training volumes (synthetic ones last)")
    validation_split: int = Field(1, ge=1, description="volumes held out for validation when 'validation' is empty")
    loss: LossConfig = LossConfig()
    augment: AugmentConfig = AugmentConfig()
    foreground_target: Literal["mask", "interior"] = Field(
        "mask", description="interior: voxels touching another instance are background, so touching "
        "objects are apart in the foreground channel")
    output_shape: tuple[Annotated[int, Field(gt=0)], ...] | None = Field(
        None, description="output window of a crop (multiple of step, > step); none: 2*step+step"
    )
    batch_size: int = Field(2, gt=0)
    iterations: int = Field(1000, gt=0)
    lr: float = Field(1e-3, gt=0)
    val_every: int = Field(200, gt=0)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, gt=0)
    time_limit_s: float | None = Field(
        None, gt=0, description="stop after this many seconds (e.g. a SLURM walltime); the learning rate then "
        "anneals over the time budget instead of the iterations, which become an upper bound")
    workers: int = Field(0, ge=0, description="data-loading processes making crops (0: in the training "
                         "process); deterministic for a given seed and number of workers")
    out: Path = Path("model.pt")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if not self.data and self.synthetic is None:
            raise ValueError("give training volumes in 'data' or a 'synthetic' section")
        return self


def load_train_config(path: str | Path, overrides: tuple[str, ...] = ()) -> TrainConfig:
    from pydantic import ValidationError

    from .config import apply_overrides

    data = apply_overrides(read_yaml(path), overrides)
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        msgs = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"invalid training config '{path}': " + "; ".join(msgs)) from None


# ------------------------------------------------------------------ data


def norm_stats(image: np.ndarray, spec: ModelSpec) -> NormStats:
    n = spec.normalisation
    if n.kind == "scale":
        return NormStats.from_values(n, 0, 1)
    lo, hi = np.percentile(image, [n.low, n.high])
    return NormStats.from_values(n, float(lo), float(hi))


def load_volumes(sources: tuple[VolumeSource, ...]) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for src in sources:
        img = read_image(src.image, src.image_dataset)
        lab = read_image(src.labels, src.labels_dataset)
        if img.shape != lab.shape:
            raise ConfigError(f"image '{src.image}' {img.shape} and labels '{src.labels}' {lab.shape} differ in shape")
        if src.labels_are_mask:
            lab, _ = ndimage.label(lab > 0)
        out.append((img, lab.astype(np.int64)))
    return out


def synthetic_volumes(src: SyntheticSource) -> list[tuple[np.ndarray, np.ndarray]]:
    from .synthetic import SyntheticSpec, generate

    spec = SyntheticSpec(shape=tuple(src.shape), radius=src.radius, anisotropy=src.anisotropy, density=src.density,
                         overlap=src.overlap)
    return [tuple(a.astype(np.int64) if i else a for i, a in enumerate(generate(spec, seed=src.seed + k)))  # type: ignore[misc]
            for k in range(src.count)]


def _read_reflected(arr: np.ndarray, start: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    idx = [np.asarray(reflect_indices(s, s + n, size)) for s, n, size in zip(start, shape, arr.shape)]
    return arr[np.ix_(*idx)]


def interior(labels: np.ndarray) -> np.ndarray:
    """Foreground without the voxels that touch a different instance (face neighbours)."""
    fg = labels > 0
    out = fg.copy()
    for ax in range(labels.ndim):
        a = [slice(None)] * labels.ndim
        b = [slice(None)] * labels.ndim
        a[ax], b[ax] = slice(0, -1), slice(1, None)
        la, lb = labels[tuple(a)], labels[tuple(b)]
        touch = (la != lb) & (la > 0) & (lb > 0)
        out[tuple(a)] &= ~touch
        out[tuple(b)] &= ~touch
    return out


class CropSampler:
    """Random training crops: input ``output_shape + 2 * context``, labels and foreground
    target on the output window."""

    def __init__(self, volumes: list[tuple[np.ndarray, np.ndarray]], spec: ModelSpec, output_shape: tuple[int, ...],
                 augment: AugmentConfig, rng: np.random.Generator, foreground_target: str = "mask") -> None:
        self.foreground_target = foreground_target
        self.volumes = [(normalise(img, norm_stats(img, spec)), lab) for img, lab in volumes]
        self.spec = spec
        self.out = output_shape
        self.ctx = spec.context
        self.aug = augment
        self.rng = rng
        self.weights = np.array([img.size for img, _ in self.volumes], dtype=float)
        self.weights /= self.weights.sum()

    def sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        img, lab = self.volumes[self.rng.choice(len(self.volumes), p=self.weights)]
        inp = tuple(o + 2 * c for o, c in zip(self.out, self.ctx))
        start = tuple(int(self.rng.integers(0, max(1, s - o + 1))) - c for s, o, c in zip(img.shape, self.out, self.ctx))
        x = _read_reflected(img, start, inp)
        y = _read_reflected(lab, start, inp)
        x, y = self._augment(x, y)
        win = tuple(slice(c, c + o) for c, o in zip(self.ctx, self.out))
        fg = interior(y) if self.foreground_target == "interior" else y > 0
        return x[None].astype(np.float32), y[win], fg[win]

    def _augment(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, rng, nd = self.aug, self.rng, x.ndim
        if a.flips:
            for ax in range(nd):
                if rng.random() < 0.5:
                    x, y = np.flip(x, ax), np.flip(y, ax)
        if a.rotations and x.shape[-1] == x.shape[-2]:
            k = int(rng.integers(0, 4))
            x, y = np.rot90(x, k, axes=(-2, -1)), np.rot90(y, k, axes=(-2, -1))
        if a.elastic and rng.random() < a.elastic:
            x, y = elastic(x, y, a.elastic_strength, rng)
        x = np.ascontiguousarray(x)
        if a.intensity:
            x = x * rng.uniform(0.8, 1.2) + rng.uniform(-0.1, 0.1)
        if a.noise:
            x = x + rng.normal(0, rng.uniform(0, a.noise), size=x.shape)
        return x, np.ascontiguousarray(y)


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """``(n_out, n_in)`` linear-interpolation weights from ``n_in`` evenly spaced nodes."""
    pos = np.linspace(0, n_in - 1, n_out)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    w = pos - lo
    m = np.zeros((n_out, n_in), dtype=np.float32)
    m[np.arange(n_out), lo] = 1 - w
    m[np.arange(n_out), lo + 1] = w
    return m


def smooth_field(coarse: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Upsample a coarse random field to ``shape`` (separable linear interpolation: a few
    small matrix products, ~10x cheaper than ``ndimage.zoom`` of order 3)."""
    out = coarse
    for ax, n in enumerate(shape):
        out = np.moveaxis(np.tensordot(_interp_matrix(n, coarse.shape[ax]), np.moveaxis(out, ax, 0), axes=1), 0, ax)
    return out


def elastic(x: np.ndarray, y: np.ndarray, strength: float, rng: np.random.Generator, spacing: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random displacement (coarse gaussian field, interpolated); labels nearest."""
    coarse = [max(2, s // spacing) for s in x.shape]
    coords = list(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in x.shape], indexing="ij", sparse=True))
    full = [c + smooth_field(rng.normal(0, strength, size=coarse).astype(np.float32), x.shape) for c in coords]
    xs = ndimage.map_coordinates(x, full, order=1, mode="reflect")
    ys = ndimage.map_coordinates(y, full, order=0, mode="reflect")
    return xs, ys


class _Crops(torch.utils.data.IterableDataset):
    """Endless crops; each data-loading worker draws from its own seeded generator."""

    def __init__(self, sampler: CropSampler, seed: int) -> None:
        self.sampler, self.seed = sampler, seed

    def __iter__(self):  # type: ignore[no-untyped-def]
        info = torch.utils.data.get_worker_info()
        if info is not None:
            from threadpoolctl import threadpool_limits

            # one thread per worker for torch AND numpy's BLAS: N workers x all-core BLAS
            # pools oversubscribe the CPU (measured: 9x slower training on a 16-core GPU node)
            torch.set_num_threads(1)
            self._limits = threadpool_limits(1)
            self.sampler.rng = np.random.default_rng([self.seed, info.id])
        while True:
            yield self.sampler.sample()


def batches(sampler: CropSampler, batch_size: int, workers: int, seed: int, pin: bool = False):  # type: ignore[no-untyped-def]
    """Endless ``(x, labels, foreground)`` tensor batches, made in ``workers`` processes
    (or in this one when 0, drawing from ``sampler.rng``)."""
    if workers == 0:
        while True:
            batch = [sampler.sample() for _ in range(batch_size)]
            yield tuple(torch.from_numpy(np.stack([b[i] for b in batch])) for i in range(3))
    loader = torch.utils.data.DataLoader(_Crops(sampler, seed), batch_size=batch_size, num_workers=workers,
                                         pin_memory=pin, prefetch_factor=4, persistent_workers=True)
    yield from loader


# ------------------------------------------------------------------ loop


def clustering_grid(delta_d: float, median_size: float, full: bool = True) -> list[dict[str, Any]]:
    """Candidate clustering parameters scored by :func:`validate` (scaled by the loss margin
    ``delta_d`` and the median object size of the validation data). ``full=False``: two
    candidates, for the cheap validations during training (the full grid costs about a
    minute of CPU per three (32,96,96) volumes, as long as 1000 GPU iterations)."""
    def conn(fg: float, k: float) -> dict[str, Any]:
        return {"method": "connectivity", "foreground_threshold": fg, "threshold": round(k * delta_d, 4)}

    def agg(fg: float, k: float) -> dict[str, Any]:
        return {"method": "agglomeration", "foreground_threshold": fg, "threshold": round(0.2 * delta_d, 4),
                "merge_distance": round(k * delta_d, 4), "grow_threshold": min(0.5, fg),
                "grow_distance": ClusteringParams.grow_distance}

    if not full:
        return [{**conn(0.5, 1.0), "min_size": 0}, {**agg(0.7, 4 / 3), "min_size": int(0.1 * median_size)}]
    grid: list[dict[str, Any]] = []
    for fg in (0.5, 0.7, 0.85):
        grid += [conn(fg, k) for k in (0.5, 0.75, 1.0, 1.25)] + [agg(fg, k) for k in (1.0, 4 / 3, 5 / 3)]
    sizes = sorted({0, int(0.1 * median_size), int(0.25 * median_size)})
    return [{**g, "min_size": m} for g in grid for m in sizes]


def validate(model: torch.nn.Module, volumes: list[tuple[np.ndarray, np.ndarray]], delta_d: float, device: str,
             full: bool = True) -> dict[str, Any]:
    """AP@0.5 and avAP on whole validation volumes for every candidate of
    :func:`clustering_grid`; the best (AP@0.5, then avAP) is returned as ``clustering`` and
    stored in the checkpoint as the model's default method and parameters."""
    from .metrics import evaluate_many

    pred = Predictor(model, device=device)
    outs = [(predict_whole(pred, img[None], norm_stats(img, model.spec)), lab) for img, lab in volumes]
    sizes = np.concatenate([np.bincount(lab.ravel())[1:] for _, lab in volumes])
    median = float(np.median(sizes[sizes > 0])) if (sizes > 0).any() else 0.0
    best: dict[str, Any] = {}
    key, segs = None, []
    for cand in clustering_grid(delta_d, median, full):  # min_size varies fastest: cluster once per key
        params = ClusteringParams.from_dict({**cand, "min_size": 0})
        if params != key:
            key, segs = params, [fragments(o[:-1], o[-1], params) for o, _ in outs]
        s = evaluate_many([(remove_small(seg, cand["min_size"]), lab) for seg, (_, lab) in zip(segs, outs)])
        row = {"ap50": s.at(0.5)["ap"], "avap": s.avap, "clustering": cand}
        if not best or (row["ap50"], row["avap"]) > (best["ap50"], best["avap"]):
            best = row
    model.train()
    return best


def _device(cfg: TrainConfig) -> str:
    if cfg.device != "auto":
        return cfg.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def split_volumes(cfg: TrainConfig) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[tuple[np.ndarray, np.ndarray]]]:
    """``(training, validation)`` volumes: ``validation`` when given, else the last
    ``validation_split`` of the training list (which keeps at least one)."""
    volumes = load_volumes(cfg.data)
    if cfg.synthetic:
        volumes += synthetic_volumes(cfg.synthetic)
    val = load_volumes(cfg.validation)
    if not val:
        k = min(cfg.validation_split, len(volumes) - 1)
        volumes, val = volumes[: len(volumes) - k], volumes[len(volumes) - k :]
    return volumes, val


def calibrate(cfg: TrainConfig) -> Path:
    """Score the clustering grid for the checkpoint ``cfg.resume`` on the validation
    volumes of ``cfg`` (as training would) and write it with the best parameters to ``cfg.out``."""
    if cfg.resume is None:
        raise ConfigError("calibrate needs the checkpoint to calibrate in 'resume'")
    model, extra = load_checkpoint(cfg.resume)
    _, val = split_volumes(cfg)
    device = _device(cfg)
    model.to(device).eval()
    metrics = validate(model, val, float(extra.get("delta_d", cfg.loss.delta_d)), device)
    logger.info("calibrated on %d volume(s): AP@0.5 %.3f avAP %.3f with %s", len(val), metrics["ap50"],
                metrics["avap"], metrics["clustering"])
    extra = {**extra, "metrics": {"ap50": metrics["ap50"], "avap": metrics["avap"]}, "clustering": metrics["clustering"]}
    return save_checkpoint(model.cpu(), cfg.out, extra)


def train(cfg: TrainConfig, progress: bool = False) -> Path:
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = _device(cfg)
    start_iter = 0
    if cfg.resume:
        model, extra = load_checkpoint(cfg.resume)
        start_iter = int(extra.get("iterations", 0))
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
    metrics: dict[str, float] = {}
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
            extra = _extra(cfg, done, metrics, time.perf_counter() - t0)
            save_checkpoint(model.cpu(), cfg.out, extra)
            if metrics["ap50"] > best:
                best = metrics["ap50"]
                save_checkpoint(model, Path(cfg.out).with_suffix(".best.pt"), extra)
            model.to(device).train()
        if last:
            break
    bar.close()
    if not val:
        save_checkpoint(model.cpu(), cfg.out, _extra(cfg, done, metrics, time.perf_counter() - t0))
    seconds = time.perf_counter() - t0
    logger.info("trained %d iterations in %.0f s (%.2f it/s, batch %d, %s) -> %s", done - start_iter, seconds,
                (done - start_iter) / seconds, cfg.batch_size, device, cfg.out)
    return Path(cfg.out)


def _extra(cfg: TrainConfig, iterations: int, metrics: dict[str, float], seconds: float) -> dict[str, Any]:
    metrics = dict(metrics)
    clustering = metrics.pop("clustering", None)
    return {"trained": True, "iterations": iterations, "delta_v": cfg.loss.delta_v, "delta_d": cfg.loss.delta_d,
            "metrics": metrics, "seed": cfg.seed, "train_seconds": round(seconds, 1),
            **({"clustering": clustering} if clustering else {})}


__all__ = ["TrainConfig", "calibrate", "load_train_config", "train"]
