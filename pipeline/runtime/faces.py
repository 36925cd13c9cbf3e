"""Block faces: the outer planes of a block that touch a neighbour, with their fragment ids and
evidence, kept by the fragments stage for the merge. One file per fragments batch, named after the
batch's done marker (see :mod:`pipeline.runtime.markers`), in the store's ``scratch/faces/``."""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numcodecs import Zstd

from ..plan.blocks import Block, BlockPlan
from .markers import batch_name


def face_axes(plan: BlockPlan) -> list[int]:
    """Axes along which blocks have neighbours (faces to merge across)."""
    return [a for a, g in enumerate(plan.grid) if g > 1]


FACES_LAYOUT = 2  # 2: ids zstd-compressed, per-label evidence a table per plane (1: raw, every voxel's evidence)
ZSTD = Zstd(level=1)  # a plane of fragment ids: ~90x smaller, ~0.1 ms per 16 k voxels


def _pack(ids: np.ndarray) -> bytes:
    """A plane of ids as its compressed size (int64), the zstd bytes, and padding to 8 bytes."""
    packed = ZSTD.encode(np.ascontiguousarray(ids))
    return np.array([len(packed)], np.int64).tobytes() + bytes(packed) + bytes(-len(packed) % 8)


def face_layout(plan: BlockPlan, block: Block) -> list[tuple[int, int]]:
    """``(axis, side)`` of the block's planes that touch a neighbour, in file order (side 0:
    its lower plane, 1: its upper plane). A block's faces are a header ``[E, float bytes, kind]``
    (int64) and, per plane, its fragment ids (uint64, zstd: :func:`_pack`) then its evidence: ``kind`` 0, every voxel's
    ``(E, *plane)``; ``kind`` 1 (evidence per fragment, e.g. its mean), ``k`` (int64) and ``(E, k)``, the
    evidence of the plane's ``k`` distinct ids in ascending order."""
    return [(a, side) for a in face_axes(plan)
            for side, has in ((0, block.index[a] > 0), (1, block.index[a] < plan.grid[a] - 1)) if has]


def face_blob(plan: BlockPlan, block: Block, local: np.ndarray, evidence: Any, stride: int) -> bytes:
    """A block's outer planes that touch a neighbour (see :func:`face_layout`): ``local``
    ``(*valid)`` block-local labels (written as global fragment ids, see
    :func:`~pipeline.stages.ids.fragment_ids`, ``stride`` voxels per block), ``evidence``
    ``(E, *valid)``: an array (kind 0), or :class:`~pipeline.clustering.base.PerLabel`, a value per
    label (kind 1: one column per distinct id of the plane), as the bytes its batch's faces file holds."""
    from ..clustering.base import PerLabel
    from ..stages.ids import fragment_ids

    per_label = isinstance(evidence, PerLabel)
    parts = [np.array([evidence.shape[0], evidence.dtype.itemsize, int(per_label)], np.int64).tobytes()]
    for a, side in face_layout(plan, block):
        pos = 0 if side == 0 else -1  # (a plane by basic indexing, a view: take() copied 6x slower)
        plane = local[(slice(None),) * a + (pos,)]
        parts.append(_pack(fragment_ids(plane, block.linear, stride)))  # ascending with the local id
        if per_label:
            present = np.unique(plane)
            parts.append(np.array([present.size], np.int64).tobytes())
            parts.append(np.ascontiguousarray(evidence.values[:, present]).tobytes())
        else:
            parts.append(np.ascontiguousarray(evidence[(slice(None),) * (a + 1) + (pos,)]).tobytes())
    return b"".join(parts)


class Faces:
    """The faces of blocks, read from their batches' faces files (``files``: the names of the
    fragments stage's marker files that own them, see :meth:`MarkerIndex.files`); a block in
    none of them wrote no faces (found empty as it was read, or skipped)."""

    def __init__(self, folder: Path, files: Sequence[str]) -> None:
        self.data: dict[int, memoryview] = {}
        for name in files:
            path = folder / name.removesuffix(".json")
            if not path.exists():  # every block of the batch was empty
                continue
            raw = memoryview(path.read_bytes())
            n = int(np.frombuffer(raw, np.int64, 1)[0])
            table = np.frombuffer(raw, np.int64, 3 * n, 8).reshape(n, 3)
            for linear, at, size in table.tolist():
                self.data[linear] = raw[at:at + size]

    def has(self, linear: int) -> bool:
        return linear in self.data

    def side(self, plan: BlockPlan, block: Block, axis: int, side: int) -> tuple[np.ndarray, np.ndarray] | None:
        data = self.data.get(block.linear)
        if data is None:  # a block without faces: background on them
            return None
        channels, itemsize, kind = (int(v) for v in np.frombuffer(data, np.int64, 3))
        dtype = np.float32 if itemsize == 4 else np.float64
        at = 24
        for a, s in face_layout(plan, block):
            shape = tuple(w for i, w in enumerate(block.valid.shape) if i != a)
            n = math.prod(shape)
            size = int(np.frombuffer(data, np.int64, 1, at)[0])
            if (a, s) == (axis, side):
                ids = np.frombuffer(ZSTD.decode(data[at + 8:at + 8 + size]), np.uint64, n).reshape(shape)
            at += 8 + size + -size % 8
            k = int(np.frombuffer(data, np.int64, 1, at)[0]) if kind else n
            at += 8 if kind else 0
            if (a, s) == (axis, side):
                values = np.frombuffer(data, dtype, channels * k, at).reshape(channels, k)
                if kind:  # each voxel's column: its id's rank among the plane's distinct ids
                    values = values[:, np.unique(ids, return_inverse=True)[1].reshape(-1)]
                return ids, values.reshape(channels, *shape)
            at += k * channels * itemsize
        raise ValueError(f"block {block.index} has no face on side {side} of axis {axis}")

    def face(self, plan: BlockPlan, block: Block, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(labels_a, labels_b, evidence_a, evidence_b)`` of the face between ``block`` (side a,
        its upper plane) and its upper neighbour along ``axis`` (side b, its lower plane)."""
        index = list(block.index)
        index[axis] += 1
        a = self.side(plan, block, axis, 1)
        b = self.side(plan, plan.block(index), axis, 0)
        if a is None or b is None:
            shape = tuple(w for i, w in enumerate(block.valid.shape) if i != axis)
            known = a if a is not None else b
            channels = known[1].shape[0] if known is not None else 1
            blank = (np.zeros(shape, np.uint64), np.zeros((channels, *shape), np.float32))
            a, b = a or blank, b or blank
        return a[0], b[0], a[1], b[1]




def write_faces(folder: Path, linears: Sequence[int], blobs: dict[int, bytes]) -> None:
    """The faces of a batch of blocks (``blobs``, see :func:`face_blob`; blocks without faces
    left out) in one file named after the batch's marker (:func:`batch_name`), written whole
    before the batch is marked done: a header ``[n]``, ``n`` rows ``[block, offset, bytes]``
    (int64), the blobs."""
    if not blobs:
        return
    order = sorted(blobs)
    at, table = 8 + 24 * len(order), []
    for linear in order:
        table.append((linear, at, len(blobs[linear])))
        at += len(blobs[linear])
    head = np.array([len(order)], np.int64).tobytes() + np.array(table, np.int64).tobytes()
    path = folder / batch_name(linears)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            f.write(head)
            for linear in order:
                f.write(blobs[linear])
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
