"""Region runs (the viewer's "Segment this view"): the blocks of the full run's plan that meet a
region, and objects clear of the computed box's edge equal the full run's (pipeline.plan.region)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipeline.geometry import Box
from pipeline.plan.blocks import BlockPlan
from pipeline.plan.region import (
    RegionError,
    computed_box,
    covering_blocks,
    edge_ids,
    edge_planes,
    exact_mask,
    input_box,
    parse_region,
    read_record,
    zoomed_region,
)
from pipeline.run import segment
from pipeline.stages import read_objects
from pipeline.volume.io import open_array, open_group, write_zarr
from pipeline.volume.resample import nearest_indices

from .helpers import passthrough_checkpoint, same_partition


def test_covering_blocks_and_computed_box():
    plan = BlockPlan((20, 30, 30), (8, 8, 8), (2, 2, 2), (4, 4, 4))  # grid 3 x 4 x 4, last blocks cut
    region = Box((7, 9, 0), (2, 14, 30))
    blocks = covering_blocks(plan, region)
    assert [plan.block_at(b).index for b in blocks] == [(z, y, x) for z in (0, 1) for y in (1, 2) for x in range(4)]
    assert computed_box(plan, region) == Box((0, 8, 0), (16, 16, 30))
    assert computed_box(plan, Box((17, 0, 0), (3, 1, 1))) == Box((16, 0, 0), (4, 8, 8))


def test_edge_planes_leave_out_the_volume_border():
    planes = edge_planes(Box((0, 8, 0), (16, 16, 30)), (20, 30, 30))
    assert planes == [Box((15, 8, 0), (1, 16, 30)), Box((0, 8, 0), (16, 1, 30)), Box((0, 23, 0), (16, 1, 30))]
    assert edge_planes(Box.from_shape((4, 5)), (4, 5)) == []


def test_parse_region():
    assert parse_region("2:5, :, -4:", (10, 20, 30)) == Box((2, 0, 26), (3, 20, 4))
    for bad in ("1:2,3:4", "a:b,1:2,1:2", "5:5,0:1,0:1", "0:1,0:1,40:50"):
        with pytest.raises(RegionError):
            parse_region(bad, (10, 20, 30))


@pytest.mark.parametrize("zoom", [(1.0, 0.5, 0.5), (1.0, 2.0, 3.0), (0.37, 1.6, 1.0)])
def test_zoomed_region_and_input_box_invert_the_nearest_mapping(zoom):
    shape = (23, 31, 17)
    zoomed = tuple(max(1, round(n * z)) for n, z in zip(shape, zoom, strict=True))
    region = Box((3, 5, 0), (9, 11, 17))
    grid = zoomed_region(region, zoom, zoomed)
    for axis, n in enumerate(shape):  # exactly the resampled voxels the region's voxels take labels from
        taken = nearest_indices(region.offset[axis], region.end[axis], zoom[axis], zoomed[axis])
        assert (grid.offset[axis], grid.end[axis]) == (taken.min(), taken.max() + 1)
        every = nearest_indices(0, n, zoom[axis], zoomed[axis])
        for box in (grid, Box((2, 3, 1), (4, 6, 3)), Box.from_shape(zoomed)):
            inv = input_box(box, zoom, shape, zoomed)
            inside = np.flatnonzero((every >= box.offset[axis]) & (every < box.end[axis]))
            if inside.size:
                assert (inv.offset[axis], inv.end[axis]) == (inside.min(), inside.max() + 1)


def _volume(shape=(24, 72, 72), seed=3):
    """Blobs of two intensity levels (the passthrough model's embeddings): merges and splits across faces."""
    rng = np.random.default_rng(seed)
    fg = ndimage.gaussian_filter(rng.random(shape), 2.0) > 0.52
    vol = fg.astype(np.float32) * np.where(rng.random(shape) > 0.5, 1.0, 0.8).astype(np.float32)
    return ndimage.maximum_filter(vol, 3) * fg


def check_region(full: np.ndarray, part: np.ndarray, result) -> tuple[int, int]:
    """Objects of the region run clear of the computed box's edge are exactly the full run's
    objects inside the box clear of its edge: same voxels, same partition. Returns (exact, edge) counts."""
    rec = read_record(result)
    box = rec.computed
    outside = np.ones(full.shape, bool)
    outside[box.to_slices()] = False
    assert not part[outside].any(), "a region run writes nothing outside its computed box"
    p, f = part[box.to_slices()], full[box.to_slices()]
    assert np.array_equal(np.sort(edge_ids(part, box, full.shape)), np.asarray(rec.edge, np.uint64))
    mine = exact_mask(p, rec.edge)
    cut = np.union1d(np.unique(full[outside]), edge_ids(full, box, full.shape))
    theirs = (f > 0) & ~np.isin(f, cut)
    assert np.array_equal(mine, theirs)
    assert same_partition(np.where(mine, p, 0), np.where(theirs, f, 0))
    return len(np.unique(p[mine])), len(rec.edge)


@pytest.mark.parametrize("method", ["connectivity", "agglomeration"])
def test_region_equals_the_full_run_clear_of_the_edge(tmp_path, method):
    vol = _volume((16, 64, 64))
    write_zarr(tmp_path / "in.zarr", vol, chunks=(8, 32, 32), name="raw")
    ckpt = passthrough_checkpoint(tmp_path / "pt.pt")

    def cfg(name):
        return {"input": {"path": str(tmp_path / "in.zarr"), "dataset": "raw"},
                "output": {"path": str(tmp_path / f"{name}.zarr")}, "model": {"checkpoint": str(ckpt)},
                "blocks": {"write_shape": [8, 16, 16]}, "cluster": {"kind": "serial"},
                "clustering": {"method": method, "min_size": 20}}

    full = open_array(segment(cfg("full")) / "segmentation")[...]
    for name, region in (("middle", Box((3, 20, 13), (8, 26, 30))), ("corner", Box((0, 40, 40), (16, 24, 24)))):
        out = segment(cfg(name), region=region)
        part = open_array(out / "segmentation")[...]
        exact, edge = check_region(full, part, out)
        assert exact >= 4 and edge >= 3, (exact, edge)  # the test sees both kinds of objects
        rec = read_record(out)
        assert rec.requested == region and rec.computed.contains(region)
        assert rec.blocks == len(covering_blocks(BlockPlan((16, 64, 64), (8, 16, 16), (0, 0, 0), (4, 4, 4)), region))
        table = read_objects(out)
        assert sorted(table["id"]) == sorted(np.unique(part[part > 0]))
        meta = dict(open_group(out, mode="r").attrs)["pipeline"]
        assert meta["label_image"] is None  # no label image of a region
    assert full.max() > 15


def test_region_with_input_diameter(tmp_path):
    """With input.diameter the region maps to the resampled grid and back; still exact clear of the edge."""
    vol = ndimage.zoom(_volume((12, 36, 36), seed=5), (1, 2, 2), order=0)  # objects twice as large in y, x
    write_zarr(tmp_path / "in.zarr", vol, chunks=(8, 24, 24), name="raw")
    ckpt = passthrough_checkpoint(tmp_path / "pt.pt")

    def cfg(name):
        return {"input": {"path": str(tmp_path / "in.zarr"), "dataset": "raw", "diameter": [10, 20, 20]},
                "output": {"path": str(tmp_path / f"{name}.zarr")},
                "model": {"checkpoint": str(ckpt), "diameter": [10, 10, 10]},
                "blocks": {"write_shape": [8, 16, 16]}, "cluster": {"kind": "serial"}}

    full = open_array(segment(cfg("full")) / "segmentation")[...]
    out = segment(cfg("part"), region=Box((2, 11, 19), (6, 30, 27)))
    exact, edge = check_region(full, open_array(out / "segmentation")[...], out)
    assert exact >= 3 and edge >= 2, (exact, edge)


def test_region_outside_the_volume_is_one_line(tmp_path):
    write_zarr(tmp_path / "in.zarr", np.zeros((8, 16, 16), np.float32), name="raw")
    cfg = {"input": {"path": str(tmp_path / "in.zarr"), "dataset": "raw"}, "output": {"path": str(tmp_path / "o.zarr")},
           "model": {"checkpoint": str(passthrough_checkpoint(tmp_path / "pt.pt"))}, "cluster": {"kind": "serial"}}
    with pytest.raises(RegionError, match="holds no voxel"):
        segment(cfg, region=Box((8, 0, 0), (2, 4, 4)))
    assert not (tmp_path / "o.zarr").exists()


def test_a_listener_follows_a_region_run_and_can_stop_it(tmp_path):
    """The viewer's progress bar and Cancel button: pipeline.runtime.progress.listening in this thread."""
    from pipeline.runtime.progress import listening

    write_zarr(tmp_path / "in.zarr", _volume((8, 32, 32)), name="raw")
    cfg = {"input": {"path": str(tmp_path / "in.zarr"), "dataset": "raw"}, "output": {"path": str(tmp_path / "o.zarr")},
           "model": {"checkpoint": str(passthrough_checkpoint(tmp_path / "pt.pt"))},
           "blocks": {"write_shape": [8, 16, 16]}, "cluster": {"kind": "serial"}}
    seen = []
    with listening(lambda desc, done, total: seen.append((desc, done, total))):
        segment(cfg, region=Box((0, 0, 0), (8, 10, 10)))
    assert ("fragments", 1, 1) in seen and seen[0] == ("fragments", 0, 1)

    class Stop(Exception):
        pass

    def stop(desc, done, total):
        if done:
            raise Stop

    with pytest.raises(Stop), listening(stop):
        segment({**cfg, "output": {"path": str(tmp_path / "stopped.zarr")}}, region=Box((0, 0, 0), (8, 32, 32)))
    assert not dict(open_group(tmp_path / "stopped.zarr", mode="r").attrs)["complete"]  # resumable, never "done"
