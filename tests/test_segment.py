"""Blockwise segmentation equals the whole-volume result (connectivity method)."""

from __future__ import annotations

import csv
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from pipeline.clustering import connectivity_fragments
from pipeline.network.checkpoint import load_checkpoint
from pipeline.network.predict import Predictor, predict_whole
from pipeline.run import as_config, prepare, segment
from pipeline.stages.ids import block_of, block_table, components, fragment_ids, global_tables, label_dtype
from pipeline.volume.io import open_array, open_group, write_zarr

from .conftest import make_checkpoint, random_volume
from .helpers import passthrough_checkpoint, same_partition


def _segment(tmp_path, vol, write, client=None, ckpt=None, name="seg", **sections):
    src = tmp_path / f"{name}-in.zarr"
    write_zarr(src, vol, chunks=write, name="raw")
    ckpt = ckpt or passthrough_checkpoint(tmp_path / "pt.pt", ndim=vol.ndim)
    cfg = {
        "input": {"path": str(src), "dataset": "raw"},
        "output": {"path": str(tmp_path / f"{name}.zarr")},
        "model": {"checkpoint": str(ckpt), "precision": "float64"},
        "blocks": {"write_shape": list(write)},
        "cluster": {"kind": "serial"} if client is None else {"kind": "local"},
        **sections,
    }
    out = segment(cfg, client=client)
    return open_array(out / "segmentation")[...], out, as_config(cfg)


def _blobs(shape, seed=0, sigma=1.5, level=0.5):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), sigma) > level


@pytest.mark.parametrize("write", [(4, 4, 4), (8, 8, 12), (12, 4, 8)])
def test_constant_embedding_equals_scipy_label_3d(tmp_path, write):
    fg = _blobs((20, 26, 30))
    seg, out, _ = _segment(tmp_path, fg.astype("float32"), write)
    ref, n = ndimage.label(fg)
    assert seg.dtype == np.uint32 and seg.max() == n
    assert same_partition(seg, ref)
    assert open_group(out).attrs["complete"] is True
    assert not (out / "scratch").exists()


@pytest.mark.parametrize("nclient", [1, 2])
def test_constant_embedding_on_dask_equals_dask_image(tmp_path, request, nclient):
    import dask.array as da
    from dask_image.ndmeasure import label as dask_label

    client = request.getfixturevalue(f"client{nclient}")
    fg = _blobs((16, 36, 28), seed=nclient)
    write = (8, 12, 8)
    seg, _, _ = _segment(tmp_path, fg.astype("float32"), write, client=client)
    ref, n = dask_label(da.from_array(fg, chunks=write))
    ref = ref.compute(scheduler="sync")
    assert int(n.compute(scheduler="sync")) == seg.max()
    assert same_partition(seg, ref)


def test_constant_embedding_2d(tmp_path):
    fg = _blobs((50, 44), seed=3, sigma=2.0)
    seg, _, _ = _segment(tmp_path, fg.astype("float32"), (8, 12))
    assert same_partition(seg, ndimage.label(fg)[0])


