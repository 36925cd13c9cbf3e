"""The run's quality record: per block (time, fragments, skipped) and per block face (the
seam audit), recorded while the run computes and kept in the output group's ``qc/``.

The scratch faces are deleted when a run finishes, so the seam audit is taken by the merge
tasks from the faces they read anyway: per face, the fragment pairs that touch, each with
its evidence (contact voxel pairs, embedding distance of the evidence the method left on
the two sides: the fragments' mean embeddings, or the voxel embeddings for
``connectivity``) and whether the method's rule accepted it. Once the merge knows the
global ids, :func:`summarise` turns the per-batch records into ``qc/seam_audit.json``:
totals, histograms, the closest rejected and farthest accepted pairs, objects cut by each
face and objects spanning more than one block. Pure numpy except the two record helpers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

PAIR_KEYS = ("a", "b", "contact", "distance", "min_distance", "accepted", "centre", "face")
FACE_KEYS = ("block", "axis", "touching", "accepted", "contact", "fg_a", "fg_b", "objects_cut")
TOP = 20  # closest rejected / farthest accepted pairs listed in the JSON
FACE_ROWS = 2000  # faces listed one by one in the JSON (all faces stay in the npz records)


def face_audit(lab_a: np.ndarray, lab_b: np.ndarray, ev_a: np.ndarray, ev_b: np.ndarray,
               accepted: np.ndarray) -> dict[str, np.ndarray]:
    """Touching fragment pairs of one face with their evidence; ``accepted``: the pairs the
    method's rule accepted (``(m, 2)``). ``distance``/``min_distance``: mean/min over the
    pair's contact voxel pairs of the distance between the evidence on the two sides;
    ``centre``: the mean position of its contact voxels in the face plane (``(n, ndim - 1)``)."""
    link = (lab_a > 0) & (lab_b > 0)
    if not link.any():
        return empty_pairs(lab_a.ndim)
    ids = np.stack([lab_a[link], lab_b[link]], axis=1).astype(np.uint64)
    dist = np.sqrt(((ev_a[:, link].astype(np.float64) - ev_b[:, link]) ** 2).sum(axis=0))
    pairs, inv, contact = np.unique(ids, axis=0, return_inverse=True, return_counts=True)
    inv = inv.ravel()
    centre = np.stack([np.bincount(inv, weights=c) / contact for c in np.nonzero(link)], axis=1)
    min_d = np.full(len(pairs), np.inf)
    np.minimum.at(min_d, inv, dist)
    taken = {(int(a), int(b)) for a, b in np.asarray(accepted).reshape(-1, 2)}
    return {"a": pairs[:, 0], "b": pairs[:, 1], "contact": contact.astype(np.int64),
            "distance": np.bincount(inv, weights=dist) / contact, "min_distance": min_d,
            "accepted": np.array([(int(a), int(b)) in taken for a, b in pairs], dtype=bool), "centre": centre}


def empty_pairs(plane_ndim: int = 0) -> dict[str, np.ndarray]:
    return {"a": np.zeros(0, np.uint64), "b": np.zeros(0, np.uint64), "contact": np.zeros(0, np.int64),
            "distance": np.zeros(0), "min_distance": np.zeros(0), "accepted": np.zeros(0, bool),
            "centre": np.zeros((0, plane_ndim))}


def batch_record(faces: Sequence[tuple[int, int, np.ndarray, np.ndarray, dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    """One record for the faces a merge task read: ``(block, axis, lab_a, lab_b, pairs)`` each."""
    rows: dict[str, list[Any]] = {k: [] for k in FACE_KEYS}
    parts: list[dict[str, np.ndarray]] = []
    for i, (block, axis, lab_a, lab_b, p) in enumerate(faces):
        acc = p["accepted"]
        for key, value in (("block", block), ("axis", axis), ("touching", len(acc)), ("accepted", int(acc.sum())),
                           ("contact", int(p["contact"].sum())), ("fg_a", int((lab_a > 0).sum())),
                           ("fg_b", int((lab_b > 0).sum())), ("objects_cut", 0)):
            rows[key].append(value)
        parts.append({**p, "face": np.full(len(acc), i, np.int64)})
    if parts:
        plane = max(q["centre"].shape[1] for q in parts)
        parts = [{**q, "centre": q["centre"].reshape(-1, plane)} for q in parts]
    pairs = {k: np.concatenate([q[k] for q in parts]) for k in PAIR_KEYS} if parts else {
        **empty_pairs(), "face": np.zeros(0, np.int64)}
    return {**{f"face_{k}": np.asarray(v, np.int64) for k, v in rows.items()}, **pairs}


def save_record(path: Path, record: dict[str, np.ndarray]) -> None:
    """Write ``record`` as ``.npz`` atomically (a recomputed task rewrites the same file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **record)
    os.replace(tmp, path)


