"""The model and the blocks it runs on: the checkpoint and how it runs (:class:`ModelConfig`), the
block grid (:class:`BlocksConfig`), and which blocks are skipped as empty space (:class:`EmptyConfig`,
with an optional :class:`MaskConfig`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from .validation import Frozen
from .volumes import check_diameter

PositiveShape = tuple[Annotated[int, Field(gt=0)], ...]


class NormalisationConfig(Frozen):
    """Input normalisation for this run instead of the checkpoint's (same fields as its
    ``normalisation``): fixed values for a volume whose statistics cannot be sampled, or other
    percentiles."""

    kind: Literal["percentile", "scale"]
    low: float = Field(1.0, ge=0, le=100, description="percentile kind: the low percentile (-> 0)")
    high: float = Field(99.8, ge=0, le=100, description="percentile kind: the high percentile (-> 1)")
    offset: float = Field(0.0, description="scale kind: the raw intensity that becomes 0 (the background)")
    scale: float = Field(1.0, description="scale kind: raw intensities per normalised unit (bright - background)")

    @model_validator(mode="after")
    def _check(self) -> NormalisationConfig:
        if self.kind == "percentile" and self.low >= self.high:
            raise ValueError(f"model.normalisation.low ({self.low}) must be below high ({self.high})")
        if self.kind == "scale" and not self.scale > 0:
            raise ValueError(f"model.normalisation.scale must be > 0, got {self.scale}")
        return self


class ModelConfig(Frozen):
    checkpoint: str = Field("demo", description="checkpoint file, or a bundled model: `demo` (the default, one look "
                            "of nuclei) or `generalist` (light-sheet, confocal, widefield and dense looks too)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["float32", "tf32", "float64", "bfloat16"] = Field(
        "float32", description="float32: IEEE on every device; tf32 (GPU): TF32 convolutions and matmuls; "
        "bfloat16 runs under autocast; tf32 and bfloat16 are NOT exact across tiles"
    )
    batch_size: int = Field(1, gt=0, description="blocks per forward pass (GPU: more blocks keep it busier)")
    channels_last: bool = Field(True, description="channels-last memory format: measured 14% faster on CPU, as exact")
    diameter: float | tuple[float, ...] | None = Field(
        None, description="typical object diameter (voxels per axis, or one number for every axis) of the model's "
        "training data, for input.diameter; none: the checkpoint's record")

    normalisation: NormalisationConfig | None = Field(
        None, description="input normalisation instead of the checkpoint's: {kind: scale, offset, scale} (fixed "
        "values) or {kind: percentile, low, high}; none: the checkpoint's")

    _diameter = field_validator("diameter", mode="before")(classmethod(lambda cls, v: check_diameter(v)))


class BlocksConfig(Frozen):
    write_shape: PositiveShape | None = Field(
        None, description="output block per axis, a multiple of the model step; none: automatic (target_size, "
        "else the write shape of least predicted cost that fits the memory, see pipeline.plan.cost)"
    )
    target_size: Annotated[int, Field(gt=0)] | None = Field(
        None, description="write size per axis (rounded to the model step, at most the volume) when write_shape "
        "is not given, instead of the cost choice; none: the write shape of least predicted cost whose batch "
        "of blocks fits a quarter of a CPU worker's memory or half the GPU's (`pipeline plan` shows candidates)"
    )
    gpu_memory_gib: float | None = Field(
        None, gt=0, description="GPU memory to size automatic blocks for, when planning where that GPU is not "
        "visible (a login node); none: the visible GPU's, if the model runs on one")
    blocks_per_task: Annotated[int, Field(gt=0)] | None = Field(
        None, description="blocks per task; none: automatic (>= 16 tasks per worker, <= 512 MiB of embeddings "
        "per task, at least model.batch_size)"
    )



class MaskConfig(Frozen):
    """A mask array (zarr): blocks where it is 0 everywhere are skipped; any shape whose ratio
    to the volume is the same on every block (e.g. a downsampled mask)."""

    path: Path
    dataset: str | None = None


class EmptyConfig(Frozen):
    """Skipping blocks of empty space (background): not predicted, not clustered."""

    skip: bool = Field(True, description="skip blocks whose input (halo included) never exceeds `threshold`")
    threshold: float = Field(
        0.1, description="background level in normalised input units (0 = the low percentile, 1 = the high one); "
        "a block is empty when no voxel of its input exceeds it"
    )
    level: int | None = Field(
        None, ge=0, description="OME-Zarr level to decide from (one low-resolution read per block); none: the "
        "coarsest level with >= 4 voxels per block axis, or full resolution while each block is read"
    )
    mask: MaskConfig | None = Field(None, description="decide from this mask instead (0 = skip)")

