"""Cross-block evidence on one block face: which fragments touch, and the acceptance rules.

A face is two facing voxel planes, ``a`` (last plane of the lower block) and ``b``
(first plane of the upper block), each with fragment ids and the evidence the
clustering method wrote there (voxel embeddings, or each fragment's mean embedding).
Pure numpy; used by the methods' ``accept``.
"""

from __future__ import annotations

import numpy as np

from .kernels import pair_close

ID_DTYPE = np.uint64


def face_pairs(
    lab_a: np.ndarray,
    lab_b: np.ndarray,
    emb_a: np.ndarray | None = None,
    emb_b: np.ndarray | None = None,
    threshold: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fragment pairs joined across one face.

    ``lab_a``/``lab_b``: fragment ids of the two facing voxel planes (same
    shape); with embeddings ``(E, *plane)`` and a ``threshold`` only voxel pairs
    passing the connectivity rule count. Returns ``(pairs (m, 2) uint64,
    contact (m,) int64)``: unique pairs and how many voxel pairs join them.
    """
    link = (lab_a > 0) & (lab_b > 0)
    if threshold is not None and emb_a is not None and emb_b is not None and link.any():
        link[link] = pair_close(emb_a[:, link], emb_b[:, link], threshold)
    if not link.any():
        return np.zeros((0, 2), ID_DTYPE), np.zeros(0, np.int64)
    pairs = np.stack([lab_a[link], lab_b[link]], axis=1).astype(ID_DTYPE)
    uniq, contact = np.unique(pairs, axis=0, return_counts=True)
    return uniq, contact.astype(np.int64)


def accept_by_evidence(
    pairs: np.ndarray,
    contact: np.ndarray,
    mean_a: np.ndarray,
    mean_b: np.ndarray,
    min_contact: int,
    max_distance: float,
) -> np.ndarray:
    """Evidence rule: enough contact voxels and close fragment mean embeddings."""
    dist = np.linalg.norm(mean_a.astype(np.float64) - mean_b, axis=1)
    return pairs[(contact >= min_contact) & (dist <= max_distance)]


def values_at(lab: np.ndarray, emb: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``(len(ids), E)``: the face value stored for each id (constant per fragment when
    the evidence is a fragment mean)."""
    flat = lab.ravel()
    order = np.argsort(flat, kind="stable")
    pos = order[np.searchsorted(flat[order], ids)]
    return emb.reshape(emb.shape[0], -1)[:, pos].T
