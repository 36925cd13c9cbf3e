"""The napari plugin's Qt-free parts (pipeline.napari.layers and its layer modules, .keep, .launch): run without napari."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from pipeline.config import ConfigError
from pipeline.geometry import Box
from pipeline.napari import keep, launch
from pipeline.napari.features import FEATURES_LIMIT, objects_features, sample_parts
from pipeline.napari.grid import Grid, rejected_points
from pipeline.napari.layers import result_layers
from pipeline.napari.result import result_of
from pipeline.run import segment
from pipeline.stages.objects import part_files, read_objects, table, write_part
from pipeline.volume.errors import OutputError
from pipeline.volume.io import open_array

from .helpers import passthrough_checkpoint
from .test_ome import VOXEL, _level_meta, ome_image


def by_name(layers):
    return {kw["name"]: (data, kw, kind) for data, kw, kind in layers}


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_image_with_our_labels_opens_as_image_labels_grid_and_features(tmp_path, version):
    src = ome_image(tmp_path / "img.zarr", version)
    cfg = {"input": {"path": str(src)}, "output": {"path": str(tmp_path / "o.zarr")},
           "model": {"checkpoint": str(passthrough_checkpoint(tmp_path / "pt.pt"))},
           "blocks": {"write_shape": [4, 8, 8]}, "cluster": {"kind": "serial"}}
    out = segment(cfg)
    # the image, its label image and the result group all open as the same result
    assert result_of(src) == out and result_of(src / "labels" / "segmentation") == out and result_of(out) == out
    assert result_of(tmp_path) is None and result_of(tmp_path / "pt.pt") is None
    layers = by_name(result_layers(out))
    image, labels, grid = layers["img"], layers["segmentation"], layers["block grid"]
    scale0, shift0 = _level_meta(0)
    assert image[2] == "image" and image[1]["multiscale"] and len(image[0]) == 3
    assert [tuple(a.shape) for a in image[0]] == [(8, 32, 48), (8, 16, 24), (8, 8, 12)]
    np.testing.assert_allclose(image[1]["scale"], scale0)
    np.testing.assert_allclose(image[1]["translate"], shift0)
    assert labels[2] == "labels" and len(labels[0]) == 3  # one label level per image level, same frame
    np.testing.assert_allclose(labels[1]["scale"], scale0)
    np.testing.assert_allclose(labels[1]["translate"], shift0)
    seg = open_array(out / "segmentation")[...]
    np.testing.assert_array_equal(np.asarray(labels[0][0]), seg)
    assert sorted(labels[1]["features"]["index"]) == list(range(1, int(seg.max()) + 1))
    # block borders at multiples of the write shape, in voxel units of the (y, x) plane, world-scaled
    ys = sorted({line[0][0] for line in grid[0] if line[0][0] == line[1][0]})
    assert ys == [-0.5, 7.5, 15.5, 23.5, 31.5]
    np.testing.assert_allclose(grid[1]["scale"], VOXEL[1:])


def test_labels_only_when_the_input_is_gone_and_seams_at_their_contacts(tmp_path):
    vol = np.zeros((8, 16, 16), np.float32)
    vol[2:6, 2:14, 5:11] = 1.0  # one object over two blocks (y)
    vol[2:6, 2:8, 5:11] = 0.6  # ... of two intensities: a pair the merge rejects on the y face
    from pipeline.volume.io import write_zarr

    write_zarr(tmp_path / "in.zarr", vol, name="raw")
    cfg = {"input": {"path": str(tmp_path / "in.zarr"), "dataset": "raw"}, "output": {"path": str(tmp_path / "o.zarr")},
           "model": {"checkpoint": str(passthrough_checkpoint(tmp_path / "pt.pt"))},
           "blocks": {"write_shape": [8, 8, 16]}, "cluster": {"kind": "serial"}, "clustering": {"method": "agglomeration"}}
    out = segment(cfg)
    layers = by_name(result_layers(out))
    points = layers["rejected seam pairs"]
    assert points[0].shape == (1, 3)
    np.testing.assert_allclose(points[0][0], [3.5, 7.5, 7.5])  # the contact centre, between y = 7 and 8
    assert points[1]["features"]["contact"][0] == 24
    import shutil

    shutil.rmtree(tmp_path / "in.zarr")
    layers = by_name(result_layers(out))
    assert set(layers) == {"segmentation", "block grid", "rejected seam pairs"}


def test_rejected_points_on_a_resampled_grid():
    grid = Grid((4, 8, 8), (2, 2, 2), (8, 16, 16), (1.0, 0.5, 0.5))
    record = {"accepted": np.array([False]), "face": np.array([0]), "face_block": np.array([0]),
              "face_axis": np.array([2]), "centre": np.array([[1.0, 3.0]]), "distance": np.array([2.0]),
              "min_distance": np.array([1.0]), "contact": np.array([5])}
    points, _ = rejected_points(record, grid)
    # resampled (1, 3, 7.5) -> input (z, (y + 0.5) / 0.5 - 0.5, ...)
    np.testing.assert_allclose(points[0], [1.0, 6.5, 15.5])


def test_sample_parts_reads_few_parts():
    assert sample_parts([10, 10, 10], 100) == [0, 1, 2]
    assert sample_parts([2**20] * 1000, 200_000) == [0]
    picked = sample_parts([100] * 10, 350)
    assert len(picked) == 4 and picked[0] == 0 and picked[-1] == 9


def fake_result(path, n: int, shape=(100, 200, 400)):
    """A result group of ``n`` objects of 2 x 2 x 2 voxels (segmentation, objects table, label pyramid,
    provenance), written with the project's own table and label-image code."""
    from pipeline.plan.labels import LabelTarget
    from pipeline.runtime.store import Store
    from pipeline.stages.labels import LabelsStage
    from pipeline.volume.ome import PyramidLevel, plan_levels

    grid = tuple(s // 2 for s in shape)
    assert np.prod(grid) >= n
    ids = np.arange(1, np.prod(grid) + 1, dtype=np.uint32).reshape(grid)
    ids[ids > n] = 0
    g = zarr.open_group(str(path), mode="w")
    seg = g.create_array("segmentation", shape=shape, chunks=(64, 64, 64), dtype="uint32")
    seg[...] = ids.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    centre = np.stack(np.unravel_index(np.arange(n), grid), 1) * 2
    stats = {"id": np.arange(1, n + 1), "count": np.full(n, 8), "lo": centre, "hi": centre + 2, "sum": (centre + 0.5) * 8}
    write_part(path / "objects" / "part-00000.parquet", table(stats, (1.0, 0.5, 0.5)))
    levels = plan_levels(PyramidLevel(shape, (1.0, 0.5, 0.5), (0.0, 0.0, 0.0)), None, 0, False)
    target = LabelTarget("standalone", path / "labels" / "segmentation", "segmentation", "0.5", tuple(levels),
                         tuple({"name": a, "type": "space"} for a in "zyx"), None)
    stage = LabelsStage(Store(str(path), "fake"), target, "uint32")
    from pipeline.runtime.engine import Engine

    stage.run(Engine())
    plan = {"write_shape": [64, 128, 128], "grid": [2, 2, 4], "volume_shape": list(shape), "zoom": None}
    g.attrs.update({"complete": True, "pipeline": {"config": {"input": {"path": str(path / "gone.zarr")}},
                                                    "plan": plan, "label_image": str(target.group), "objects": n}})
    return path


def test_a_million_objects_open_in_seconds(tmp_path):
    """The table is sampled to FEATURES_LIMIT rows, the arrays stay lazy: well under 10 s."""
    out = fake_result(tmp_path / "big.zarr", 10**6)
    t0 = time.process_time()  # CPU time: what the open costs, whatever else shares the machine
    layers = by_name(result_layers(out))
    seconds = time.process_time() - t0
    labels = layers["segmentation"]
    assert len(labels[1]["features"]["index"]) == FEATURES_LIMIT
    assert "a sample of 200,000 of 1,000,000 objects" in labels[1]["metadata"]["pipeline"]["features_note"]
    assert len(labels[0]) >= 2 and isinstance(labels[0][0], zarr.Array)
    assert seconds < 10, seconds
    features, note = objects_features(out, limit=2 * 10**6)
    assert len(features["index"]) == 10**6 and note == "objects table: all 1,000,000 objects"


def _edit_result(tmp_path):
    """A result whose standalone label image has two levels (x is longer than 256)."""
    from pipeline.volume.io import write_zarr

    vol = np.zeros((4, 16, 260), np.float32)
    vol[1:3, 2:14, 10:250:12] = 1.0  # thin walls: many objects along x
    vol[1:3, 2:14, 10:250:24] = 0.6
    write_zarr(tmp_path / "in.zarr", vol, name="raw")
    cfg = {"input": {"path": str(tmp_path / "in.zarr"), "dataset": "raw"}, "output": {"path": str(tmp_path / "o.zarr")},
           "model": {"checkpoint": str(passthrough_checkpoint(tmp_path / "pt.pt"))},
           "blocks": {"write_shape": [4, 16, 64]}, "cluster": {"kind": "serial"}}
    return segment(cfg)


def test_corrected_labels_become_a_new_label_image(tmp_path):
    out = _edit_result(tmp_path)
    source = out / "labels" / "segmentation"
    seg = open_array(out / "segmentation")[...]
    box = Box((0, 0, 100), (4, 16, 90))
    edited = seg[box.to_slices()].copy()
    gone = int(edited[edited > 0].min())
    edited[edited == gone] = 0  # erase one object
    edited[1:3, 2:5, 3:40] = 77  # paint a new one across others (a merge)
    group = keep.save_label_image(out, source, edited, box, "corrected")
    assert group == out / "labels" / "corrected"
    expected = seg.copy()
    expected[box.to_slices()] = edited
    level0 = open_array(group / "0")[...]
    np.testing.assert_array_equal(level0, expected)
    from pipeline.volume.ome import downsample_labels

    np.testing.assert_array_equal(open_array(group / "1")[...], downsample_labels(expected, (2, 2, 2)))
    np.testing.assert_array_equal(open_array(source / "0")[...], seg)  # the original is untouched
    labels = dict(zarr.open_group(str(out / "labels"), mode="r").attrs)["ome"]["labels"]
    assert labels == ["segmentation", "corrected"]
    meta = dict(zarr.open_group(str(group), mode="r").attrs)
    assert meta["ome"]["multiscales"][0]["datasets"] == \
        dict(zarr.open_group(str(source), mode="r").attrs)["ome"]["multiscales"][0]["datasets"]
    assert meta["pipeline"]["corrected_from"] == "segmentation"
    assert result_of(group) == out.resolve() or result_of(group) == out
    with pytest.raises(OutputError, match="already exists"):
        keep.save_label_image(out, source, edited, box, "corrected")
    with pytest.raises(OutputError, match="already exists"):
        keep.save_label_image(out, source, edited, box, "segmentation")
    keep.save_label_image(out, source, edited, box, "segmentation", overwrite=True)  # an explicit choice
    np.testing.assert_array_equal(open_array(source / "0")[...], expected)
    np.testing.assert_array_equal(open_array(out / "segmentation")[...], expected)  # one array: it changed too


def test_training_crops_read_back(tmp_path):
    before = np.zeros((4, 6, 6), np.uint32)
    before[:, :3] = 1
    before[:, 3:] = 2
    after = before.copy()
    after[:, 3:, 3:] = 3  # split object 2
    annotated = keep.annotated_mask(before, after)
    np.testing.assert_array_equal(annotated, np.broadcast_to((np.arange(6) >= 3)[None, :, None], (4, 6, 6)))
    assert keep.annotated_mask(before, before).sum() == 0 and keep.annotated_mask(before, before, True).all()
    image = np.arange(4 * 6 * 6, dtype=np.uint16).reshape(4, 6, 6)
    for _ in range(2):
        crop, spec = keep.save_crop(tmp_path / "crops", image, after, annotated, "demo", Box((1, 2, 3), (4, 6, 6)))
    assert crop.name == "crop-001.zarr"
    np.testing.assert_array_equal(open_array(crop / "image")[...], image)
    np.testing.assert_array_equal(open_array(crop / "labels")[...], after)
    ann = open_array(crop / "annotated")
    assert ann.dtype == np.uint8
    np.testing.assert_array_equal(ann[...], annotated)
    data = yaml.safe_load(spec.read_text())
    first = str((tmp_path / "crops" / "crop-000.zarr").resolve())
    assert data["init"] == "demo" and [Path(d["image"]).name for d in data["data"]] == ["crop-000.zarr", "crop-001.zarr"]
    assert data["data"][0] == {"image": first, "image_dataset": "image", "labels": first,
                               "labels_dataset": "labels", "annotated": first, "annotated_dataset": "annotated"}
    # what the viewer saved is a training set: `pipeline train` fine-tunes on it (one iteration here)
    from pipeline.network.checkpoint import open_checkpoint
    from pipeline.train import load_train_config, train

    cfg = load_train_config(spec, ("iterations=1", "val_every=1", f"out={tmp_path / 'ft.pt'}"))
    assert all(d.annotated is not None for d in cfg.data)
    info = open_checkpoint(train(cfg)).info
    assert info.fine_tuned_from == "demo" and info.foreground_target == "interior"
    with pytest.raises(OutputError, match="crop shapes differ"):
        keep.save_crop(tmp_path / "crops", image, after[:2], annotated, "demo")


def test_run_records_progress_and_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_RUNS", str(tmp_path / "runs"))
    text = ("2026-01-01 INFO pipeline.progress: fragments: 3/8 blocks (38%), 1.00 blocks/s\n"
            "2026-01-01 INFO pipeline.progress: merge: 2/2 tasks (100%), 9.00 tasks/s\n"
            "error: input.path: 'x.zarr' does not exist (give an existing zarr, OME-Zarr, TIFF or HDF5 path)\n")
    assert launch.last_progress(text) == ("merge", 2, 2)
    assert launch.error_line(text).startswith("error: input.path: 'x.zarr' does not exist")
    with pytest.raises(ConfigError):
        launch.write_config({"input": {"path": "x"}, "output": {"path": "o"}, "clustering": {"mthod": 1}},
                            tmp_path / "bad.yaml")
    assert not (tmp_path / "bad.yaml").exists()
    cfg = launch.write_config({"input": {"path": str(tmp_path / "missing.zarr")}, "output": {"path": str(tmp_path / "o.zarr")},
                               "cluster": {"kind": "serial"}}, tmp_path / "run.yaml")
    assert cfg.cluster.kind == "serial"
    run = launch.launch(tmp_path / "run.yaml", tmp_path / "o.zarr")
    assert launch.known_runs()[0].pid == run.pid
    deadline = time.time() + 120
    while run.alive() and time.time() < deadline:
        launch.reap()
        time.sleep(0.2)
    status = run.status()
    assert status.state == "failed", status
    assert status.error.startswith("error: input.path:") and "missing.zarr" in status.error
    assert launch.running() == []


def test_read_objects_of_the_fake_result_matches_the_table(tmp_path):
    out = fake_result(tmp_path / "small.zarr", 50, shape=(4, 10, 40))
    rows = read_objects(out, part_files(out))
    assert len(rows["id"]) == 50 and rows["voxels"].sum() == 400
