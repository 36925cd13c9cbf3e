"""Discriminative loss (De Brabandere et al., 2017) plus a foreground term.

For one sample with instances ``c = 1..C`` (label 0 is background) and
embeddings ``e_i``:

* variance: ``1/C sum_c 1/N_c sum_{i in c} [||mu_c - e_i|| - delta_v]_+^2``
* distance: ``1/(C(C-1)) sum_{c != c'} [2 delta_d - ||mu_c - mu_c'||]_+^2``
* regularisation: ``1/C sum_c ||mu_c||``

The embedding terms use foreground instances only and are averaged over the
samples of a batch that contain at least one instance; instances cut by the
crop border use their visible voxels. The foreground term is binary
cross-entropy of the foreground logit against ``labels > 0``.

Partly annotated data: a ``weight`` of 0 marks voxels that were not annotated. They take
no part in any term: their labels are treated as unknown (not background, not an object)
and their foreground term is dropped. An object is identified by its label, never by
connectivity, so one nucleus whose annotated voxels are split by unannotated ones is one
instance (its parts are pulled together, never pushed apart).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossWeights:
    delta_v: float = 0.5
    delta_d: float = 1.5
    alpha: float = 1.0  # variance
    beta: float = 1.0  # distance
    gamma: float = 0.001  # regularisation
    foreground: float = 1.0


def discriminative_terms(
    embedding: torch.Tensor, labels: torch.Tensor, delta_v: float, delta_d: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Variance, distance and regularisation terms for ONE sample.

    ``embedding``: ``(E, *S)``; ``labels``: ``(*S)`` integers, 0 = background.
    """
    E = embedding.shape[0]
    flat = embedding.reshape(E, -1).transpose(0, 1)  # (N, E)
    lab = labels.reshape(-1)
    mask = lab > 0
    zero = embedding.sum() * 0.0
    if not bool(mask.any()):
        return zero, zero, zero
    ids, inverse = torch.unique(lab[mask], return_inverse=True)
    pts = flat[mask]
    C = ids.numel()
    counts = torch.bincount(inverse, minlength=C).to(pts.dtype)
    sums = torch.zeros(C, E, dtype=pts.dtype, device=pts.device).index_add_(0, inverse, pts)
    means = sums / counts[:, None]
    dist_to_mean = torch.linalg.vector_norm(pts - means[inverse], dim=1)
    hinge = torch.clamp(dist_to_mean - delta_v, min=0) ** 2
    per_instance = torch.zeros(C, dtype=pts.dtype, device=pts.device).index_add_(0, inverse, hinge) / counts
    var = per_instance.mean()
    if C > 1:
        pair = torch.cdist(means[None], means[None])[0]
        off = ~torch.eye(C, dtype=torch.bool, device=pts.device)
        dist = (torch.clamp(2 * delta_d - pair[off], min=0) ** 2).mean()
    else:
        dist = zero
    reg = torch.linalg.vector_norm(means, dim=1).mean()
    return var, dist, reg


def discriminative_loss(
    output: torch.Tensor, labels: torch.Tensor, w: LossWeights = LossWeights(),
    foreground: torch.Tensor | None = None, weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss for a batch. ``output``: ``(B, E + 1, *S)`` (last channel:
    foreground logit); ``labels``: ``(B, *S)``; ``foreground``: the foreground
    target (default ``labels > 0``); ``weight``: ``(B, *S)`` per-voxel weight of the
    foreground term, 0 where not annotated (those voxels leave the embedding terms too).
    Returns ``(loss, parts)``."""
    if output.shape[0] != labels.shape[0] or output.shape[2:] != labels.shape[1:]:
        raise ValueError(f"output {tuple(output.shape)} and labels {tuple(labels.shape)} do not match")
    if weight is not None:
        labels = torch.where(weight > 0, labels, torch.zeros_like(labels))
    emb, logit = output[:, :-1], output[:, -1]
    var = dist = reg = output.sum() * 0.0
    n = 0
    for b in range(output.shape[0]):
        if bool((labels[b] > 0).any()):
            v, d, r = discriminative_terms(emb[b], labels[b], w.delta_v, w.delta_d)
            var, dist, reg, n = var + v, dist + d, reg + r, n + 1
    if n:
        var, dist, reg = var / n, dist / n, reg / n
    target = (labels > 0) if foreground is None else foreground
    if weight is None:
        fg = F.binary_cross_entropy_with_logits(logit, target.to(logit.dtype))
    else:
        weight = weight.to(logit.dtype)
        bce = F.binary_cross_entropy_with_logits(logit, target.to(logit.dtype), reduction="none")
        fg = (bce * weight).sum() / weight.sum().clamp(min=1.0)
    total = w.alpha * var + w.beta * dist + w.gamma * reg + w.foreground * fg
    parts = {k: float(v.detach()) for k, v in (("var", var), ("dist", dist), ("reg", reg), ("fg", fg), ("total", total))}
    return total, parts
