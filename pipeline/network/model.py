"""A U-Net with valid convolutions only, and its architecture spec.

The network never pads: every convolution is ``valid``, so its output at a
voxel depends only on the input inside a fixed window (the ``context`` on each
side). With ``l`` pooling layers of factors ``f_j`` it is equivariant to
shifts of ``step = prod_j f_j`` per axis; tiles whose outputs are ``n * step``
wide and aligned to one global grid therefore stitch exactly.

:class:`ModelSpec` (architecture and input normalisation) is what a checkpoint
stores next to the weights; the file format is in :mod:`pipeline.network.checkpoint`.
"""

from __future__ import annotations

import logging
import math
from functools import cached_property
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

logger = logging.getLogger(__name__)


class Normalisation(BaseModel):
    """Input intensity normalisation, stored with the model.

    ``percentile``: ``(x - p_low) / (p_high - p_low)`` with percentiles taken
    once over the whole volume (never per block, which would break exactness).
    ``scale``: ``(x - offset) / scale`` with fixed numbers.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["percentile", "scale"] = "percentile"
    low: float = Field(1.0, ge=0, le=100)
    high: float = Field(99.8, ge=0, le=100)
    offset: float = 0.0
    scale: float = 1.0

    @model_validator(mode="after")
    def _check(self) -> Normalisation:
        if self.kind == "percentile" and self.low >= self.high:
            raise ValueError(f"normalisation.low ({self.low}) must be below high ({self.high})")
        if self.kind == "scale" and self.scale == 0:
            raise ValueError("normalisation.scale must not be 0")
        return self


class ModelSpec(BaseModel):
    """Architecture of a valid-convolution U-Net."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    ndim: Literal[2, 3] = 3
    in_channels: int = Field(1, ge=1)
    embed_dim: int = Field(6, ge=1, description="number of embedding channels E")
    base_features: int = Field(8, ge=1)
    feature_increase: int = Field(2, ge=1)
    downsample: tuple[tuple[int, ...], ...] = ((2, 2, 2), (2, 2, 2))
    upsample: Literal["transposed", "nearest"] = "transposed"
    convs_per_level: int = Field(2, ge=1)
    normalisation: Normalisation = Normalisation()

    @field_validator("downsample", mode="before")
    @classmethod
    def _factors(cls, value: Any) -> Any:
        return [tuple(f) if isinstance(f, list | tuple) else f for f in value]

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        for j, f in enumerate(self.downsample):
            if len(f) != self.ndim:
                raise ValueError(
                    f"downsample level {j} {list(f)} has {len(f)} factors but ndim is {self.ndim}"
                )
            if any(x < 1 for x in f):
                raise ValueError(f"downsample level {j} {list(f)}: factors must be >= 1")
        for a in range(self.ndim):  # raises when no aligned output exists
            self._crop(a)
        return self

    @property
    def levels(self) -> int:
        return len(self.downsample)

    @property
    def out_channels(self) -> int:
        return self.embed_dim + 1

    @property
    def step(self) -> tuple[int, ...]:
        """Shift-equivariance period per axis: the product of the factors."""
        return tuple(math.prod(f[a] for f in self.downsample) for a in range(self.ndim))

    def _raw_input(self, out: int, axis: int) -> int | None:
        """Input size of the bare network for output size ``out``; None if unreachable."""
        shrink = 2 * self.convs_per_level  # kernel 3, valid: each conv removes 2
        size = out
        for j in range(self.levels):  # up the expanding path
            size += shrink
            f = self.downsample[j][axis]
            if size % f:
                return None
            size //= f
        size += shrink  # bottom
        for j in reversed(range(self.levels)):  # down the contracting path
            size = size * self.downsample[j][axis] + shrink
        return size

    def _crop(self, axis: int) -> int:
        """Smallest even extra output ``r`` such that ``n * step + r`` is reachable.

        The network computes ``r / 2`` more voxels on each side and crops them
        (crop-to-factor), so that outputs of exactly ``n * step`` stay aligned.
        """
        step = self.step[axis]
        for r in range(0, 2 * step + 1, 2):
            if all(self._raw_input(n * step + r, axis) is not None for n in (1, 2, 3)):
                return r
        raise ValueError(
            f"downsample factors {[list(f) for f in self.downsample]} give no aligned output "
            f"size on axis {axis}; use factors 1, 2 or 4"
        )

    @property
    def crop(self) -> tuple[int, ...]:
        """Output voxels computed and cropped on each side to stay on the step grid."""
        return tuple(self._crop(a) // 2 for a in range(self.ndim))

    def input_shape(self, output_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Valid input shape giving exactly ``output_shape`` (a multiple of ``step``)."""
        if len(output_shape) != self.ndim:
            raise ValueError(f"output shape {list(output_shape)} is not {self.ndim}D")
        bad = [o for o, s in zip(output_shape, self.step, strict=True) if o <= 0 or o % s]
        if bad:
            raise ValueError(
                f"output shape {list(output_shape)} must be a positive multiple of step {list(self.step)}"
            )
        return tuple(o + 2 * c for o, c in zip(output_shape, self.context, strict=True))

    @property
    def context(self) -> tuple[int, ...]:
        """Voxels of input needed on each side of an output box (the halo)."""
        out = []
        for a in range(self.ndim):
            r = self._crop(a)
            o = self.step[a] + r
            raw = self._raw_input(o, a)
            assert raw is not None  # guaranteed by _crop
            out.append((raw - o) // 2 + r // 2)
        return tuple(out)

    def features(self, level: int) -> int:
        return self.base_features * self.feature_increase**level


def _conv(ndim: int) -> type[nn.Module]:
    return nn.Conv3d if ndim == 3 else nn.Conv2d


class ConvBlock(nn.Sequential):
    def __init__(self, ndim: int, cin: int, cout: int, n: int) -> None:
        layers: list[nn.Module] = []
        for i in range(n):
            layers += [_conv(ndim)(cin if i == 0 else cout, cout, 3), nn.ReLU(inplace=True)]
        super().__init__(*layers)


def _crop(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Centre crop the spatial axes of ``x`` to ``shape`` (offset rounded down)."""
    nd = len(shape)
    slices = [slice(None), slice(None)]
    for have, want in zip(x.shape[-nd:], shape, strict=True):
        start = (have - want) // 2
        slices.append(slice(start, start + want))
    return x[tuple(slices)]


class UNet(nn.Module):
    """Valid-convolution U-Net. Output: ``embed_dim`` embedding channels, then
    one foreground logit channel."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        nd, c = spec.ndim, spec.convs_per_level
        feats = [spec.features(j) for j in range(spec.levels + 1)]
        self.down = nn.ModuleList(
            [ConvBlock(nd, spec.in_channels if j == 0 else feats[j - 1], feats[j], c) for j in range(spec.levels + 1)]
        )
        pool = nn.MaxPool3d if nd == 3 else nn.MaxPool2d
        self.pool = nn.ModuleList([pool(f, f) for f in spec.downsample])
        ups: list[nn.Module] = []
        for j, f in enumerate(spec.downsample):
            if spec.upsample == "transposed":
                tconv = nn.ConvTranspose3d if nd == 3 else nn.ConvTranspose2d
                ups.append(tconv(feats[j + 1], feats[j], f, f))
            else:
                ups.append(nn.Sequential(nn.Upsample(scale_factor=f, mode="nearest"), _conv(nd)(feats[j + 1], feats[j], 1)))
        self.up = nn.ModuleList(ups)
        self.right = nn.ModuleList([ConvBlock(nd, 2 * feats[j], feats[j], c) for j in range(spec.levels)])
        self.head = _conv(nd)(feats[0], spec.out_channels, 1)

    @cached_property
    def context(self) -> tuple[int, ...]:
        return self.spec.context

    @cached_property
    def _crop_out(self) -> tuple[int, ...]:
        return self.spec.crop

    @property
    def step(self) -> tuple[int, ...]:
        return self.spec.step

    def check_input(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Return the output shape for a spatial input ``shape`` or raise ``RuntimeError``."""
        out = tuple(s - 2 * c for s, c in zip(shape, self.context, strict=True))
        if any(o <= 0 or o % st for o, st in zip(out, self.step, strict=True)):
            raise RuntimeError(
                f"input shape {shape} is not valid: it must be (n * step {self.step}) + "
                f"2 * context {self.context} on every axis"
            )
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(tuple(x.shape[2:]))
        skips = []
        for j in range(self.spec.levels):
            x = self.down[j](x)
            skips.append(x)
            x = self.pool[j](x)
        x = self.down[-1](x)
        for j in reversed(range(self.spec.levels)):
            x = self.up[j](x)
            x = self.right[j](torch.cat([_crop(skips[j], tuple(x.shape[2:])), x], dim=1))
        x = self.head(x)
        if any(self._crop_out):
            x = _crop(x, tuple(s - 2 * c for s, c in zip(x.shape[2:], self._crop_out, strict=True)))
        return x


def init_model(spec: ModelSpec, seed: int = 0) -> UNet:
    """A randomly initialised model, deterministic in ``seed``."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = UNet(spec)
    finally:
        torch.random.set_rng_state(gen_state)
    return model


def passthrough_model(ndim: int = 3, downsample: Any = None, gain: float = 10.0, embed_dim: int = 2) -> UNet:
    """A valid-conv U-Net that copies its input (cropped by the context) to its output:
    embedding 0 = ``gain * x`` (others 0), foreground logit ``40 * (x - 0.5)``.

    With it the pipeline labels an existing foreground/probability map (values in
    [0, 1]; different intensity levels become different embeddings): used by tests
    and benchmarks to drive clustering and merging with known inputs."""
    downsample = downsample or [[2] * ndim]
    spec = ModelSpec(ndim=ndim, embed_dim=embed_dim, base_features=2, downsample=downsample,
                     normalisation=Normalisation(kind="scale", offset=0.0, scale=1.0))
    model = init_model(spec)
    centre = (1,) * ndim
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for conv in [*model.down[0], *model.right[0]]:
            if isinstance(conv, nn.Conv2d | nn.Conv3d):
                conv.weight[(0, 0, *centre)] = 1.0
        model.head.weight[(0, 0) + (0,) * ndim] = gain
        model.head.weight[(spec.embed_dim, 0) + (0,) * ndim] = 40.0
        model.head.bias[spec.embed_dim] = -20.0
    return model.eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

