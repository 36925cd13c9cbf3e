"""Time-lapses (input.timepoints): every time point segmented on its own into one (t, z, y, x) label
image, equal to runs of each time point alone; resumed at the time point a killed run stopped in; the
time points of every format that has them read right; the stacks hard-linked, not copied."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr
from pydantic import ValidationError

from pipeline.cli import main
from pipeline.config import InputConfig
from pipeline.errors import UsageError
from pipeline.geometry import Box
from pipeline.run import predict, segment
from pipeline.runtime.stack import same_layout
from pipeline.stages.objects import read_objects
from pipeline.volume import synthetic
from pipeline.volume.io import open_array, open_input, write_zarr

from .helpers import KILL_CLIENT

SHAPE = (32, 96, 96)
BLOCKS = {"write_shape": [16, 48, 48]}
SERIAL = {"kind": "serial"}


def frames(n: int = 3) -> np.ndarray:
    """``n`` different synthetic nuclei volumes, (t, z, y, x)."""
    return np.stack([synthetic.generate(synthetic.appearance("demo", shape=SHAPE), seed=10 + t)[0] for t in range(n)])


@pytest.fixture(scope="module")
def movie(tmp_path_factory):
    root = tmp_path_factory.mktemp("timelapse")
    data = frames()
    write_zarr(root / "in.zarr", data, chunks=(1, 16, 48, 48), name="raw", dims="tzyx")
    return root, data


def config(root: Path, name: str, **inp) -> dict:
    return {"input": {"path": str(root / "in.zarr"), "dataset": "raw", **inp}, "output": {"path": str(root / name)},
            "blocks": BLOCKS, "cluster": SERIAL}


@pytest.fixture(scope="module")
def whole(movie):
    root, _ = movie
    return segment(config(root, "whole.zarr"))


def test_each_time_point_equals_a_run_of_it_alone(movie, whole):
    root, _ = movie
    seg = open_array(whole / "segmentation", mode="r")
    assert seg.shape == (3, *SHAPE) and seg.chunks == (1, 16, 48, 48)
    table = read_objects(whole)
    meta = zarr.open_group(str(whole), mode="r").attrs["pipeline"]
    assert meta["timepoints"] == [0, 1, 2] and meta["stacked"] == ["linked"]
    for t in range(3):
        alone = segment(config(root, f"alone{t}.zarr", timepoint=t))
        ref = open_array(alone / "segmentation", mode="r")[...]
        assert ref.max() > 20  # nuclei were found
        np.testing.assert_array_equal(seg[t], ref)  # ids unique per time point: the run's own
        mine, theirs = {k: v[table["t"] == t] for k, v in table.items()}, read_objects(alone)
        assert set(mine) == {"t", "timepoint", *theirs}
        for key in theirs:
            np.testing.assert_array_equal(mine[key], theirs[key])
        assert (mine["timepoint"] == t).all()
    assert meta["objects_per_timepoint"] == [int((table["t"] == t).sum()) for t in range(3)]
    csv = (whole / "objects.csv").read_text().splitlines()
    assert csv[0].startswith("t,timepoint,id,") and len(csv) == len(table["id"]) + 1


def test_the_label_image_is_ngff_with_time_first_and_takes_no_space_twice(whole):
    group = whole / "labels" / "segmentation"
    from ome_zarr_models.v05 import ImageLabel

    label = ImageLabel.from_zarr(zarr.open_group(str(group), mode="r"))
    axes = label.attributes.ome.multiscales[0].axes
    assert [(a.name, a.type) for a in axes] == [("t", "time"), ("z", "space"), ("y", "space"), ("x", "space")]
    assert (whole / "segmentation").is_symlink() and (whole / "segmentation").resolve() == (group / "0").resolve()
    level = zarr.open_array(str(group / "0"), mode="r")
    frame = zarr.open_array(str((whole / "timepoints" / "t00001" / "segmentation").resolve()), mode="r")
    assert same_layout(frame, level)
    chunk = next(p for p in (group / "0" / "c" / "1").rglob("*") if p.is_file())
    twin = (whole / "timepoints" / "t00001" / "segmentation").resolve() / "c" / chunk.relative_to(group / "0" / "c" / "1")
    assert os.stat(chunk).st_ino == os.stat(twin).st_ino  # the same file: hard-linked
    from ome_zarr.io import parse_url  # napari-ome-zarr's reader sees a 4D label image
    from ome_zarr.reader import Reader

    nodes = list(Reader(parse_url(str(group)))())
    assert nodes[0].data[0].shape == (3, *SHAPE)


def test_a_selection_of_time_points_and_a_copy_when_layouts_differ(movie, whole, tmp_path, monkeypatch):
    root, _ = movie
    import pipeline.runtime.stack as stack

    monkeypatch.setattr(stack, "same_layout", lambda *_: False)  # as for a zarr v2 stack: decoded and encoded
    out = segment({**config(root, "sel.zarr", timepoints="1..2"), "output": {"path": str(tmp_path / "sel.zarr"),
                                                                              "labels": "none"}})
    seg = open_array(out / "segmentation", mode="r")
    assert seg.shape == (2, *SHAPE) and not (out / "segmentation").is_symlink()
    ref = open_array(whole / "segmentation", mode="r")
    np.testing.assert_array_equal(seg[...], ref[1:3])
    meta = zarr.open_group(str(out), mode="r").attrs["pipeline"]
    assert meta["timepoints"] == [1, 2] and meta["stacked"] == ["recoded"]
    assert sorted(set(read_objects(out)["timepoint"].tolist())) == [1, 2]


def test_a_killed_run_resumes_in_the_time_point_it_stopped_in(movie, whole, tmp_path):
    root, _ = movie
    cfg = config(root, "x", timepoints="all")
    cfg["output"]["path"] = str(tmp_path / "killed.zarr")
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(cfg))
    # killed after time point 1's objects (its second 'objects' task): before its label image and stacking
    (tmp_path / "kill.py").write_text(KILL_CLIENT)
    proc = subprocess.run([sys.executable, str(tmp_path / "kill.py"), "objects", "2", "-q", "run", str(path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]
    first = tmp_path / "killed.zarr" / "timepoints" / "t00000"
    stamp = os.stat(first / "zarr.json").st_mtime_ns
    assert zarr.open_group(str(first), mode="r").attrs["complete"]
    assert not zarr.open_group(str(tmp_path / "killed.zarr" / "timepoints" / "t00001"), mode="r").attrs["complete"]
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(path)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "time point 0 (input 0): done in an earlier run" in proc.stderr
    assert os.stat(first / "zarr.json").st_mtime_ns == stamp  # not run again
    out = tmp_path / "killed.zarr"
    np.testing.assert_array_equal(open_array(out / "segmentation", mode="r")[...],
                                  open_array(whole / "segmentation", mode="r")[...])
    a, b = read_objects(out), read_objects(whole)
    for key in b:
        np.testing.assert_array_equal(a[key], b[key])


def test_selection_errors_are_one_line_and_plan_shows_the_time_points(movie, tmp_path, capsys):
    root, _ = movie
    assert InputConfig(path=root, timepoints="1..").selected(3) == [1, 2]
    assert InputConfig(path=root, timepoints=[2, 0]).selected(3) == [0, 2]
    assert InputConfig(path=root, timepoints="..1").selected(5) == [0, 1]
    for bad in ({"timepoints": "1:3"}, {"timepoints": [1, 1]}, {"timepoint": 1, "timepoints": [0]}):
        with pytest.raises(ValidationError, match="input.time"):
            InputConfig(path=root, **bad)
    messages = []
    for cfg in ({"timepoints": [0, 5]}, {"timepoint": 3}):
        with pytest.raises(UsageError) as info:
            segment({**config(root, "never.zarr", **cfg), "output": {"path": str(tmp_path / "never.zarr")}})
        messages.append(str(info.value))
    assert "input.timepoints [5] out of range: the input has 3 time point(s) (0..2)" in messages[0]
    assert "input.timepoint 3 is out of range" in messages[1] and all(len(m.splitlines()) == 1 for m in messages)
    with pytest.raises(UsageError, match="has 3 time points; `pipeline run` segments each of them"):
        predict({**config(root, "p.zarr"), "output": {"path": str(tmp_path / "p.zarr")}})
    with pytest.raises(UsageError, match="a region run reads one time point"):
        segment({**config(root, "r.zarr"), "output": {"path": str(tmp_path / "r.zarr")}}, region=Box((0, 0, 0), (8, 8, 8)))
    assert not any(tmp_path.glob("*.zarr"))  # nothing written
    assert main(["plan", "--set", f"input.path={root / 'in.zarr'}", "--set", "input.dataset=raw", "--set",
                 f"output.path={tmp_path / 'plan.zarr'}", "--set", "input.timepoints=1..2"]) == 0
    out = capsys.readouterr().out
    assert "timepoints" in out and "2 (1..2), each segmented on its own" in out and "axes tzyx" in out


# ------------------------------------------------------------------ every format with time points


def _tiff(path: Path, data: np.ndarray) -> dict:
    import tifffile

    tifffile.imwrite(path / "m.tif", data, imagej=True, metadata={"axes": "TZYX"})
    return {"path": str(path / "m.tif")}


def _ome(path: Path, data: np.ndarray) -> dict:
    group = zarr.open_group(str(path / "m.ome.zarr"), mode="w")
    group.create_array("0", data=data, chunks=(1, 8, 32, 32), dimension_names=("t", "z", "y", "x"))
    axes = [{"name": "t", "type": "time", "unit": "second"}] + [{"name": a, "type": "space", "unit": "micrometer"}
                                                               for a in "zyx"]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [30.0, 2.0, 0.5, 0.5]}]}]}]}
    return {"path": str(path / "m.ome.zarr")}


def _imaris(path: Path, data: np.ndarray) -> dict:
    from .test_imaris import write_ims

    write_ims(path / "m.ims", [[data[0]]], times=len(data), compression=["gzip"])
    with h5py.File(path / "m.ims", "r+") as f:
        for t in range(len(data)):
            f[f"DataSet/ResolutionLevel 0/TimePoint {t}/Channel 0/Data"][:data.shape[1], :data.shape[2], :data.shape[3]] = data[t]
    return {"path": str(path / "m.ims")}


def _bdv(path: Path, data: np.ndarray) -> dict:
    with h5py.File(path / "m.h5", "w") as f:
        f["s00/resolutions"] = np.array([[1, 1, 1]], float)
        f["s00/subdivisions"] = np.array([[16, 16, 8]])
        for t in range(len(data)):
            f.create_dataset(f"t{t:05d}/s00/0/cells", data=data[t].view(np.int16), chunks=(8, 16, 16))
    return {"path": str(path / "m.h5")}


def _n5(path: Path, data: np.ndarray) -> dict:
    from .test_n5 import _add_attrs, write_n5

    for t in range(len(data)):
        write_n5(path / "m.n5" / "setup0" / f"timepoint{t}" / "s0", data[t], (8, 32, 32), "gzip",
                 downsamplingFactors=[1, 1, 1])
        _add_attrs(path / "m.n5" / "setup0" / f"timepoint{t}", resolution=[0.5, 0.5, 2.0], unit="um", multiScale=True)
    return {"path": str(path / "m.n5"), "dataset": "setup0"}


def _czi(path: Path, data: np.ndarray) -> dict:
    czi = pytest.importorskip("pylibCZIrw.czi", reason="CZI needs the optional extra 'czi' (pylibCZIrw)")
    with czi.create_czi(str(path / "m.czi"), exist_ok=True) as w:
        for t in range(len(data)):
            for z in range(data.shape[1]):
                w.write(np.ascontiguousarray(data[t, z])[..., None], plane={"C": 0, "Z": z, "T": t})
    return {"path": str(path / "m.czi")}


@pytest.mark.parametrize("write", [_tiff, _ome, _imaris, _bdv, _n5, _czi], ids=lambda f: f.__name__.strip("_"))
def test_every_format_reads_each_time_point(tmp_path, write):
    data = (np.arange(3)[:, None, None, None] * 1000 + frames(3)[:, :8, :40, :48] // 4).astype(np.uint16)
    inp = write(tmp_path, data)
    for t in range(3):
        vol = open_input(InputConfig(**inp, timepoint=t))
        assert vol.timepoints == 3 and vol.shape == data.shape[1:]
        np.testing.assert_array_equal(vol.read(Box((0, 0, 0), data.shape[1:]))[0], data[t])
    with pytest.raises(UsageError, match="3 time points"):
        open_input(InputConfig(**inp))
    with pytest.raises(UsageError, match="input.timepoint 3 is out of range"):
        open_input(InputConfig(**inp, timepoint=3))


def test_an_ome_zarr_time_lapse_gets_its_label_image_under_the_image(tmp_path):
    data = frames(2)[:, :16, :64, :64]
    inp = _ome(tmp_path, data)
    out = segment({"input": inp, "output": {"path": str(tmp_path / "out.zarr")}, "blocks": {"write_shape": [16, 32, 32]},
                   "cluster": SERIAL})
    group = Path(inp["path"]) / "labels" / "segmentation"
    from ome_zarr_models.v05 import ImageLabel

    ms = ImageLabel.from_zarr(zarr.open_group(str(group), mode="r")).attributes.ome.multiscales[0]
    assert ms.axes[0].name == "t" and ms.axes[0].unit == "second"
    assert ms.datasets[0].coordinateTransformations[0].scale == [30.0, 2.0, 0.5, 0.5]
    assert zarr.open_array(str(group / "0"), mode="r").shape == (2, 16, 64, 64)
    assert (out / "segmentation").resolve() == (group / "0").resolve()
    from pipeline.napari.layers import result_layers

    layers = {kw["name"]: (data, kw) for data, kw, _ in result_layers(out)}
    image, labels = layers["m.ome"], layers["segmentation"]
    assert image[0].shape == labels[0].shape == (2, 16, 64, 64)
    assert image[1]["scale"] == labels[1]["scale"] == [30.0, 2.0, 0.5, 0.5]
    assert labels[1]["axis_labels"] == ("t", "z", "y", "x")


def test_verify_names_damage_in_time_points_and_stacks_and_repair_puts_it_back(movie, whole, tmp_path, capsys):
    root, _ = movie
    cfg = config(root, "x")
    cfg["output"]["path"] = str(tmp_path / "damaged.zarr")
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(cfg))
    out = segment(cfg)
    ref = open_array(whole / "segmentation", mode="r")[...]
    # a time point's label chunk cut short in place (the stack's file is the same file: both read short),
    # a stacked file lost alone, a part of the objects table lost
    level = out / "timepoints" / "t00001" / "labels" / "segmentation" / "0" / "c"
    cut = max((p for p in level.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    with open(cut, "r+b") as f:
        f.truncate(cut.stat().st_size // 2)
    lost = next(p for p in sorted((out / "labels" / "segmentation" / "0" / "c" / "2").rglob("*")) if p.is_file())
    lost.unlink()
    (out / "objects" / "part-00000-00000.parquet").unlink()
    assert main(["-q", "verify", str(path), "--integrity"]) == 1
    said = capsys.readouterr().out
    stacked_cut = out / "labels" / "segmentation" / "0" / "c" / "1" / cut.relative_to(level)
    for name in (cut.relative_to(out), stacked_cut.relative_to(out), lost.relative_to(out), "objects/part-00000-00000.parquet"):
        assert str(name) in said, (name, said)
    assert main(["-q", "run", str(path), "--repair"]) == 0
    np.testing.assert_array_equal(open_array(out / "segmentation", mode="r")[...], ref)
    assert main(["-q", "verify", str(path), "--integrity"]) == 0
    assert "all as written" in capsys.readouterr().out
    a, b = read_objects(out), read_objects(whole)
    for key in b:
        np.testing.assert_array_equal(a[key], b[key])


def test_one_cluster_serves_every_time_point_and_dask_equals_serial(movie, whole, tmp_path, caplog):
    import logging

    root, _ = movie
    cfg = config(root, "x")
    cfg["output"]["path"], cfg["cluster"] = str(tmp_path / "dask.zarr"), {"kind": "local", "n_workers": 2}
    with caplog.at_level(logging.INFO, logger="pipeline"):
        out = segment(cfg)
    started = [r for r in caplog.records if "dashboard" in r.getMessage().lower()]
    assert len(started) == 1, [r.getMessage() for r in started]  # one cluster, three time points
    np.testing.assert_array_equal(open_array(out / "segmentation", mode="r")[...],
                                  open_array(whole / "segmentation", mode="r")[...])


def test_a_mask_per_time_point_and_the_report(movie, whole, tmp_path):
    root, _ = movie
    mask = np.ones((3, *SHAPE), np.uint8)
    mask[1] = 0  # time point 1: nothing to segment
    write_zarr(tmp_path / "mask.zarr", mask, chunks=(1, 16, 48, 48), dims="tzyx")
    cfg = config(root, "x")
    cfg["output"]["path"], cfg["empty"] = str(tmp_path / "masked.zarr"), {"mask": {"path": str(tmp_path / "mask.zarr")}}
    out = segment(cfg)
    seg, ref = open_array(out / "segmentation", mode="r")[...], open_array(whole / "segmentation", mode="r")[...]
    assert not seg[1].any()
    np.testing.assert_array_equal(seg[[0, 2]], ref[[0, 2]])
    assert main(["-q", "report", str(whole), "--out", str(tmp_path / "rep"), "--no-seams"]) == 0
    page = (tmp_path / "rep" / "index.html").read_text()
    assert page.count("<tr><td>") == 3 and page.count("report</a>") == 3
    assert all((tmp_path / "rep" / f"t{t:05d}" / "index.html").exists() for t in range(3))
    from pipeline.qc.timelapse_report import reported_timepoints

    assert reported_timepoints(100) == [0, 20, 40, 59, 79, 99] and reported_timepoints(2) == [0, 1]


def test_tracker_maps_equal_find_boundaries_and_are_checked(movie, whole, tmp_path):
    from skimage.segmentation import find_boundaries

    from pipeline.stages.tracker import inner_boundaries

    rng = np.random.default_rng(0)
    small = rng.integers(0, 4, (6, 7, 8))
    np.testing.assert_array_equal(inner_boundaries(small), find_boundaries(small, connectivity=1, mode="inner"))
    root, _ = movie
    cfg = config(root, "x")
    cfg["output"] = {"path": str(tmp_path / "maps.zarr"), "tracker_maps": True}
    path = tmp_path / "maps.yaml"
    path.write_text(json.dumps(cfg))
    assert main(["-q", "run", str(path)]) == 0
    out = tmp_path / "maps.zarr"
    seg = open_array(whole / "segmentation", mode="r")[...]
    fg, edges = (open_array(out / n, mode="r") for n in ("foreground", "contours"))
    assert fg.shape == edges.shape == seg.shape and fg.chunks == (1, 16, 48, 48) and fg.dtype == np.uint8
    for t in range(3):
        np.testing.assert_array_equal(fg[t], seg[t] > 0)
        np.testing.assert_array_equal(edges[t], find_boundaries(seg[t], connectivity=1, mode="inner"))
    victim = next(p for p in sorted((out / "contours" / "c" / "1").rglob("*")) if p.is_file())
    victim.write_bytes(b"\0" * 3)
    assert main(["-q", "verify", str(path), "--integrity"]) == 1
    assert main(["-q", "run", str(path), "--repair"]) == 0
    np.testing.assert_array_equal(open_array(out / "contours", mode="r")[1], find_boundaries(seg[1], connectivity=1, mode="inner"))
    with pytest.raises(UsageError, match="output.tracker_maps is written for time-lapses"):
        segment({**config(root, "one.zarr", timepoint=0), "output": {"path": str(tmp_path / "one.zarr"), "tracker_maps": True}})


def test_evaluate_scores_each_time_point_and_pools_them_without_crossing(whole, tmp_path, capsys):
    from pipeline.qc.metrics import contingency, scores

    gt = np.stack([synthetic.generate(synthetic.appearance("demo", shape=SHAPE), seed=10 + t)[1] for t in range(3)])
    write_zarr(tmp_path / "gt.zarr", gt.astype(np.uint32), chunks=(1, 16, 48, 48), dims="tzyx")
    assert main(["-q", "evaluate", "--pred", str(whole), "--gt", str(tmp_path / "gt.zarr"), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    seg = open_array(whole / "segmentation", mode="r")[...]
    per = [scores(contingency(seg[t], gt[t])).at(0.5) for t in range(3)]
    assert [r["ap50"] for r in found["per_timepoint"]] == [p["ap"] for p in per]
    pooled = next(r for r in found["per_threshold"] if abs(r["threshold"] - 0.5) < 1e-9)
    for key in ("tp", "fp", "fn"):  # a match never crosses time points: the pooled counts are the sums
        assert pooled[key] == sum(p[key] for p in per)
    assert found["n_gt"] == sum(len(np.unique(g)) - 1 for g in gt) and pooled["ap"] > 0.8


def test_a_movie_that_clearly_does_not_fit_is_refused_before_it_starts(movie, tmp_path, monkeypatch):
    import pipeline.plan.space as space
    from pipeline.plan.labels import label_target
    from pipeline.plan.prepare import prepare

    root, _ = movie
    one = prepare({**config(root, "x", timepoint=0), "output": {"path": str(tmp_path / "m.zarr" / "timepoints" / "t00000")}})
    need = space.estimate(one, label_target(one))
    free = int(space.CLEARLY * need.peak) + 1  # one time point is not clearly refused; three are
    assert free < space.CLEARLY * need.over_time(3).peak and need.over_time(3).final == 3 * need.final
    monkeypatch.setattr(space, "free_bytes", lambda _: free)
    with pytest.raises(UsageError, match="this run needs about"):
        segment({**config(root, "x"), "output": {"path": str(tmp_path / "m.zarr")}})
    assert not (tmp_path / "m.zarr" / "timepoints").exists()  # nothing ran


def test_a_time_point_of_wider_labels_widens_the_stack(tmp_path):
    """A time point whose labels need uint64 (more than 2**32 - 1 objects) after uint32 ones: the stack
    is rewritten in uint64, the earlier time points kept, the new one put in (linked: same layout now)."""
    from pipeline.runtime.stack import create_stack, put_timepoint
    from pipeline.volume.io import create_array, open_group

    rng = np.random.default_rng(0)
    group = open_group(tmp_path / "frames.zarr", mode="w")
    narrow = create_array(group, "t0", (6, 8, 8), (3, 4, 4), "uint32")
    first = rng.integers(0, 5, (6, 8, 8)).astype(np.uint32)
    narrow[...] = first
    wide = create_array(group, "t1", (6, 8, 8), (3, 4, 4), "uint64")
    second = rng.integers(0, 5, (6, 8, 8)).astype(np.uint64) * (2**40)
    wide[...] = second
    open_group(tmp_path / "out.zarr", mode="w")
    stack = create_stack(tmp_path / "out.zarr", "stack", narrow, 2)
    assert str(stack.dtype) == "uint32"
    assert put_timepoint(tmp_path / "frames.zarr" / "t0", tmp_path / "out.zarr" / "stack", 0) == "linked"
    assert put_timepoint(tmp_path / "frames.zarr" / "t1", tmp_path / "out.zarr" / "stack", 1) == "linked"
    out = zarr.open_array(str(tmp_path / "out.zarr" / "stack"), mode="r")
    assert str(out.dtype) == "uint64" and out.metadata.dimension_names == ("t", "z", "y", "x")
    np.testing.assert_array_equal(out[0], first)
    np.testing.assert_array_equal(out[1], second)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "frames.zarr" / "t0"), mode="r")[...], first)
    assert sorted(p.name for p in (tmp_path / "out.zarr").iterdir()) == ["stack", "zarr.json"]
