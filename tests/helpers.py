"""Test helpers: hand-made checkpoints and comparisons."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.checkpoint import save_checkpoint
from pipeline.model import passthrough_model


def passthrough_checkpoint(path: Path, ndim: int = 3, downsample=None, gain: float = 10.0, embed_dim: int = 2) -> Path:
    """Checkpoint of :func:`pipeline.model.passthrough_model`: tests draw foreground and
    embeddings directly in the input volume (values >= 0)."""
    model = passthrough_model(ndim, downsample, gain, embed_dim)
    save_checkpoint(model, path, extra={"delta_v": 0.5, "delta_d": 1.5})
    return path


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True if two label arrays are equal up to a permutation of ids (0 = 0)."""
    if a.shape != b.shape or not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))
