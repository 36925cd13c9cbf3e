from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from pipeline.clustering import connectivity_fragments, region_adjacency
from pipeline.clustering.agglomeration import agglomerate, agglomeration_fragments, grow
from pipeline.clustering.faces import accept_by_evidence, face_pairs
from pipeline.clustering.meanshift import meanshift, meanshift_fragments
from pipeline.run import segment
from pipeline.volume.io import open_array, write_zarr

from .helpers import passthrough_checkpoint, same_partition


def test_connectivity_hand_made():
    fg = np.array([[1, 1, 1, 0, 1],
                   [0, 0, 1, 0, 1]], dtype=float)
    emb = np.zeros((1, 2, 5))
    emb[0, :, 2:] = 5.0  # column 2 differs from columns 0..1: split there
    lab = connectivity_fragments(emb, fg, 0.5, 1.0)
    assert lab.tolist() == [[1, 1, 2, 0, 3], [0, 0, 2, 0, 3]]


def test_meanshift_finds_modes():
    rng = np.random.default_rng(0)
    modes = [(0, 0, 0), (3, 0, 0), (0, 3, 0)]
    pts = torch.from_numpy(np.concatenate([rng.normal(size=(300, 3)) * 0.1 + m for m in modes]).astype(np.float32))
    centres, assign = meanshift(pts, 1.0)
    assert centres.shape == (3, 3)
    assert sorted(np.bincount(assign.numpy()).tolist()) == [300, 300, 300]
    for m in modes:
        assert torch.cdist(torch.tensor([m], dtype=torch.float32), centres).min() < 0.05
    # subsampled mode seeking gives the same assignment
    _, assign2 = meanshift(pts, 1.0, max_points=200)
    assert same_partition(assign.numpy() + 1, assign2.numpy() + 1)


def test_meanshift_fragments_are_connected():
    """Two far-apart objects with the same embedding are two fragments (step periodicity)."""
    fg = np.zeros((20, 20))
    fg[2:6, 2:6] = 1
    fg[12:18, 12:18] = 1
    fg[2:6, 6:10] = 1  # touches the first, different embedding
    emb = np.zeros((2, 20, 20))
    emb[0, 2:6, 6:10] = 4.0
    lab = meanshift_fragments(emb, fg, 0.5, 1.0, device="cpu")
    assert lab.max() == 3
    assert len({lab[3, 3], lab[14, 14], lab[3, 8]}) == 3


def test_evidence_rule():
    pairs = np.array([[1, 2], [3, 4], [5, 6]], dtype=np.uint64)
    contact = np.array([10, 1, 10])
    ma = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    mb = np.array([[0.1, 0.0], [0.0, 0.0], [3.0, 0.0]])
    assert accept_by_evidence(pairs, contact, ma, mb, min_contact=2, max_distance=1.0).tolist() == [[1, 2]]
    la = np.array([[1, 1, 0], [3, 0, 0]], dtype=np.uint64)
    lb = np.array([[2, 2, 2], [4, 4, 0]], dtype=np.uint64)
    p, c = face_pairs(la, lb)
    assert p.tolist() == [[1, 2], [3, 4]] and c.tolist() == [2, 1]


@pytest.mark.parametrize("method, params", [("meanshift", {"bandwidth": 0.5}),
                                            ("agglomeration", {"threshold": 0.5, "merge_distance": 1.0})])
def test_pipeline_merges_on_evidence(tmp_path, method, params):
    """Objects of distinct embeddings spanning blocks and touching each other."""
    vol = np.zeros((16, 32, 32), np.float32)
    vol[2:14, 3:29, 3:15] = 0.6   # spans many blocks
    vol[2:14, 3:29, 15:29] = 0.9  # touches the first across x = 15 (inside a block) and crosses x = 16
    vol[4:8, 20:30, 20:30] = 0.0
    zz, yy, xx = np.mgrid[:16, :32, :32]
    vol[((zz - 8) ** 2 + (yy - 26) ** 2 + (xx - 25) ** 2) < 9] = 0.75
    write_zarr(tmp_path / "in.zarr", vol, chunks=(16, 32, 32), name="raw")
    ckpt = passthrough_checkpoint(tmp_path / "pt.pt")
    out = segment({"input": {"path": str(tmp_path / "in.zarr"), "dataset": "raw"},
                   "output": {"path": str(tmp_path / "o.zarr")}, "model": {"checkpoint": str(ckpt)},
                   "blocks": {"write_shape": [8, 8, 8]}, "cluster": {"kind": "serial"},
                   "clustering": {"method": method, **params}})
    seg = open_array(out / "segmentation")[...]
    expected = np.zeros(vol.shape, np.int64)
    for i, v in enumerate((0.6, 0.9, 0.75), start=1):
        cc, _ = ndimage.label(vol == v)
        expected[cc > 0] = i + 10 * cc[cc > 0]
    assert same_partition(seg, expected)


