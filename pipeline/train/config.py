"""The training configuration: data sources, augmentation, loss, schedule and output.

Frozen pydantic models like the run config; :func:`load_train_config` reads a YAML
file, applies ``--set`` overrides and reports bad keys and values in one line with a
suggestion for a misspelt key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from ..config.validation import Frozen, apply_overrides, read_yaml, validate_model
from ..errors import UsageError
from ..network.model import ModelSpec


class VolumeSource(Frozen):
    """One training or validation volume: an image, its instance labels and, for partly
    annotated volumes, the mask of what was annotated (TIFF, HDF5 or zarr, same shape)."""

    image: Path
    labels: Path
    annotated: Path | None = Field(
        None, description="mask of the annotated voxels (nonzero = annotated; there labels 0 is background, >0 an "
        "object); the loss and the validation use only annotated voxels. none: every voxel is annotated")
    image_dataset: str | None = None
    labels_dataset: str | None = None
    annotated_dataset: str | None = None
    labels_are_mask: bool = Field(False, description="labels are a binary mask: use its connected components")


Range = float | tuple[float, float]


class SyntheticSource(Frozen):
    """Generated volumes (:mod:`pipeline.volume.synthetic`). An appearance value given as ``[low, high]``
    is drawn per volume (uniformly; ``photons`` log-uniformly), so one source can span many looks."""

    count: int = Field(8, gt=0)
    shape: tuple[int, ...] = (32, 96, 96)
    radius: tuple[float, float] = (4.0, 9.0)
    size: tuple[float, float] | None = Field(
        None, description="draw each volume's typical in-plane radius (voxels) log-uniformly from this range; "
        "objects then span +-30% around it (replaces radius)")
    anisotropy: Range = Field(1.0, description="z semi-axes shrink by this before rotation (elongated objects)")
    z_scale: Range = Field(1.0, description="z voxel size / xy voxel size (anisotropic sampling)")
    density: Range = 0.6
    overlap: Range = 0.15
    clusters: Range = Field(0.0, description="probability that an object touches an earlier one")
    irregularity: Range = 0.0
    blur: Range = 1.0
    blur_z: Range | None = Field(None, description="z sigma of the PSF (voxels); none: from blur and anisotropy")
    attenuation: Range = Field(0.0, description="fraction of signal lost from the first to the last z plane")
    haze: Range = Field(0.0, description="out-of-focus/scattered light, relative to the brightest object")
    texture: Range = 0.6
    chromatin: Range = 0.0
    seam: Range = 0.6
    brightness: tuple[float, float] = Field((0.4, 1.0), description="range of per-object brightness (dim and "
                                            "bright nuclei in one volume)")
    photons: Range = 200.0
    read_noise: Range = 2.0
    background: Range = 10.0
    seed: int = 0

    @model_validator(mode="after")
    def _ranges(self) -> SyntheticSource:
        for name, value in self.model_dump(exclude={"count", "shape", "seed", "brightness"}).items():
            if isinstance(value, tuple | list) and (len(value) != 2 or value[0] > value[1] or value[0] < 0):
                raise ValueError(f"synthetic.{name}: a range is [low, high] with 0 <= low <= high, got {list(value)}")
        for name, top in (("density", 1.0), ("overlap", 0.99), ("clusters", 1.0), ("attenuation", 0.99)):
            value = getattr(self, name)
            if (max(value) if isinstance(value, tuple) else value) > top:
                raise ValueError(f"synthetic.{name} must be at most {top}, got {value}")
        return self


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
    """A training run. Schedule values left out (none) are chosen for the device: a fine-tune
    (``init``) on a CPU gets a short, time-limited schedule of small crops (:func:`schedule`)."""

    model: ModelSpec = ModelSpec()
    init: str | None = Field(
        None, description="start from these weights and their architecture: `demo` (the bundled model) or a "
        "checkpoint path; a fine-tune starts a fresh schedule at iteration 0 (resume continues one)")
    resume: Path | None = Field(None, description="checkpoint to continue from (its spec and iteration count win)")
    data: tuple[VolumeSource, ...] = ()
    synthetic: SyntheticSource | None = None
    validation: tuple[VolumeSource, ...] = Field((), description="held-out volumes; none: the last "
                                                 "'validation_split' training volumes (synthetic ones last)")
    validation_split: int = Field(1, ge=0, description="volumes held out for validation when 'validation' is empty "
                                  "(0: validate and calibrate on the training volumes themselves)")
    loss: LossConfig = LossConfig()
    augment: AugmentConfig = AugmentConfig()
    foreground_target: Literal["mask", "interior"] | None = Field(
        None, description="interior: voxels touching another instance are background, so touching objects are "
        "apart in the foreground channel; none: what the init/resume checkpoint learnt (the bundled model: "
        "interior), else mask")
    output_shape: tuple[Annotated[int, Field(gt=0)], ...] | None = Field(
        None, description="output window of a crop (multiple of step, > step); none: 3*step, or about (16, 48, 48) "
        "for a fine-tune on a CPU")
    batch_size: int | None = Field(None, gt=0, description="none: 2")
    iterations: int | None = Field(None, gt=0, description="none: 1000 (a fine-tune on a CPU: an upper bound, "
                                   "time_limit_s decides)")
    lr: float | None = Field(None, gt=0, description="none: 1e-3 (a fine-tune: 5e-4)")
    val_every: int | None = Field(None, gt=0, description="none: 200 (a fine-tune on a CPU: 100)")
    calibrate: bool = Field(True, description="score the full clustering grid at the last validation and keep "
                            "the best as the checkpoint's clustering (minutes on a CPU: ~4 per (40,128,128) crop); "
                            "false: the two quick candidates (`pipeline calibrate` can score the grid later)")
    calibrate_by: Literal["pooled", "worst"] = Field(
        "pooled", description="how calibration ranks clustering settings over several validation volumes: pooled "
        "(AP@0.5 of all their objects together) or worst (the AP@0.5 of the volume a setting does worst on first: "
        "for validation volumes of different looks, where one dense look would outvote a volume of few objects)")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, gt=0)
    time_limit_s: float | None = Field(
        None, gt=0, description="stop after this many seconds (e.g. a SLURM walltime); the learning rate then "
        "anneals over the time budget instead of the iterations, which become an upper bound. none: no limit "
        "(a fine-tune on a CPU: 600)")
    workers: int = Field(0, ge=0, description="data-loading processes making crops (0: in the training "
                         "process); deterministic for a given seed and number of workers")
    out: Path = Field(Path("model.pt"), description="checkpoint to write (also <out>.best.pt); never into the "
                      "installed package, and never over an existing file, without 'overwrite'")
    overwrite: bool = Field(False, description="replace an existing checkpoint at 'out' (CLI: --overwrite)")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if not self.data and self.synthetic is None:
            raise ValueError("give training volumes in 'data' or a 'synthetic' section")
        if self.init is not None and self.resume is not None:
            raise ValueError("give 'init' (fine-tune: fresh schedule from those weights) or 'resume' (continue a "
                             "run), not both")
        return self


class Schedule(Frozen):
    """The resolved schedule of a training run (see :func:`schedule`)."""

    output_shape: tuple[int, ...]
    batch_size: int
    iterations: int
    lr: float
    val_every: int
    time_limit_s: float | None


FINETUNE_CPU_WINDOW = (16, 48, 48)  # output window of a fine-tune crop on a CPU (2D: the last two)
FINETUNE_CPU_SECONDS = 600.0
UNBOUNDED = 1_000_000  # iterations when a time limit decides


def schedule(cfg: TrainConfig, step: tuple[int, ...], device: str) -> Schedule:
    """Values the config leaves out, for this device. A fine-tune (``init``) on a CPU: batch 2 of
    crops with an output window near (16, 48, 48), lr 5e-4, 10 minutes (the iterations an upper
    bound), validation every 100 iterations. Otherwise: batch 2, window 3*step, 1000 iterations,
    lr 1e-3, validation every 200."""
    cpu_finetune = cfg.init is not None and device == "cpu"
    if cfg.output_shape is not None:
        window = tuple(cfg.output_shape)
    elif cpu_finetune:
        want = FINETUNE_CPU_WINDOW[-len(step):]
        window = tuple(max(2 * s, round(w / s) * s) for w, s in zip(want, step))
    else:
        window = tuple(3 * s for s in step)
    time_limit = cfg.time_limit_s
    if time_limit is None and cpu_finetune and cfg.iterations is None:
        time_limit = FINETUNE_CPU_SECONDS
    return Schedule(
        output_shape=window,
        batch_size=cfg.batch_size or 2,
        iterations=cfg.iterations or (UNBOUNDED if time_limit else 1000),
        lr=cfg.lr or (5e-4 if cfg.init is not None else 1e-3),
        val_every=cfg.val_every or (100 if cpu_finetune else 200),
        time_limit_s=time_limit,
    )


class CheckpointExistsError(UsageError):
    """Training or calibration would replace a checkpoint the user did not ask to replace."""


def check_out(cfg: TrainConfig) -> None:
    """Refuse, before any work, to write ``cfg.out`` (or ``<out>.best.pt``) over an existing file
    or into the installed package (its bundled demo model) unless ``cfg.overwrite``."""
    if cfg.overwrite:
        return
    out = Path(cfg.out)
    package = Path(__file__).resolve().parents[1]
    if out.resolve().is_relative_to(package):
        raise CheckpointExistsError(
            f"out '{out}' is inside the installed package ({package}); write the checkpoint elsewhere "
            "(e.g. --set out=pipeline-demo/trained.pt), or pass --overwrite to change the package deliberately")
    for path in (out, out.with_suffix(".best.pt")):
        if path.exists():
            raise CheckpointExistsError(
                f"out: checkpoint '{path}' already exists; pass --overwrite (overwrite: true) to replace it, or "
                "choose another path with --set out=...")


def load_train_config(path: str | Path, overrides: tuple[str, ...] = ()) -> TrainConfig:
    """Read, override and validate a training YAML; a :class:`~pipeline.config.ConfigError` names
    each bad key or value (``unknown key 'batchsize': did you mean 'batch_size'?``)."""
    data = apply_overrides(read_yaml(path), overrides)
    return validate_model(TrainConfig, data, f"invalid training config '{path}'")
