"""The training configuration: data sources, augmentation, loss, schedule and output.

Frozen pydantic models like the run config; :func:`load_train_config` reads a YAML
file, applies ``--set`` overrides and reports bad keys and values in one line with a
suggestion for a misspelt key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from ..errors import UsageError
from ..model import ModelSpec
from ..validation import Frozen, apply_overrides, read_yaml, validate_model


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
    out: Path = Field(Path("model.pt"), description="checkpoint to write (also <out>.best.pt); never into the "
                      "installed package, and never over an existing file, without 'overwrite'")
    overwrite: bool = Field(False, description="replace an existing checkpoint at 'out' (CLI: --overwrite)")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if not self.data and self.synthetic is None:
            raise ValueError("give training volumes in 'data' or a 'synthetic' section")
        return self


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
