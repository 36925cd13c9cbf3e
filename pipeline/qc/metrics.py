"""Instance segmentation metrics from a sparse contingency table.

Overlaps are counted block by block (only the (pred, gt) pairs that actually
overlap are kept), so arbitrarily large volumes can be evaluated. Matching at
each IoU threshold is an optimal assignment (maximum total IoU) over the pairs
with IoU >= threshold, solved per connected component of the candidate graph.

``AP = TP / (TP + FP + FN)`` (the object-level "average precision" of the
instance segmentation literature, e.g. DSB 2018), with precision, recall and F1;
``avAP`` is the mean AP over thresholds 0.5, 0.55, ..., 0.95.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components

THRESHOLDS = tuple(round(0.1 + 0.05 * i, 2) for i in range(18))  # 0.1 .. 0.95


@dataclass
class Contingency:
    """Sparse overlap counts: ``pairs[k] = (pred_id, gt_id)`` with ``counts[k]`` voxels.

    Background (0) is included so object sizes can be derived."""

    keys: dict[tuple[int, int], int] = field(default_factory=dict)

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
        p, g = pred.ravel().astype(np.uint64), gt.ravel().astype(np.uint64)
        span = int(g.max(initial=0)) + 1
        if int(p.max(initial=0)) < (1 << 63) // span:  # one 64-bit key per pair: a 1D unique (~10x faster)
            keys, counts = np.unique(p * np.uint64(span) + g, return_counts=True)
            pairs = zip((keys // np.uint64(span)).tolist(), (keys % np.uint64(span)).tolist())
        else:
            uniq, counts = np.unique(np.stack([p, g]), axis=1, return_counts=True)
            pairs = zip(uniq[0].tolist(), uniq[1].tolist())
        for pg, c in zip(pairs, counts.tolist()):
            self.keys[pg] = self.keys.get(pg, 0) + c

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.keys:
            z = np.zeros(0, dtype=np.int64)
            return z, z, z
        pg = np.array(list(self.keys), dtype=np.int64)
        return pg[:, 0], pg[:, 1], np.array(list(self.keys.values()), dtype=np.int64)


def contingency(pred: np.ndarray, gt: np.ndarray, block: int = 64) -> Contingency:
    """Contingency of two label arrays (numpy or zarr), read slab by slab along axis 0."""
    table = Contingency()
    for i in range(0, pred.shape[0], block):
        table.add(np.asarray(pred[i : i + block]), np.asarray(gt[i : i + block]))
    return table


@dataclass(frozen=True)
class Scores:
    thresholds: tuple[float, ...]
    ap: tuple[float, ...]
    precision: tuple[float, ...]
    recall: tuple[float, ...]
    f1: tuple[float, ...]
    tp: tuple[int, ...]
    fp: tuple[int, ...]
    fn: tuple[int, ...]
    n_pred: int
    n_gt: int
    false_splits: int
    false_merges: int

    def at(self, threshold: float) -> dict[str, float]:
        i = min(range(len(self.thresholds)), key=lambda k: abs(self.thresholds[k] - threshold))
        return {"ap": self.ap[i], "precision": self.precision[i], "recall": self.recall[i], "f1": self.f1[i],
                "tp": self.tp[i], "fp": self.fp[i], "fn": self.fn[i]}

    @property
    def avap(self) -> float:
        vals = [a for t, a in zip(self.thresholds, self.ap) if t >= 0.5 - 1e-9]
        return float(np.mean(vals)) if vals else float("nan")

    def summary(self) -> dict[str, float | int]:
        return {"n_pred": self.n_pred, "n_gt": self.n_gt, "ap50": self.at(0.5)["ap"],
                "ap75": self.at(0.75)["ap"], "avap": self.avap, "f1_50": self.at(0.5)["f1"],
                "false_splits": self.false_splits, "false_merges": self.false_merges}


def _match(p: np.ndarray, g: np.ndarray, iou: np.ndarray) -> int:
    """Size of the maximum-IoU matching over the candidate pairs (ids are compact)."""
    if p.size == 0:
        return 0
    n_p, n_g = int(p.max()) + 1, int(g.max()) + 1
    graph = sparse.coo_matrix((np.ones(p.size), (p, g + n_p)), shape=(n_p + n_g, n_p + n_g))
    _, comp = connected_components(graph, directed=False)
    pair_comp = comp[p]
    matched = 0
    order = np.argsort(pair_comp, kind="stable")
    bounds = np.flatnonzero(np.diff(pair_comp[order])) + 1
    for idx in np.split(order, bounds):
        if idx.size == 1:
            matched += 1
            continue
        up, pi = np.unique(p[idx], return_inverse=True)
        ug, gi = np.unique(g[idx], return_inverse=True)
        if up.size == 1 or ug.size == 1:
            matched += 1
            continue
        cost = np.zeros((up.size, ug.size))
        cost[pi, gi] = iou[idx]
        r, c = linear_sum_assignment(cost, maximize=True)
        matched += int((cost[r, c] > 0).sum())
    return matched


def scores(table: Contingency, thresholds: Sequence[float] = THRESHOLDS) -> Scores:
    pred, gt, inter = table.arrays()
    p_ids, p_inv = np.unique(pred, return_inverse=True)
    g_ids, g_inv = np.unique(gt, return_inverse=True)
    p_size = np.bincount(p_inv, weights=inter)
    g_size = np.bincount(g_inv, weights=inter)
    obj = (pred > 0) & (gt > 0)
    n_pred = int((p_ids > 0).sum())
    n_gt = int((g_ids > 0).sum())
    pi, gi, it = p_inv[obj], g_inv[obj], inter[obj].astype(np.float64)
    iou = it / (p_size[pi] + g_size[gi] - it)
    cols: dict[str, list[float]] = {k: [] for k in ("ap", "precision", "recall", "f1", "tp", "fp", "fn")}
    for t in thresholds:
        keep = iou >= t if t > 0 else iou > 0
        tp = _match(pi[keep], gi[keep], iou[keep])
        fp, fn = n_pred - tp, n_gt - tp
        denom = tp + fp + fn
        cols["ap"].append(tp / denom if denom else 1.0)
        cols["precision"].append(tp / n_pred if n_pred else float(n_gt == 0))
        cols["recall"].append(tp / n_gt if n_gt else 1.0)
        cols["f1"].append(2 * tp / (2 * tp + fp + fn) if denom else 1.0)
        cols["tp"].append(tp)
        cols["fp"].append(fp)
        cols["fn"].append(fn)
    splits, merges = _splits_merges(pi, gi, it)
    return Scores(tuple(thresholds), *(tuple(cols[k]) for k in ("ap", "precision", "recall", "f1")),
                  *(tuple(int(x) for x in cols[k]) for k in ("tp", "fp", "fn")),
                  n_pred=n_pred, n_gt=n_gt, false_splits=splits, false_merges=merges)


def _splits_merges(pi: np.ndarray, gi: np.ndarray, inter: np.ndarray) -> tuple[int, int]:
    """False splits: extra predicted objects whose largest overlap is the same gt object.
    False merges: extra gt objects whose largest overlap is the same predicted object."""
    if pi.size == 0:
        return 0, 0

    def extra(owner: np.ndarray, other: np.ndarray) -> int:
        _, counts = np.unique(_best(owner, other, inter), return_counts=True)
        return int((counts - 1).sum())

    return extra(pi, gi), extra(gi, pi)


def by_size(table: Contingency, bins: int = 4, threshold: float = 0.5) -> list[dict[str, Any]]:
    """Errors by ground-truth object size: the objects split into ``bins`` groups of about equal
    count by voxels; per group the objects found (a prediction with IoU >= ``threshold``),
    missed, false splits (extra predicted objects whose largest overlap is one of them) and
    false merges (of them, those that share their largest-overlap prediction with a larger
    overlap of another object). Tells where a model fails: small, typical or large objects."""
    pred, gt, inter = table.arrays()
    g_ids, g_inv = np.unique(gt, return_inverse=True)
    p_inv = np.unique(pred, return_inverse=True)[1]
    g_size, p_size = np.bincount(g_inv, weights=inter), np.bincount(p_inv, weights=inter)
    obj = (pred > 0) & (gt > 0)
    pi, gi, it = p_inv[obj], g_inv[obj], inter[obj].astype(np.float64)
    found = np.zeros(g_ids.size, bool)
    found[gi[it / (p_size[pi] + g_size[gi] - it) >= threshold]] = True
    splits, merges = np.zeros(g_ids.size, np.int64), np.zeros(g_ids.size, np.int64)
    if pi.size:
        best_gt = _best(pi, gi, it)  # per predicted object: its largest-overlap gt object
        owners, counts = np.unique(best_gt, return_counts=True)
        splits[owners] = counts - 1
        best_pred = _best(gi, pi, it)  # per gt object: its largest-overlap prediction
        gt_of_best = np.unique(gi)
        order = np.lexsort((-g_size[gt_of_best], best_pred))
        shared = np.zeros(order.size, bool)
        shared[1:] = best_pred[order][1:] == best_pred[order][:-1]
        merges[gt_of_best[order][shared]] = 1
    real = np.flatnonzero(g_ids > 0)
    if real.size == 0:
        return []
    edges = np.unique(np.quantile(g_size[real], np.linspace(0, 1, bins + 1)))
    group = np.clip(np.searchsorted(edges, g_size[real], side="right") - 1, 0, max(len(edges) - 2, 0))
    rows = []
    for k in range(max(len(edges) - 1, 1)):
        members = real[group == k]
        if members.size == 0:
            continue
        rows.append({"voxels_from": int(g_size[members].min()), "voxels_to": int(g_size[members].max()),
                     "objects": int(members.size), "found": int(found[members].sum()),
                     "missed": int((~found[members]).sum()), "false_splits": int(splits[members].sum()),
                     "false_merges": int(merges[members].sum())})
    return rows


def _best(owner: np.ndarray, other: np.ndarray, inter: np.ndarray) -> np.ndarray:
    """For each distinct ``owner`` (sorted), the ``other`` with the largest overlap."""
    order = np.lexsort((-inter, owner))
    first = np.ones(order.size, dtype=bool)
    first[1:] = owner[order][1:] != owner[order][:-1]
    return other[order][first]


def restrict(pred: np.ndarray, gt: np.ndarray, annotated: np.ndarray | None,
             min_fraction: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Prediction and ground truth of a partly annotated volume, scored only where it was annotated.

    Ground-truth objects are the labels inside ``annotated``; a predicted object counts only when
    at least ``min_fraction`` of its voxels were annotated (the rest predict objects nobody
    annotated, e.g. nuclei left unlabelled: neither right nor wrong). Both are cut to the
    annotated voxels, so IoUs compare what was annotated. ``annotated`` None: unchanged."""
    if annotated is None:
        return pred, gt
    annotated = np.asarray(annotated, dtype=bool)
    pred = np.asarray(pred).astype(np.int64)
    total = np.bincount(pred.ravel())
    inside = np.bincount(pred[annotated], minlength=total.size)
    keep = inside >= min_fraction * np.maximum(total, 1)
    keep[0] = False
    return np.where(annotated & keep[pred], pred, 0), np.where(annotated, np.asarray(gt), 0)


