"""One block in, embeddings and foreground out. No Dask, no filesystem.

A :class:`Predictor` holds a model on one device with its precision settings
and the volume's normalisation constants. :func:`get_predictor` caches one per
process, so a Dask worker loads the checkpoint once, not once per task.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from .checkpoint import load_checkpoint
from .model import ModelSpec, Normalisation, UNet
from .streaming import stream_cpu, stream_cuda

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "tf32": torch.float32, "float64": torch.float64, "bfloat16": torch.float32}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model.device is 'cuda' but torch sees no GPU; use 'auto' or 'cpu'")
    return torch.device(device)


@dataclass(frozen=True)
class NormStats:
    """Constants that map raw intensities to network input: ``(x - offset) / scale``."""

    offset: float
    scale: float

    @classmethod
    def from_values(cls, norm: Normalisation, low: float, high: float) -> NormStats:
        if norm.kind == "scale":
            return cls(norm.offset, norm.scale)
        if not high > low:  # never a silent scale of 1 (pipeline.plan.intensity refuses with the fixes first)
            raise ValueError(f"normalisation percentiles are degenerate: low {low:.6g} >= high {high:.6g}")
        return cls(low, high - low)


def normalise(data: np.ndarray, stats: NormStats, dtype: type = np.float32) -> np.ndarray:
    """Apply the volume's normalisation (identical in training and prediction)."""
    out = np.array(data, dtype=dtype)
    out -= dtype(stats.offset)
    out /= dtype(stats.scale)
    return out


class Predictor:
    """Runs a :class:`UNet` on blocks (one, a stack, or a stream of them)."""

    def __init__(
        self,
        model: UNet,
        device: str = "auto",
        precision: str = "float32",
        channels_last: bool = False,
    ) -> None:
        self.device = resolve_device(device)
        self.precision = precision
        self.dtype = DTYPES[precision]
        self.np_dtype = np.float64 if self.dtype == torch.float64 else np.float32
        self.autocast = precision == "bfloat16"
        self.channels_last = channels_last
        self.model = model.to(self.device, self.dtype).eval()
        if channels_last:
            fmt = torch.channels_last_3d if model.spec.ndim == 3 else torch.channels_last
            self.model = self.model.to(memory_format=fmt)
            self.memory_format = fmt
        else:
            self.memory_format = torch.contiguous_format
        if self.device.type == "cuda":
            set_cuda_precision(precision)

    @property
    def spec(self) -> ModelSpec:
        return self.model.spec

    def __call__(self, data: np.ndarray, stats: NormStats) -> np.ndarray:
        """``data``: ``(C, *read_shape)`` raw block. Returns ``(E + 1, *write_shape)``:
        embeddings, then the foreground probability (float64 at float64 precision,
        float32 otherwise)."""
        return self.batch(data[None], stats)[0]

    def batch(self, data: np.ndarray, stats: NormStats) -> np.ndarray:
        """Same as ``__call__`` on a stack ``(B, C, *read_shape)``."""
        x = torch.from_numpy(normalise(data, stats, self.np_dtype)).to(self.device)
        return self.forward(x).cpu().numpy()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised input ``(B, C, *read_shape)`` on the device -> output on the device."""
        x = x.contiguous(memory_format=self.memory_format)
        with torch.inference_mode():
            if self.autocast:
                with torch.autocast(self.device.type, dtype=torch.bfloat16):
                    y = self.model(x)
            else:
                y = self.model(x)
            y = y.double() if self.dtype == torch.float64 else y.float()
            y[:, -1] = torch.sigmoid(y[:, -1])
        return y

    def stream(self, blocks: Iterable[np.ndarray], stats: NormStats, batch_size: int = 1) -> Iterator[np.ndarray]:
        """Outputs of a stream of raw blocks ``(C, *read_shape)``, in order, ``batch_size``
        blocks per forward pass. On a GPU, transfers overlap compute (see :mod:`.streaming`)."""
        run = stream_cuda if self.device.type == "cuda" else stream_cpu
        return run(self, blocks, stats, batch_size)


def set_cuda_precision(precision: str) -> None:
    """float32 means IEEE float32 convolutions and matmuls (torch lets cuDNN use TF32 by
    default); ``tf32`` allows TF32 explicitly. cuDNN autotuning is on: all blocks have one shape."""
    tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True


@lru_cache(maxsize=4)
def get_predictor(
    checkpoint: str, device: str, precision: str, channels_last: bool, threads: int | None
) -> Predictor:
    """One predictor per process and setting: the model is loaded once per worker."""
    if threads:
        torch.set_num_threads(threads)
    model, _ = load_checkpoint(checkpoint)
    logger.info("pid %d loaded %s (%s, %s)", os.getpid(), checkpoint, device, precision)
    return Predictor(model, device, precision, channels_last)


def predict_whole(predictor: Predictor, volume: np.ndarray, stats: NormStats) -> np.ndarray:
    """Reference: one forward pass over the whole volume ``(C, *shape)``.

    The volume is reflected by the context (plus the rounding of its shape up to
    a multiple of ``step``) and the output cropped back to ``shape``. Blockwise
    prediction must equal this to float round-off.
    """
    spec = predictor.spec
    shape = volume.shape[1:]
    padded_out = [-(-s // st) * st for s, st in zip(shape, spec.step, strict=True)]
    pad = [(c, c + po - s) for s, po, c in zip(shape, padded_out, spec.context, strict=True)]
    data = np.pad(volume, [(0, 0), *pad], mode="reflect")
    out = predictor(data, stats)
    return out[(slice(None), *(slice(0, s) for s in shape))]


def predict_tiled(
    predictor: Predictor,
    volume: np.ndarray,
    stats: NormStats,
    write_shape: tuple[int, ...],
    origin: tuple[int, ...] | None = None,
) -> np.ndarray:
    """In-memory tile-and-stitch with the tile grid anchored at ``origin`` (default 0).

    Internal helper for tests and benchmarks: with an ``origin`` that is not a
    multiple of ``step`` the tiles are misaligned and seams appear; no shape
    checks beyond the model's own are made here on purpose.
    """
    from ..geometry import Box
    from ..plan.blocks import reflect_indices

    shape = volume.shape[1:]
    origin = origin or (0,) * len(shape)
    ctx = predictor.spec.context
    starts = [range(o - w * (-(-o // w)) if o else 0, s, w) for o, w, s in zip(origin, write_shape, shape, strict=True)]
    out = np.zeros((predictor.spec.out_channels, *shape), dtype=np.float64)
    import itertools

    for offset in itertools.product(*starts):
        write = Box(offset, write_shape)
        read = write.grow(ctx)
        idx = [np.asarray(reflect_indices(o, o + n, s)) for o, n, s in zip(read.offset, read.shape, shape, strict=True)]
        y = predictor(volume[(slice(None), *np.ix_(*idx))], stats)
        valid = write.intersect(Box.from_shape(shape))
        out[(slice(None), *valid.to_slices())] = y[(slice(None), *valid.to_slices(relative_to=write))]
    return out