def _two_objects_with_smooth_border() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two touching objects (x 0..9 and 10..19) whose embeddings ramp across the border in
    steps of 0.5 or 1.0 (as a CNN's output does), means 0.15 and 2.85."""
    row = np.array([0.0] * 8 + [0.5, 1.0, 2.0, 2.5] + [3.0] * 8)
    emb = np.broadcast_to(row, (4, 20))[None].copy()
    fg = np.ones((4, 20))
    truth = np.broadcast_to((np.arange(20) >= 10) + 1, (4, 20))
    return emb, fg, truth


def test_agglomeration_separates_objects_that_connectivity_merges():
    emb, fg, truth = _two_objects_with_smooth_border()
    assert connectivity_fragments(emb, fg, 0.5, 1.01).max() == 1  # every neighbour step is <= 1.0
    lab = agglomeration_fragments(emb, fg, 0.5, 0.3, 1.5)
    assert same_partition(lab, truth)
    # a merge distance beyond the distance of the two means joins them
    assert agglomeration_fragments(emb, fg, 0.5, 0.3, 3.0).max() == 1
    # regions merge only with neighbours: far-apart regions of equal embedding stay apart
    lab2 = agglomerate(np.array([[1, 0, 2]]), np.zeros((1, 1, 3)), 1.0)
    assert lab2.tolist() == [[1, 0, 2]]


def test_agglomeration_uses_updated_means():
    """Merging order follows the distances of the current (merged) means: a chain of
    small steps does not bridge two objects."""
    row = np.array([0.0, 0.0, 0.0, 0.9, 1.8, 2.7, 2.7, 2.7])
    emb = row[None, None, :].copy()
    labels = np.arange(1, 9)[None, :]
    lab = agglomerate(labels, emb, 1.0)
    # single linkage (every step 0.9 < 1.0) would give one object; mean linkage keeps two
    assert lab.max() == 2 and lab[0, 0] != lab[0, -1]


def test_region_adjacency_matches_brute_force():
    rng = np.random.default_rng(0)
    lab = rng.integers(0, 5, size=(6, 7, 5))
    pairs, contact = region_adjacency(lab)
    expected: dict[tuple[int, int], int] = {}
    for idx in np.ndindex(lab.shape):
        for ax in range(3):
            nb = list(idx)
            nb[ax] += 1
            if nb[ax] < lab.shape[ax]:
                a, b = int(lab[idx]), int(lab[tuple(nb)])
                if a and b and a != b:
                    key = (min(a, b), max(a, b))
                    expected[key] = expected.get(key, 0) + 1
    assert dict(zip(map(tuple, pairs.tolist()), contact.tolist())) == expected


def test_grow_gives_border_voxels_the_nearest_label():
    labels = np.array([[0, 1, 1, 0, 0, 2, 0, 0, 0]])
    fg = np.array([[0.6, 0.9, 0.9, 0.6, 0.6, 0.9, 0.1, 0.6, 0.6]])
    assert grow(labels, fg, 0.5, 1.0).tolist() == [[1, 1, 1, 1, 2, 2, 0, 0, 0]]
    assert grow(labels, fg, 0.5, 0.0).tolist() == labels.tolist()
    # too far: index 7 is 2 voxels from label 2 (and index 6 is background)
    assert grow(labels, fg, 0.5, 2.0)[0, 7:].tolist() == [2, 0]
    # agglomeration cores at a strict foreground threshold get their border back
    emb, _, truth = _two_objects_with_smooth_border()
    fg2 = np.full((4, 20), 0.9)
    fg2[:, [0, 9, 10, 19]] = 0.6
    cores = agglomeration_fragments(emb, fg2, 0.8, 0.3, 1.5)
    assert (cores == 0).sum() == 16
    assert same_partition(agglomeration_fragments(emb, fg2, 0.8, 0.3, 1.5, 0.5, 2.0), truth)