def evaluate(pred: np.ndarray, gt: np.ndarray, thresholds: Sequence[float] = THRESHOLDS,
             annotated: np.ndarray | None = None) -> Scores:
    """Scores of ``pred`` against ``gt``; with ``annotated``, only the annotated part (:func:`restrict`)."""
    return scores(contingency(*restrict(pred, gt, annotated)), thresholds)


def volume_tables(pairs: Iterable[tuple[np.ndarray, ...]]) -> list[Contingency]:
    """The contingency table of each ``(pred, gt[, annotated])`` pair (:func:`restrict`)."""
    return [contingency(*restrict(p, g, ann[0] if ann else None)) for p, g, *ann in pairs]


def pooled(tables: Iterable[Contingency]) -> Contingency:
    """One table of several volumes', ids offset so that objects of different volumes never collide
    (what the voxels of all of them with offset ids would count; from the tables, no voxel read again)."""
    out, p_off, g_off = Contingency(), 0, 0
    for t in tables:
        for (p, g), c in t.keys.items():
            key = (p + p_off if p else 0, g + g_off if g else 0)
            out.keys[key] = out.keys.get(key, 0) + c
        p_off += max((p for p, _ in t.keys), default=0)
        g_off += max((g for _, g in t.keys), default=0)
    return out


