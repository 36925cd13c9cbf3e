"""Empty-space skipping: skipped blocks never change the segmentation, whichever source
decides (each block's input, a pyramid level, a mask); the geometry of coarse reads."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
import zarr
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from pipeline.cli import main
from pipeline.empty import choose_level, coarse_box
from pipeline.geometry import Box
from pipeline.io import open_array, open_group, write_zarr
from pipeline.prepare import plan_summary, prepare
from pipeline.run import segment

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
