"""Empty-space skipping: skipped blocks never change the segmentation, whichever source
decides (each block's input, a pyramid level, a mask); the geometry of coarse reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from pipeline.cli import main
from pipeline.config import InputConfig
from pipeline.geometry import Box
from pipeline.plan.blocks import BlockPlan
from pipeline.plan.empty import absent_blocks, any_within, choose_level, coarse_box
from pipeline.plan.prepare import prepare
from pipeline.plan.summary import plan_summary
from pipeline.run import segment
from pipeline.stages.predict import input_volume
from pipeline.volume.io import open_array, open_group, write_zarr
from pipeline.volume.ome import downsample_labels

from .helpers import passthrough_checkpoint, same_partition

SHAPE, WRITE = (16, 64, 64), (4, 8, 8)


def _sparse(seed: int = 0) -> np.ndarray:
    """Blobs in one corner of an otherwise empty volume (most blocks are background)."""
    rng = np.random.default_rng(seed)
    vol = np.zeros(SHAPE, np.float32)
    vol[4:12, 8:30, 8:30] = ndimage.gaussian_filter(rng.random((8, 22, 22)), 1.5) > 0.5
    return vol


def _ome_pyramid(path, vol) -> None:
    g = zarr.open_group(str(path), mode="w")
    datasets = []
    for k in range(3):
        f = 2**k  # block means, as pyramid writers do
        level = vol.reshape(SHAPE[0], SHAPE[1] // f, f, SHAPE[2] // f, f).mean(axis=(2, 4))
        g.create_array(str(k), data=level.astype(np.float32), chunks=(4, 16, 16))
        datasets.append({"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": [1, 2**k, 2**k]}]})
    axes = [{"name": a, "type": "space"} for a in "zyx"]
    g.attrs["ome"] = {"version": "0.5", "multiscales": [{"version": "0.5", "axes": axes, "datasets": datasets}]}


def _run(tmp_path, name, src, dataset, **sections):
    cfg = {"input": {"path": str(src), **({"dataset": dataset} if dataset else {})},
           "output": {"path": str(tmp_path / f"{name}.zarr"), "labels": "none"},  # runs share the input image
           "model": {"checkpoint": str(passthrough_checkpoint(tmp_path / "pt.pt")), "precision": "float64"},
           "blocks": {"write_shape": list(WRITE)}, "cluster": {"kind": "serial"}, **sections}
    out = segment(cfg)
    return open_array(out / "segmentation")[...], open_group(out).attrs["pipeline"]["empty_blocks"], out, cfg


@pytest.mark.parametrize("source", ["read", "level", "mask"])
def test_skipping_empty_blocks_never_changes_the_segmentation(tmp_path, source, capsys):
    vol = _sparse()
    if source == "level":
        _ome_pyramid(tmp_path / "in.zarr", vol)
        src, dataset = tmp_path / "in.zarr", None
    else:
        write_zarr(tmp_path / "in.zarr", vol, chunks=WRITE, name="raw")
        src, dataset = tmp_path / "in.zarr", "raw"
    empty: dict = {}
    if source == "mask":  # a 4x coarser mask of the region that holds anything
        mask = np.zeros((4, 16, 16), np.uint8)
        mask[1:3, 2:8, 2:8] = 1
        write_zarr(tmp_path / "mask.zarr", mask, name="m")
        empty = {"mask": {"path": str(tmp_path / "mask.zarr"), "dataset": "m"}}
    skipped, info, out, cfg = _run(tmp_path, "skip", src, dataset, empty=empty)
    full, none, _, _ = _run(tmp_path, "full", src, dataset, empty={"skip": False})
    assert np.array_equal(skipped, full)  # same ids, not just the same partition
    assert none["skipped"] == 0 and info["of"] == np.prod([s // w for s, w in zip(SHAPE, WRITE)])
    assert info["skipped"] >= info["of"] * 0.6, info
    assert source in info["decided_by"] or (source == "read" and "as it is read" in info["decided_by"])
    flags = open_array(out / "empty_blocks")[...]
    assert flags.shape == prepare(cfg).plan.grid and int(flags.sum()) == info["skipped"]
    assert same_partition(skipped, ndimage.label(vol > 0.5)[0])
    if source != "read":  # `pipeline plan` counts them before any block runs
        assert source in plan_summary(prepare(cfg))["empty_blocks_from"]
        cfg["output"]["path"] = str(tmp_path / "never.zarr")
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
        assert main(["plan", str(tmp_path / "c.yaml")]) == 0
        assert f"{info['skipped']} of {info['of']} will be skipped" in capsys.readouterr().out


def test_a_mask_skips_what_it_excludes(tmp_path):
    vol = _sparse()
    write_zarr(tmp_path / "in.zarr", vol, chunks=WRITE, name="raw")
    mask = np.zeros(SHAPE, np.uint8)
    mask[:, :, :16] = 1  # keep x < 16 only (blocks are 8 wide in x, halo stays inside the kept blocks' reads)
    write_zarr(tmp_path / "mask.zarr", mask, name="m")
    seg, info, _, _ = _run(tmp_path, "m", tmp_path / "in.zarr", "raw",
                           empty={"mask": {"path": str(tmp_path / "mask.zarr"), "dataset": "m"}})
    assert seg[:, :, 24:].max() == 0 and seg[:, :, 8:16].max() > 0
    assert info["skipped"] >= info["of"] // 2


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(-8, 40), st.integers(1, 30), st.integers(1, 50), st.sampled_from([1, 2, 3, 4, 8])),
                min_size=1, max_size=3))
def test_coarse_box_covers_the_read_box_inside_the_volume(axes):
    offset, shape, volume, factors = zip(*axes, strict=True)
    assume(all(o < v and o + n > 0 for o, n, v in zip(offset, shape, volume, strict=True)))  # a block's read box
    coarse = tuple(-(-v // f) for v, f in zip(volume, factors, strict=True))
    box = Box(offset, shape)
    cb = coarse_box(box, volume, factors, coarse)
    assert all(0 <= o and o + s <= c and s >= 1 for o, s, c in zip(cb.offset, cb.shape, coarse, strict=True))
    for o, s, v, f, co, cs in zip(offset, shape, volume, factors, cb.offset, cb.shape, strict=True):
        inside = [i for i in range(max(o, 0), min(o + s, v))]
        assert all(co <= i // f < co + cs for i in inside)


def test_automatic_level_keeps_four_voxels_per_block_axis():
    levels = [(64, 512, 512), (64, 256, 256), (32, 128, 128), (16, 64, 64)]
    assert choose_level(levels, 0, (64, 64, 64)) == 3
    assert choose_level(levels, 0, (8, 64, 64)) == 2
    assert choose_level(levels, 0, (8, 8, 8)) == 1
    assert choose_level(levels, 0, (4, 4, 4)) == 0 and choose_level(levels, 2, (64, 64, 64)) == 3


# ---------------------------------------------------------------- chunks absent from the store


@settings(max_examples=60, deadline=None)
@given(grid=st.lists(st.integers(1, 6), min_size=1, max_size=3), cell=st.lists(st.integers(1, 5), min_size=3, max_size=3),
       data=st.data())
def test_any_within_equals_a_brute_force_scan(grid, cell, data):
    nd = len(grid)
    flags = np.array(data.draw(st.lists(st.booleans(), min_size=int(np.prod(grid)), max_size=int(np.prod(grid))))).reshape(grid)
    cell = cell[:nd]
    ranges = []
    for g, c in zip(grid, cell, strict=True):
        n = data.draw(st.integers(1, 4))
        lo = np.array(data.draw(st.lists(st.integers(-3, g * c + 2), min_size=n, max_size=n)))
        hi = lo + np.array(data.draw(st.lists(st.integers(0, 2 * c + 3), min_size=n, max_size=n)))
        ranges.append((lo, hi))
    dense = np.kron(flags, np.ones(cell, bool))  # one flag per voxel
    expected = [bool(dense[tuple(slice(max(r[0][i], 0), max(r[1][i], 0)) for r, i in zip(ranges, idx, strict=True))].any())
                for idx in np.ndindex(*(len(r[0]) for r in ranges))]
    assert any_within(flags, cell, ranges).tolist() == expected
    import pipeline.plan.empty as empty

    slab, empty.SLAB_BOXES = empty.SLAB_BOXES, data.draw(st.integers(1, 5))  # petabyte plans go in slabs
    try:
        assert any_within(flags, cell, ranges).tolist() == expected
    finally:
        empty.SLAB_BOXES = slab


@pytest.mark.parametrize("zoom", [None, (1.0, 0.5, 0.75)])
@pytest.mark.parametrize("fmt", [2, 3])
def test_absent_blocks_are_those_whose_reads_touch_no_stored_chunk(tmp_path, zoom, fmt):
    """Reference: the chunk files each block's read depends on (reflected halos at the volume's
    edges, a last block mostly outside it, resampling), none of them on disk."""
    shape, chunks = (13, 37, 29), (4, 8, 6)
    data = np.zeros(shape, np.uint16)
    rng = np.random.default_rng(1)
    for _ in range(4):  # a few isolated bright voxels: most chunks are never written
        data[tuple(rng.integers(0, s) for s in shape)] = 100
    arr = zarr.create_array(str(tmp_path / "in.zarr"), name="raw", shape=shape, chunks=chunks, dtype="uint16",
                            zarr_format=fmt)
    arr[...] = data
    vol = input_volume(InputConfig(path=str(tmp_path / "in.zarr"), dataset="raw"), zoom)
    plan = BlockPlan(vol.shape, (4, 8, 8), (3, 5, 2), (4, 8, 8))
    absent = absent_blocks(plan, vol, background=0.0)
    files = [[f for f in vol.files(b.read) if not f.endswith(("zarr.json", ".zarray"))] for b in plan]
    expected = np.array([not any(Path(f).exists() for f in fs) for fs in files])
    assert absent is not None and absent.tolist() == expected.tolist()
    assert 0 < absent.sum() < len(plan)
    for b, skip in zip(plan, absent, strict=True):  # absent blocks really are background
        assert not skip or vol.read(b.read).max() == 0
    assert absent_blocks(plan, vol, background=-1.0) is None  # the fill value (0) is not background


def test_an_empty_volume_costs_no_block_task_in_any_stage(tmp_path, caplog, monkeypatch):
    """No chunk stored: every block is known empty from the listing; merge, relabel and the label
    pyramid run no task over it, and the result is a valid, all-background label image. The store
    is listed once in the run (a store of millions of chunks takes a while to list)."""
    import pipeline.plan.empty as empty
    import pipeline.plan.prepare as prepare

    listed = []
    original = empty.stored_chunks

    def counted(vol):
        listed.append(vol)
        return original(vol)

    monkeypatch.setattr(empty, "stored_chunks", counted)
    monkeypatch.setattr(prepare, "stored_chunks", counted)
    shape = (24, 512, 512)
    zarr.create_array(str(tmp_path / "in.zarr"), name="raw", shape=shape, chunks=(8, 128, 128), dtype="uint16")
    cfg = {"input": {"path": str(tmp_path / "in.zarr"), "dataset": "raw"}, "output": {"path": str(tmp_path / "out.zarr")},
           "model": {"checkpoint": str(passthrough_checkpoint(tmp_path / "pt.pt"))},
           "blocks": {"write_shape": [8, 32, 32]}, "cluster": {"kind": "serial"}}
    caplog.set_level("INFO")
    out = segment(cfg)
    meta = open_group(out).attrs["pipeline"]
    assert meta["objects"] == 0 and meta["empty_blocks"]["skipped"] == meta["empty_blocks"]["of"] == 3 * 16 * 16
    assert f"{3 * 16 * 16} of {3 * 16 * 16} blocks read only input chunks the store does not hold" in caplog.text
    assert "0 task boxes resumed" in caplog.text and "over empty space skipped" in caplog.text
    labels = out / "labels" / "segmentation"
    written = [p for p in labels.rglob("c/*") if p.is_file()] + [p for p in (out / "segmentation").rglob("c/*") if p.is_file()]
    assert written == []  # nothing was written: every chunk is the fill value
    assert open_array(labels / "0")[...].max() == 0 and open_array(labels / "0").shape == shape
    assert len(listed) == 1, f"the store was listed {len(listed)} times"


def test_skipped_label_boxes_leave_the_same_pyramid(tmp_path, caplog):
    """Label task boxes over blocks without fragments are never tasks; every level still equals
    the label-mode pyramid of the segmentation."""
    vol = np.zeros((32, 512, 512), np.float32)  # a level 0 of several task boxes, objects in one corner
    vol[:16, :64, :64] = _sparse()[:, :64, :64]
    write_zarr(tmp_path / "in.zarr", vol, chunks=(8, 64, 64), name="raw")
    cfg = {"input": {"path": str(tmp_path / "in.zarr"), "dataset": "raw"}, "output": {"path": str(tmp_path / "out.zarr")},
           "model": {"checkpoint": str(passthrough_checkpoint(tmp_path / "pt.pt"))},
           "blocks": {"write_shape": [8, 64, 64]}, "cluster": {"kind": "serial"}}
    caplog.set_level("INFO")
    out = segment(cfg)
    seg = open_array(out / "segmentation")[...]
    assert seg.max() > 0
    group = out / "labels" / "segmentation"
    levels = sorted((p.name for p in group.iterdir() if p.name.isdigit()), key=int)
    previous = seg
    for name in levels:
        level = open_array(group / name)[...]
        if name != "0":
            previous = downsample_labels(previous, tuple(-(-a // b) for a, b in zip(previous.shape, level.shape, strict=True)))
        assert np.array_equal(level, previous[tuple(slice(0, s) for s in level.shape)]), name
    assert "over empty space skipped" in caplog.text and " 0 over empty space skipped" not in caplog.text
