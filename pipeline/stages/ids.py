"""Global fragment ids, union-find, lookup tables and object statistics. Pure numpy; no Dask.

Fragment ids are unique without any serial dependency between blocks::

    id = block.linear * stride + local      (local = 1..k, stride = voxels per block)

so any block's fragments can be numbered as soon as it is clustered, and the
block of an id is ``(id - 1) // stride``. On disk (``scratch/fragments``) a block keeps its
local ids only, in the smallest dtype that holds ``stride`` (:func:`fragment_dtype`): the
block's position gives the rest. Global ids exist on the faces and in the merge's tables.

Which fragment pairs that touch across a block face belong together is the
clustering method's rule (:mod:`pipeline.clustering`); this module takes the
accepted pairs from there. Union-find is done by :func:`components` on edge lists, which can be applied
as a tree reduction: its output (node -> root, root = smallest id) is itself a
valid edge list for the next level.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components

ID_DTYPE = np.uint64
FRAGMENTS_LAYOUT = "block-local ids"  # what scratch/fragments holds (part of the resume key's layout)


def fragment_dtype(stride: int) -> str:
    """The smallest unsigned dtype that holds every local id of a block of ``stride`` voxels."""
    return "uint16" if stride < 2**16 else "uint32" if stride < 2**32 else "uint64"


def fragment_ids(local: np.ndarray, linear: int, stride: int) -> np.ndarray:
    """Block-local labels (0 = background) -> globally unique uint64 fragment ids."""
    out = local.astype(ID_DTYPE)
    np.add(out, ID_DTYPE(linear) * ID_DTYPE(stride), out=out, where=local > 0)  # no gather/scatter of the voxels
    return out


def local_ids(ids: np.ndarray, linear: int, stride: int) -> np.ndarray:
    """Inverse of :func:`fragment_ids` for one block: ``int64`` local labels, 0 = background."""
    return np.where(ids > 0, ids - ID_DTYPE(linear) * ID_DTYPE(stride), 0).astype(np.int64)


def block_of(ids: np.ndarray, stride: int) -> np.ndarray:
    return ((ids.astype(ID_DTYPE) - ID_DTYPE(1)) // ID_DTYPE(stride)).astype(np.int64)


def components(edge_lists: Sequence[np.ndarray]) -> np.ndarray:
    """Union-find over edges: returns ``(n, 2)`` uint64 ``[node, root]`` for every node
    in the edges, root = the smallest id of its component. Associative: feed outputs
    of several calls to another call to reduce as a tree."""
    edges = [e for e in edge_lists if len(e)]
    if not edges:
        return np.zeros((0, 2), ID_DTYPE)
    e = np.concatenate(edges).astype(ID_DTYPE)
    nodes, inv = np.unique(e.ravel(), return_inverse=True)
    inv = inv.reshape(-1, 2)
    n = nodes.size
    graph = sparse.coo_matrix((np.ones(len(inv), np.int8), (inv[:, 0], inv[:, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    # nodes are sorted, so the first node of each component is its smallest id
    root_of_comp = np.full(comp.max() + 1, n, dtype=np.int64)
    np.minimum.at(root_of_comp, comp, np.arange(n))
    return np.stack([nodes, nodes[root_of_comp[comp]]], axis=1)


def dense_index(ids: np.ndarray, counts: np.ndarray, starts: np.ndarray, stride: int) -> np.ndarray:
    """Position of each fragment id in the dense, id-ordered list of every block's fragments."""
    ids = np.asarray(ids, dtype=ID_DTYPE)
    block = ((ids - ID_DTYPE(1)) // ID_DTYPE(stride)).astype(np.int64)
    local = (ids - block.astype(ID_DTYPE) * ID_DTYPE(stride)).astype(np.int64)
    if ids.size and (block.max() >= counts.size or np.any(local > counts[block])):
        raise ValueError("merge mapping names fragments that no block reported")
    return starts[block] + local - 1


def global_tables(
    counts: np.ndarray,
    stride: int,
    mapping: np.ndarray,
    sizes: np.ndarray | None = None,
    min_size: int = 0,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Global ids of every fragment, sequential ``1..N``: ``(final, starts, N)``; block ``b``'s
    fragment ``local`` has global id ``final[starts[b] + local - 1]`` (see :func:`block_table`).

    ``counts[b]``: fragments in block ``b``; ``mapping``: ``[node, root]`` from
    :func:`components`; ``sizes``: voxel counts of every fragment, id-ordered (needed only
    for ``min_size``, applied to whole merged objects; removed objects map to 0). Global
    ids follow the order of the objects' smallest fragment id.

    Memory, per fragment: 4 bytes (index) + 1 (flag) + 4 (id) + 4 (result) below 2**31
    fragments, plus 16 during ``min_size``: ~2.1 GB at 10**8 fragments.
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    starts = np.concatenate([[0], np.cumsum(counts)])
    index = np.int32 if total < 2**31 else np.int64
    root_index = np.arange(total, dtype=index)
    keep = np.ones(total, dtype=bool)  # objects, by their smallest fragment
    if len(mapping):
        node_idx = dense_index(mapping[:, 0], counts, starts, stride)
        root_idx = dense_index(mapping[:, 1], counts, starts, stride)
        root_index[node_idx] = root_idx
        keep[node_idx[node_idx != root_idx]] = False
    if min_size and sizes is not None:
        obj_size = np.asarray(sizes, dtype=np.int64).copy()
        if len(mapping):
            moved = node_idx != root_idx
            np.add.at(obj_size, root_idx[moved], obj_size[node_idx[moved]])
        keep &= obj_size >= min_size
        del obj_size
    n = int(keep.sum())
    gid = np.zeros(total, dtype=label_dtype(n))
    gid[keep] = np.arange(1, n + 1, dtype=gid.dtype)
    del keep
    return gid[root_index], starts, n


def block_table(final: np.ndarray, starts: np.ndarray, linear: int) -> np.ndarray:
    """Lookup table ``local id -> global id`` of one block (``table[0] == 0``, background)."""
    return np.concatenate([np.zeros(1, final.dtype), final[starts[linear] : starts[linear + 1]]])


def label_dtype(n: int) -> str:
    return "uint32" if n < 2**32 else "uint64"


def object_stats(labels: np.ndarray, offset: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-object partial statistics of one block (labels > 0), in volume coordinates. Only the
    labelled voxels are sorted and reduced (the background, most of a block, is never touched)."""
    nd = labels.ndim
    at = np.flatnonzero(labels)
    ids, inv = np.unique(labels.ravel()[at], return_inverse=True)
    count = np.bincount(inv, minlength=ids.size)
    lo = np.zeros((ids.size, nd), np.int64)
    hi = np.zeros((ids.size, nd), np.int64)
    sums = np.zeros((ids.size, nd), np.float64)
    for ax, coord in enumerate(np.unravel_index(at, labels.shape)):
        c = coord.astype(np.int64) + int(offset[ax])
        sums[:, ax] = np.bincount(inv, weights=c, minlength=ids.size)
        lo_ax = np.full(ids.size, np.iinfo(np.int64).max)
        np.minimum.at(lo_ax, inv, c)
        hi_ax = np.full(ids.size, -1, np.int64)
        np.maximum.at(hi_ax, inv, c)
        lo[:, ax], hi[:, ax] = lo_ax, hi_ax + 1
    return {"id": ids, "count": count, "lo": lo, "hi": hi, "sum": sums}


def combine_stats(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Aggregate partial statistics into one row per object id (associative)."""
    parts = [p for p in parts if len(p["id"])]
    if not parts:
        return {"id": np.zeros(0, np.int64), "count": np.zeros(0, np.int64), "lo": np.zeros((0, 0), np.int64),
                "hi": np.zeros((0, 0), np.int64), "sum": np.zeros((0, 0))}
    ids = np.concatenate([p["id"] for p in parts])
    uid, inv = np.unique(ids, return_inverse=True)
    count = np.bincount(inv, weights=np.concatenate([p["count"] for p in parts])).astype(np.int64)
    nd = parts[0]["lo"].shape[1]
    lo = np.full((uid.size, nd), np.iinfo(np.int64).max)
    hi = np.full((uid.size, nd), -1)
    sums = np.zeros((uid.size, nd))
    np.minimum.at(lo, inv, np.concatenate([p["lo"] for p in parts]))
    np.maximum.at(hi, inv, np.concatenate([p["hi"] for p in parts]))
    np.add.at(sums, inv, np.concatenate([p["sum"] for p in parts]))
    return {"id": uid, "count": count, "lo": lo, "hi": hi, "sum": sums}