def evaluate_many(pairs: Iterable[tuple[np.ndarray, ...]]) -> Scores:
    """Scores pooled over several volumes (ids of different volumes never collide); a pair may
    carry a third item, the volume's annotation mask (:func:`restrict`)."""
    return scores(pooled(volume_tables(pairs)))


def object_diameters(labels: np.ndarray, min_voxels: int = 8) -> tuple[float, ...]:
    """Typical object diameter per axis (voxels): the median over objects of ``2 * sqrt(5 * var)``
    of their voxel coordinates along the axis (exactly the axis of a solid ellipsoid aligned with
    it); objects under ``min_voxels`` are left out. What ``input.diameter`` and a checkpoint's
    ``diameter`` mean."""
    each = diameters_per_object(labels, min_voxels)
    if not len(each):
        raise ValueError(f"no object of at least {min_voxels} voxels to measure")
    return tuple(float(v) for v in np.median(each, axis=0))


def diameters_per_object(labels: np.ndarray, min_voxels: int = 8, interior: bool = False) -> np.ndarray:
    """``(objects, ndim)`` diameters (``2 * sqrt(5 * var)`` of the coordinates per axis, see
    :func:`object_diameters`) of the objects of at least ``min_voxels``; ``interior``: only those
    that touch no face of the array (an object cut by the edge measures small)."""
    ids = labels.ravel().astype(np.int64)
    n = int(ids.max()) + 1 if ids.size else 1
    count = np.bincount(ids, minlength=n).astype(np.float64)
    keep = count >= min_voxels
    keep[0] = False
    if interior:
        for axis in range(labels.ndim):
            for edge in (0, -1):
                keep[np.take(labels, edge, axis=axis).ravel().astype(np.int64)] = False
    out = np.empty((int(keep.sum()), labels.ndim))
    for axis in range(labels.ndim):
        shape = [1] * labels.ndim
        shape[axis] = labels.shape[axis]
        coord = np.broadcast_to(np.arange(labels.shape[axis], dtype=np.float64).reshape(shape), labels.shape).ravel()
        s1 = np.bincount(ids, coord, minlength=n)[keep]
        s2 = np.bincount(ids, coord * coord, minlength=n)[keep]
        c = count[keep]
        var = np.maximum(s2 / c - (s1 / c) ** 2, 0.0)
        out[:, axis] = 2.0 * np.sqrt(5.0 * var)
    return out