def test_objects_spanning_many_blocks(tmp_path):
    """A long tube, a shell and distinct objects touching across block faces."""
    vol = np.zeros((24, 40, 40), dtype="float32")
    zz, yy, xx = np.mgrid[:24, :40, :40]
    # helix-like tube through many blocks (intensity 1.0)
    t = np.linspace(0, 1, 400)
    for z, y, x in zip(2 + 20 * t, 20 + 15 * np.cos(6 * t), 20 + 15 * np.sin(6 * t)):
        vol[(zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 <= 2.0] = 1.0
    # a thin spherical shell (intensity 0.8): one object, 8+ blocks
    r = np.sqrt((zz - 12) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2)
    vol[(r > 7) & (r < 8.5)] = 0.8
    # two cubes touching across the face x = 32 (a block border): different embeddings
    vol[4:10, 2:8, 26:32] = 0.65
    vol[4:10, 2:8, 32:38] = 0.95
    seg, _, cfg = _segment(tmp_path, vol, (8, 8, 8))
    s = prepare(cfg)
    pred = Predictor(load_checkpoint(cfg.model.checkpoint)[0], precision="float64")
    whole = predict_whole(pred, vol[None], s.stats)
    ref = connectivity_fragments(whole[:-1], whole[-1], 0.5, 1.5)
    assert same_partition(seg, ref)
    # the shell is one object spanning at least 8 blocks
    shell = np.unique(seg[(r > 7.2) & (r < 8.3) & (vol == 0.8)])
    assert len(shell) == 1
    blocks = {tuple(c // 8 for c in idx) for idx in zip(*np.nonzero(seg == shell[0]))}
    assert len(blocks) >= 8
    # the touching cubes stay apart
    assert seg[6, 4, 30] != seg[6, 4, 34] and seg[6, 4, 30] > 0 and seg[6, 4, 34] > 0


@pytest.mark.parametrize("write", [(4, 8, 8), (8, 16, 12)])
def test_random_model_blockwise_equals_single_block(tmp_path, write):
    """A random network: real embeddings, real merges and splits."""
    ckpt = make_checkpoint(tmp_path / "m.pt", downsample=[[1, 2, 2], [2, 2, 2]], embed_dim=3)
    vol = random_volume((12, 30, 26), dtype="float32")
    cfg_common = {"clustering": {"threshold": 0.02, "foreground_threshold": 0.5}}
    model = load_checkpoint(ckpt)[0]
    # choose a threshold inside the distribution of neighbour distances
    whole = predict_whole(Predictor(model, precision="float64"), vol[None], prepare(as_config({
        "input": {"path": str(_write(tmp_path, vol)), "dataset": "raw"}, "output": {"path": str(tmp_path / "x")},
        "model": {"checkpoint": str(ckpt)}})).stats)
    d = np.sqrt((np.diff(whole[:-1], axis=3) ** 2).sum(0))
    thr = float(np.quantile(d, 0.7))
    cfg_common["clustering"]["threshold"] = thr
    fg_thr = float(np.quantile(whole[-1], 0.3))
    cfg_common["clustering"]["foreground_threshold"] = fg_thr
    seg, _, _ = _segment(tmp_path, vol, write, ckpt=ckpt, **cfg_common)
    single, _, _ = _segment(tmp_path, vol, (12, 32, 28), ckpt=ckpt, name="single", **cfg_common)
    ref = connectivity_fragments(whole[:-1], whole[-1], fg_thr, thr)
    assert ref.max() > 3
    assert same_partition(seg, single)
    assert same_partition(seg, ref)


def _write(tmp_path, vol):
    p = tmp_path / "probe.zarr"
    if not p.exists():
        write_zarr(p, vol, name="raw")
    return p


def test_min_size_applies_after_merging(tmp_path):
    vol = np.zeros((8, 16, 16), dtype="float32")
    vol[2:6, 2:6, 2:14] = 1.0  # 192 voxels split over 4 blocks of 4x8x8: pieces of 48
    vol[2:4, 10:12, 2:4] = 0.6  # 8 voxels, separate object (different embedding, not touching)
    seg, out, _ = _segment(tmp_path, vol, (4, 8, 8), clustering={"min_size": 100})
    assert seg.max() == 1 and (seg > 0).sum() == 192
    rows = list(csv.DictReader(open(out / "objects.csv")))
    assert len(rows) == 1 and int(rows[0]["voxels"]) == 192


@pytest.mark.parametrize("rows_per_part", [None, 7])
def test_objects_table_matches_scipy(tmp_path, monkeypatch, rows_per_part):
    """Also with the table split in parts of 7 ids, 2 parts per task: as many Parquet parts."""
    import pipeline.stages.objects as objects

    if rows_per_part:
        monkeypatch.setattr(objects, "ROWS_PER_PART", rows_per_part)
        monkeypatch.setattr(objects, "PARTS_PER_TASK", 2)
    fg = _blobs((16, 20, 24), seed=5)
    seg, out, _ = _segment(tmp_path, fg.astype("float32"), (8, 8, 8))
    assert len(objects.part_files(out)) == -(-int(seg.max()) // objects.ROWS_PER_PART)
    rows = {int(r["id"]): r for r in csv.DictReader(open(out / "objects.csv"))}
    assert sorted(rows) == list(range(1, seg.max() + 1))
    for i, sl in enumerate(ndimage.find_objects(seg), start=1):
        r = rows[i]
        assert int(r["voxels"]) == int((seg == i).sum())
        assert [int(r[f"bbox_start_{a}"]) for a in "zyx"] == [s.start for s in sl]
        assert [int(r[f"bbox_end_{a}"]) for a in "zyx"] == [s.stop for s in sl]
        c = ndimage.center_of_mass(seg == i)
        assert np.allclose([float(r[f"centroid_{a}"]) for a in "zyx"], c, atol=1e-3)


@pytest.mark.parametrize("fill", ["background", "none", "all"])
def test_object_stats_equal_scipy(fill):
    """A block's partial statistics (only its labelled voxels are reduced) against scipy: ids,
    counts, bounding boxes and centroids in volume coordinates; a block with no background and an
    empty block too."""
    from pipeline.stages.ids import object_stats

    rng = np.random.default_rng(7)
    labels = ndimage.label(ndimage.gaussian_filter(rng.random((12, 20, 16)), 1.5) > 0.5)[0].astype(np.uint64) * 3
    if fill == "none":
        labels = ndimage.grey_dilation(labels, size=9)
        labels[labels == 0] = 5
    elif fill == "all":
        labels[:] = 0
    offset = (4, 40, 32)
    got = object_stats(labels, offset)
    ids = np.unique(labels[labels > 0])
    assert np.array_equal(got["id"], ids) and got["id"].dtype == labels.dtype
    assert np.array_equal(got["count"], [int((labels == i).sum()) for i in ids])
    for row, i in enumerate(ids):
        box = ndimage.find_objects((labels == i).astype(np.uint8))[0]
        assert got["lo"][row].tolist() == [s.start + o for s, o in zip(box, offset, strict=True)]
        assert got["hi"][row].tolist() == [s.stop + o for s, o in zip(box, offset, strict=True)]
        centre = np.add(ndimage.center_of_mass(labels == i), offset)
        assert np.allclose(got["sum"][row] / got["count"][row], centre)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**40), st.integers(1, 2**20), st.lists(st.integers(0, 50), min_size=1, max_size=20))
def test_fragment_ids_never_collide(linear, stride_extra, locals_):
    stride = max(locals_) + stride_extra
    local = np.array(locals_, dtype=np.int64)
    a = fragment_ids(local, linear, stride)
    b = fragment_ids(local, linear + 1, stride)
    fg = local > 0
    assert a.dtype == np.uint64
    assert not set(a[fg].tolist()) & set(b[fg].tolist())
    assert (block_of(a[fg], stride) == linear).all()
    assert (a[~fg] == 0).all()


def test_ids_beyond_32_bits():
    stride = 2**20
    blocks = [0, 5000, 5001, 2**14 + 7]  # ids up to ~1.7e10 > 2**32
    ids = [fragment_ids(np.array([1, 2, 3]), b, stride) for b in blocks]
    assert max(int(i.max()) for i in ids) > 2**32
    edges = np.array([[ids[1][2], ids[3][0]], [ids[0][0], ids[2][1]], [ids[2][1], ids[3][0]]], dtype=np.uint64)
    mapping = components([edges])
    counts = np.zeros(2**14 + 8, dtype=np.int64)
    for b in blocks:
        counts[b] = 3
    final, starts, n = global_tables(counts, stride, mapping)
    tables = {b: block_table(final, starts, b) for b in blocks}
    assert n == 12 - 3  # four ids merged into one object
    assert tables[blocks[3]][1] == tables[blocks[0]][1] == tables[blocks[1]][3] == tables[blocks[2]][2]
    assert label_dtype(n) == "uint32" and label_dtype(2**32) == "uint64"


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=6), st.integers(0, 2**32), st.integers(0, 12))
def test_global_tables_equal_a_direct_reference(counts, seed, min_size):
    """Sequential ids by smallest fragment, whole-object ``min_size``: against a dict-based reference."""
    rng = np.random.default_rng(seed)
    stride, counts = 10, np.array(counts)
    ids = [b * stride + k for b, c in enumerate(counts) for k in range(1, c + 1)]
    sizes = rng.integers(1, 8, len(ids))
    pairs = rng.choice(ids, (rng.integers(0, 6), 2)) if ids else np.zeros((0, 2))
    mapping = components([np.asarray(pairs, np.uint64)])
    root = {i: i for i in ids} | {int(a): int(b) for a, b in mapping}
    total = {r: sum(int(s) for i, s in zip(ids, sizes, strict=True) if root[i] == r) for r in set(root.values())}
    kept = sorted(r for r in total if total[r] >= min_size)
    expected = [kept.index(root[i]) + 1 if root[i] in kept else 0 for i in ids]
    final, starts, n = global_tables(counts, stride, mapping, sizes, min_size)
    assert n == len(kept)
    got = [int(block_table(final, starts, b)[k]) for b, c in enumerate(counts) for k in range(1, c + 1)]
    assert got == expected


def test_objects_table_parts_without_pyarrow(tmp_path, monkeypatch):
    """Where pyarrow is missing (the GPU image), the parts are CSV and read back the same."""
    from pipeline.stages.objects import part_files, read_objects

    fg = _blobs((16, 20, 24), seed=6).astype("float32")
    _, with_arrow, _ = _segment(tmp_path, fg, (8, 8, 8), name="arrow")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    _, without, _ = _segment(tmp_path, fg, (8, 8, 8), name="csv")
    assert [p.suffix for p in part_files(without)] == [".csv"] and part_files(with_arrow)[0].suffix == ".parquet"
    assert (with_arrow / "objects.csv").read_text() == (without / "objects.csv").read_text()
    monkeypatch.undo()
    a, b = read_objects(with_arrow), read_objects(without)
    assert a.keys() == b.keys() and all(np.allclose(a[k], b[k], atol=1e-3) for k in a)  # CSV: 3 decimals