def iter_records(folder: Path, rewrite: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """The records in ``folder``, one at a time; ``rewrite``: each is saved again once the
    consumer asks for the next (with what it filled in)."""
    files = sorted(folder.glob("*.npz"), key=lambda p: int(p.stem)) if folder.is_dir() else []
    for path in files:
        with np.load(path) as z:
            rec = {k: z[k] for k in z.files}
        yield rec
        if rewrite:
            save_record(path, rec)


def global_ids(ids: np.ndarray, tables: Sequence[np.ndarray], stride: int) -> np.ndarray:
    """Global object id (0: removed by ``min_size``) of fragment ids, via the lookup tables."""
    ids = np.asarray(ids, np.uint64)
    blocks = ((ids - np.uint64(1)) // np.uint64(stride)).astype(np.int64)
    local = (ids - blocks.astype(np.uint64) * np.uint64(stride)).astype(np.int64)
    out = np.zeros(len(ids), np.int64)
    for b in np.unique(blocks):
        sel = blocks == b
        out[sel] = tables[b][local[sel]]
    return out


def _histogram(values: np.ndarray, edges: np.ndarray) -> list[int]:
    return np.histogram(np.clip(values, edges[0], edges[-1]), edges)[0].tolist()


def _pair_row(rec: dict[str, np.ndarray], i: int) -> dict[str, Any]:
    f = int(rec["face"][i])
    return {"a": int(rec["a"][i]), "b": int(rec["b"][i]), "block": int(rec["face_block"][f]),
            "axis": int(rec["face_axis"][f]), "contact": int(rec["contact"][i]),
            "distance": round(float(rec["distance"][i]), 4), "min_distance": round(float(rec["min_distance"][i]), 4)}


def summarise(records: Iterable[dict[str, np.ndarray]], tables: Sequence[np.ndarray], stride: int,
              rule: dict[str, Any], objects: int) -> dict[str, Any]:
    """``seam_audit.json`` from the merge tasks' records and the global lookup tables.

    Fills each record's ``face_objects_cut`` (distinct objects joined across the face)."""
    limit = float(rule.get("max_distance") or rule.get("threshold") or 1.0)
    d_edges = np.linspace(0.0, 3 * limit, 31)
    c_edges = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 2**40], np.float64)
    totals = {"faces": 0, "touching_pairs": 0, "accepted_pairs": 0, "rejected_pairs": 0, "contact_voxels": 0,
              "object_face_crossings": 0}
    per_axis: dict[int, dict[str, int]] = {}
    hist = {k: {"distance": np.zeros(30, np.int64), "contact": np.zeros(13, np.int64)} for k in ("accepted", "rejected")}
    near_miss: list[tuple[float, dict[str, Any]]] = []
    far_accept: list[tuple[float, dict[str, Any]]] = []
    faces: list[dict[str, Any]] = []
    spans: list[np.ndarray] = []
    for rec in records:
        acc = rec["accepted"]
        gid = global_ids(rec["a"][acc], tables, stride)
        face_of = rec["face"][acc]
        cut = np.zeros(len(rec["face_block"]), np.int64)
        pairs = np.unique(np.stack([face_of, gid], axis=1)[gid > 0], axis=0)
        np.add.at(cut, pairs[:, 0], 1)
        rec["face_objects_cut"] = cut
        both = np.concatenate([rec["a"][acc], rec["b"][acc]])
        spans.append(np.stack([np.concatenate([gid, gid]), ((both - np.uint64(1)) // np.uint64(stride)).astype(np.int64)], 1))
        for key, sel in (("accepted", acc), ("rejected", ~acc)):
            hist[key]["distance"] += _histogram(rec["distance"][sel], d_edges)
            hist[key]["contact"] += _histogram(rec["contact"][sel].astype(np.float64), c_edges)
        rej = np.flatnonzero(~acc)
        near_miss += [(float(rec["distance"][i]), _pair_row(rec, i)) for i in rej[np.argsort(rec["distance"][rej])[:TOP]]]
        acc_i = np.flatnonzero(acc)
        far_accept += [(-float(rec["distance"][i]), _pair_row(rec, i)) for i in acc_i[np.argsort(-rec["distance"][acc_i])[:TOP]]]
        for f in range(len(rec["face_block"])):
            row = {k: int(rec[f"face_{k}"][f]) for k in FACE_KEYS}
            row["rejected"] = row["touching"] - row["accepted"]
            axis = per_axis.setdefault(row["axis"], {"faces": 0, "touching_pairs": 0, "accepted_pairs": 0,
                                                     "rejected_pairs": 0, "object_face_crossings": 0})
            for tot in (totals, axis):
                tot["faces"] += 1
                tot["touching_pairs"] += row["touching"]
                tot["accepted_pairs"] += row["accepted"]
                tot["rejected_pairs"] += row["rejected"]
                tot["object_face_crossings"] += row["objects_cut"]
            totals["contact_voxels"] += row["contact"]
            faces.append(row)
    span = np.unique(np.concatenate(spans), axis=0) if spans else np.zeros((0, 2), np.int64)
    span = span[span[:, 0] > 0]
    blocks_per_object = np.unique(span[:, 0], return_counts=True)[1] if len(span) else np.zeros(0, np.int64)
    worst = sorted(faces, key=lambda r: (-r["rejected"], -r["touching"]))
    return {
        "rule": rule,
        "objects": objects,
        **totals,
        "objects_spanning_blocks": len(blocks_per_object),
        "blocks_per_spanning_object": {str(k): int(v) for k, v in zip(*np.unique(blocks_per_object, return_counts=True))},
        "per_axis": {str(k): v for k, v in sorted(per_axis.items())},
        "histograms": {"distance_edges": [round(float(x), 4) for x in d_edges],
                       "contact_edges": [int(x) for x in c_edges],
                       **{k: {n: v.tolist() for n, v in h.items()} for k, h in hist.items()}},
        "closest_rejected": [r for _, r in sorted(near_miss, key=lambda t: t[0])[:TOP]],
        "farthest_accepted": [r for _, r in sorted(far_accept, key=lambda t: t[0])[:TOP]],
        "faces_listed": "all" if len(faces) <= FACE_ROWS else f"the {FACE_ROWS} with most rejected pairs",
        "face_rows": faces if len(faces) <= FACE_ROWS else worst[:FACE_ROWS],
    }


class BlockRecord:
    """Per-block numbers the client collects from the fragments stage's summaries: the
    fragment count and every scalar the summary carries (times, a ``skipped`` flag)."""

    def __init__(self, blocks: int) -> None:
        self.blocks = blocks
        self.columns: dict[str, np.ndarray] = {"count": np.zeros(blocks, np.int64)}

    def add(self, summary: dict[str, Any]) -> None:
        i = summary["linear"]
        for key, value in summary.items():
            if key in ("linear", "sizes") or not np.isscalar(value):
                continue
            if key not in self.columns:
                kind = bool if isinstance(value, bool | np.bool_) else np.float64
                self.columns[key] = np.zeros(self.blocks, bool) if kind is bool else np.full(self.blocks, np.nan)
            self.columns[key][i] = value

    def arrays(self) -> dict[str, np.ndarray]:
        return dict(self.columns)
