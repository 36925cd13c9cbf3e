"""Test helpers: hand-made checkpoints and volumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.model import ModelSpec, Normalisation, init_model, save_checkpoint


def passthrough_checkpoint(path: Path, ndim: int = 3, downsample=None, gain: float = 10.0, embed_dim: int = 2) -> Path:
    """A valid-conv U-Net whose output copies its input (cropped by the context):
    embedding channel 0 = ``gain * x``, other embeddings 0, foreground logit
    ``40 * (x - 0.5)``. Lets tests draw foreground and embeddings directly in
    the input volume (values >= 0)."""
    downsample = downsample or [[2] * ndim]
    spec = ModelSpec(ndim=ndim, embed_dim=embed_dim, base_features=2, downsample=downsample,
                     normalisation=Normalisation(kind="scale", offset=0.0, scale=1.0))
    model = init_model(spec)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        centre = (1,) * ndim

        def pass_ch0(conv: torch.nn.Module) -> None:
            conv.weight[(0, 0, *centre)] = 1.0

        for m in model.down[0]:
            if hasattr(m, "weight"):
                pass_ch0(m)
        for m in model.right[0]:
            if hasattr(m, "weight"):
                pass_ch0(m)
        head = model.head
        head.weight[(0, 0) + (0,) * ndim] = gain
        head.weight[(spec.embed_dim, 0) + (0,) * ndim] = 40.0
        head.bias[spec.embed_dim] = -20.0
    save_checkpoint(model, path, extra={"delta_v": 0.5, "delta_d": 1.5})
    return path


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True if two label arrays are equal up to a permutation of ids (0 = 0)."""
    if a.shape != b.shape or not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))
