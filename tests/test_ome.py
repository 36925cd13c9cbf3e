"""OME-Zarr label images: under the input image (NGFF 0.4 and 0.5) or standalone in the output,
valid for ome-zarr-models, found by ome-zarr-py's reader the way napari-ome-zarr finds them,
with the input's levels, axes, scales and translations; the resampling and level planning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.run import segment
from pipeline.stages.labels import LabelsStage
from pipeline.volume.errors import OutputError
from pipeline.volume.io import open_array, open_group, write_zarr
from pipeline.volume.ome import (
    PyramidLevel,
    coarser,
    downsample_labels,
    downsample_labels_reference,
    halving_factors,
    level_factors,
    plan_levels,
    upsample_labels,
)
from pipeline.volume.ome_metadata import relative_source

from .helpers import passthrough_checkpoint

SHAPE = (8, 32, 48)  # z, y, x of level 0
VOXEL = (2.0, 0.5, 0.5)  # z coarse: the pyramid halves y and x only
LEVELS = 3
UNITS = ("micrometer", "micrometer", "micrometer")


def _volume() -> np.ndarray:
    """Four boxes of foreground (the pass-through model: each box one object)."""
    vol = np.zeros(SHAPE, np.float32)
    vol[1:5, 2:12, 3:15] = 1
    vol[2:7, 16:30, 20:40] = 1
    vol[0:3, 20:28, 2:10] = 1
    vol[5:8, 2:9, 30:46] = 1
    return vol


def _level_meta(k: int, translation0=(1.0, -3.0, 4.0)) -> tuple[list[float], list[float]]:
    """Scale and translation of level ``k`` (pixel-centre convention, y and x halved)."""
    scale = [VOXEL[0], VOXEL[1] * 2**k, VOXEL[2] * 2**k]
    shift = [translation0[0], translation0[1] + (2**k - 1) / 2 * VOXEL[1], translation0[2] + (2**k - 1) / 2 * VOXEL[2]]
    return scale, shift


def ome_image(path, version: str, channel: bool = False, labels: dict | None = None):
    """A multi-level, anisotropic OME-Zarr image with translations and units (level k halves y, x)."""
    fmt = 2 if version == "0.4" else 3
    g = zarr.open_group(str(path), mode="w", zarr_format=fmt)
    vol = _volume()
    axes = ([{"name": "c", "type": "channel"}] if channel else []) + [
        {"name": a, "type": "space", "unit": u} for a, u in zip("zyx", UNITS)]
    datasets = []
    for k in range(LEVELS):
        f = 2**k
        level = vol.reshape(SHAPE[0], SHAPE[1] // f, f, SHAPE[2] // f, f).mean(axis=(2, 4))
        data = level[None] if channel else level
        dims = {"dimension_names": [a["name"] for a in axes]} if fmt == 3 else {
            "chunk_key_encoding": {"name": "v2", "separator": "/"}}
        g.create_array(str(k), data=data, chunks=(1, 4, 16, 16) if channel else (4, 16, 16), **dims)
        scale, shift = _level_meta(k)
        datasets.append({"path": str(k), "coordinateTransformations": [
            {"type": "scale", "scale": ([1.0] if channel else []) + scale},
            {"type": "translation", "translation": ([0.0] if channel else []) + shift}]})
    ms = {"axes": axes, "datasets": datasets, "name": "img"}
    if version == "0.4":
        g.attrs["multiscales"] = [{"version": "0.4", **ms}]
    else:
        g.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}
    if labels:  # an existing label image, e.g. from another tool
        lg = zarr.open_group(str(path / "labels"), mode="w", zarr_format=fmt)
        lg.attrs.update({"labels": list(labels)} if fmt == 2 else {"ome": {"version": "0.5", "labels": list(labels)}})
        for name in labels:
            other = lg.create_group(name)
            for d in datasets:
                other.create_array(d["path"], shape=g[d["path"]].shape, dtype="uint8", **dims)
            label = {"image-label": {"source": {"image": "../../"}}, "multiscales": [{**ms, "name": name}]}
            other.attrs.update({"multiscales": [{"version": "0.4", **ms, "name": name}], "image-label": label["image-label"]}
                               if fmt == 2 else {"ome": {"version": "0.5", **label}})
    return path


def _run(tmp_path, src, dataset=None, name="o", scale_level=0, cluster="serial", **output):
    cfg = {"input": {"path": str(src), "scale_level": scale_level, **({"dataset": dataset} if dataset else {})},
           "output": {"path": str(tmp_path / f"{name}.zarr"), **output},
           "model": {"checkpoint": str(passthrough_checkpoint(tmp_path / "pt.pt"))},
           "blocks": {"write_shape": [4, 8, 8]},
           "cluster": {"kind": "serial"} if cluster == "serial" else {"kind": "local", "n_workers": 2}}
    return segment(cfg), cfg


def _attrs(group_path, version):
    attrs = dict(zarr.open_group(str(group_path), mode="r").attrs)
    return attrs if version == "0.4" else attrs["ome"]


def _validate(image, label, version):
    """ome-zarr-models: the image with its labels, the labels group, the label image."""
    if version == "0.4":
        from ome_zarr_models.v04 import Image, ImageLabel, Labels
    else:
        from ome_zarr_models.v05 import Image, ImageLabel, Labels
    ImageLabel.from_zarr(zarr.open_group(str(label), mode="r"))
    Labels.from_zarr(zarr.open_group(str(label.parent), mode="r"))
    if image is not None:
        img = Image.from_zarr(zarr.open_group(str(image), mode="r"))
        assert img.labels is not None and label.name in img.labels.attributes.ome.labels \
            if version == "0.5" else True


def _reader_labels(path):
    """The label nodes napari-ome-zarr gets from ome-zarr-py's reader, opening ``path``."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    return [n for n in Reader(parse_url(str(path)))() if n.load(Label) is not None]


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_label_image_under_the_input_image(tmp_path, version):
    img = ome_image(tmp_path / "img.zarr", version, labels={"cells": None})
    out, _ = _run(tmp_path, img)
    seg = open_array(out / "segmentation")[...]
    assert seg.max() == 4
    label = img / "labels" / "segmentation"
    _validate(img, label, version)
    meta = _attrs(label, version)
    ms = meta["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"] and [a["unit"] for a in ms["axes"]] == list(UNITS)
    assert meta["image-label"]["source"]["image"] == "../../" and meta["image-label"]["version"] == version
    assert _attrs(img / "labels", version)["labels"] == ["cells", "segmentation"]  # existing entry kept
    assert len(ms["datasets"]) == LEVELS
    for k, d in enumerate(ms["datasets"]):
        scale, shift = _level_meta(k)
        assert d["coordinateTransformations"] == [{"type": "scale", "scale": scale},
                                                  {"type": "translation", "translation": shift}]
    levels = [open_array(label / str(k))[...] for k in range(LEVELS)]
    assert np.array_equal(levels[0], seg) and levels[0].dtype == seg.dtype
    for k in range(1, LEVELS):
        assert np.array_equal(levels[k], downsample_labels(levels[k - 1], (1, 2, 2)))
        assert levels[k].shape == open_array(img / str(k)).shape
    if version == "0.5":
        assert open_array(label / "0").metadata.dimension_names == ("z", "y", "x")
        for name in ("segmentation", "empty_blocks"):  # every zarr v3 array of the output names its axes
            assert open_array(out / name).metadata.dimension_names == ("z", "y", "x")
    else:
        assert (label / "0" / ".zarray").exists() and (label / ".zattrs").exists()
    # napari-ome-zarr opens the image and finds the label image through labels/
    nodes = _reader_labels(img)
    assert [n.metadata["name"] for n in nodes] == ["cells", "segmentation"]
    assert np.array_equal(np.asarray(nodes[1].data[0]), seg) and len(nodes[1].data) == LEVELS
    assert open_group(out).attrs["pipeline"]["label_image"] == str(label)


def test_scale_level_1_keeps_the_level_translation_and_every_image_level(tmp_path):
    img = ome_image(tmp_path / "img.zarr", "0.5", channel=True)
    out, _ = _run(tmp_path, img, scale_level=1)
    seg = open_array(out / "segmentation")[...]
    assert seg.shape == (8, 16, 24)
    label = img / "labels" / "segmentation"
    _validate(img, label, "0.5")
    ms = _attrs(label, "0.5")["multiscales"][0]
    assert len(ms["datasets"]) == LEVELS  # as many as the image (NGFF MUST), level 1 = the segmented level
    for k, d in enumerate(ms["datasets"]):
        scale, shift = _level_meta(k)
        assert d["coordinateTransformations"][1] == {"type": "translation", "translation": shift}
        assert d["coordinateTransformations"][0]["scale"] == scale
    assert np.array_equal(open_array(label / "1")[...], seg)
    assert np.array_equal(open_array(label / "0")[...], upsample_labels(seg, (1, 2, 2), SHAPE))
    assert np.array_equal(open_array(label / "2")[...], downsample_labels(seg, (1, 2, 2)))
    import csv

    scale, shift = _level_meta(1)  # objects: positions in the image's coordinates (scale and translation)
    with open(out / "objects.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4
    for row in rows:
        for i, a in enumerate("zyx"):
            assert np.isclose(float(row[f"position_{a}"]), float(row[f"centroid_{a}"]) * scale[i] + shift[i])


def test_existing_label_image_is_never_replaced_silently(tmp_path):
    img = ome_image(tmp_path / "img.zarr", "0.5")
    _run(tmp_path, img)
    before = open_array(img / "labels" / "segmentation" / "0")[...]
    with pytest.raises(OutputError, match=r"label image '.*labels/segmentation' already exists; set output.overwrite"):
        _run(tmp_path, img, name="second")
    assert not (tmp_path / "second.zarr").exists()
    _run(tmp_path, img, name="third", label_name="again")
    assert _attrs(img / "labels", "0.5")["labels"] == ["segmentation", "again"]
    assert np.array_equal(open_array(img / "labels" / "again" / "0")[...], before)
    _run(tmp_path, img, name="fourth", overwrite=True)  # replaced on request
    assert _attrs(img / "labels", "0.5")["labels"] == ["segmentation", "again"]


def _stopped_before_the_label_metadata(tmp_path, img, monkeypatch, **run) -> None:
    """A run of ``img`` killed after every level is written, before the label image's metadata."""

    def killed(self):
        raise RuntimeError("driver killed")

    monkeypatch.setattr(LabelsStage, "finish", killed)
    with pytest.raises(RuntimeError, match="killed"):
        _run(tmp_path, img, **run)
    monkeypatch.undo()


def test_an_interrupted_label_image_is_resumed_by_its_run_only(tmp_path, monkeypatch):
    img = ome_image(tmp_path / "img.zarr", "0.5")
    _stopped_before_the_label_metadata(tmp_path, img, monkeypatch)
    label = img / "labels" / "segmentation"
    assert label.exists() and _attrs(img / "labels", "0.5")["labels"] == []  # not listed while unfinished
    with pytest.raises(OutputError, match="already exists"):  # another run's output may not take it over
        _run(tmp_path, img, name="other")
    out, _ = _run(tmp_path, img)  # the same run, again: resumed, finished
    _validate(img, label, "0.5")
    assert np.array_equal(open_array(label / "0")[...], open_array(out / "segmentation")[...])
    _stopped_before_the_label_metadata(tmp_path, img, monkeypatch, name="again", label_name="first")
    _run(tmp_path, img, name="again", label_name="second")  # resumed, now naming another: written in full
    _validate(img, img / "labels" / "second", "0.5")
    assert np.array_equal(open_array(img / "labels" / "second" / "2")[...], open_array(label / "2")[...])


@pytest.mark.parametrize("version", ["0.4"])
def test_label_image_on_a_local_cluster(tmp_path, version):
    img = ome_image(tmp_path / "img.zarr", version)
    out, _ = _run(tmp_path, img, cluster="local")
    label = img / "labels" / "segmentation"
    _validate(img, label, version)
    levels = [open_array(label / str(k))[...] for k in range(LEVELS)]
    assert np.array_equal(levels[0], open_array(out / "segmentation")[...]) and levels[0].max() == 4
    assert all(np.array_equal(levels[k], downsample_labels(levels[k - 1], (1, 2, 2))) for k in range(1, LEVELS))


def test_read_only_input_image_suggests_standalone(tmp_path, monkeypatch):
    img = ome_image(tmp_path / "img.zarr", "0.5")
    touch = Path.touch

    def refuse(self, *args, **kwargs):  # a read-only input store (chmod does not stop root)
        if str(self).startswith(str(img)):
            raise PermissionError(13, "Permission denied")
        return touch(self, *args, **kwargs)

    monkeypatch.setattr(Path, "touch", refuse)
    with pytest.raises(OutputError, match="cannot write the label image into the input image.*output.labels: standalone"):
        _run(tmp_path, img)
    assert not (tmp_path / "o.zarr").exists() and not (img / "labels").exists()
    out, _ = _run(tmp_path, img, labels="standalone")
    assert not (img / "labels").exists()
    label = out / "labels" / "segmentation"
    _validate(None, label, "0.5")
    meta = _attrs(label, "0.5")
    assert meta["image-label"]["source"]["image"] == relative_source(label, img) == "../../../img.zarr/"
    assert len(meta["multiscales"][0]["datasets"]) == LEVELS
    assert [n.metadata["name"] for n in _reader_labels(out / "labels")] == ["segmentation"]


def test_standalone_label_image_for_a_plain_zarr_input(tmp_path):
    big = np.zeros((4, 16, 600), np.float32)
    big[1:3, 2:9, 10:500] = 1
    write_zarr(tmp_path / "in.zarr", big, chunks=(4, 8, 64), name="raw")
    out, _ = _run(tmp_path, tmp_path / "in.zarr", dataset="raw")
    label = out / "labels" / "segmentation"
    _validate(None, label, "0.5")
    meta = _attrs(label, "0.5")
    assert "source" not in meta["image-label"]
    ds = meta["multiscales"][0]["datasets"]
    # halving x while it is >= 256, y and z as long as they are longer than 1 voxel
    shapes = [open_array(label / d["path"]).shape for d in ds]
    assert shapes == [(4, 16, 600), (2, 8, 300), (1, 4, 150)]
    assert ds[1]["coordinateTransformations"] == [{"type": "scale", "scale": [2.0, 2.0, 2.0]},
                                                  {"type": "translation", "translation": [0.5, 0.5, 0.5]}]
    seg = open_array(out / "segmentation")[...]
    assert np.array_equal(open_array(label / "2")[...], downsample_labels(downsample_labels(seg, (2, 2, 2)), (2, 2, 2)))
    nodes = _reader_labels(label)
    assert len(nodes) == 1 and len(nodes[0].data) == 3
    out, _ = _run(tmp_path, tmp_path / "in.zarr", dataset="raw", name="none", labels="none")
    assert not (out / "labels").exists()
    with pytest.raises(OutputError, match="output.labels: image needs an OME-Zarr image input"):
        _run(tmp_path, tmp_path / "in.zarr", dataset="raw", name="img", labels="image")


def _files(path: Path) -> int:
    return sum(1 for f in path.rglob("*") if f.is_file())


@pytest.mark.parametrize("mode", ["standalone", "0.4", "0.5"])
def test_the_segmentation_is_written_once(tmp_path, mode):
    """The label image's full-resolution level is the segmentation: one array, and the output's
    ``segmentation`` a link to it (relative inside the output, so moving the output keeps it;
    absolute to a label image under the input image). Equal to a run that writes two copies."""
    import os
    import shutil

    import pipeline.plan.labels as labels_stage

    if mode == "standalone":
        write_zarr(tmp_path / "in.zarr", _volume(), chunks=(4, 8, 16), name="raw")
        src, dataset, label = tmp_path / "in.zarr", "raw", tmp_path / "o.zarr" / "labels" / "segmentation"
    else:
        src, dataset, label = ome_image(tmp_path / "img.zarr", mode), None, tmp_path / "img.zarr" / "labels" / "segmentation"
    out, _ = _run(tmp_path, src, dataset=dataset)
    link = out / "segmentation"
    assert link.is_symlink() and os.path.samefile(link, label / "0")
    assert os.path.isabs(os.readlink(link)) == (mode != "standalone")
    seg = open_array(link)[...]
    assert seg.max() == 4
    _validate(None if mode == "standalone" else src, label, "0.5" if mode == "standalone" else mode)
    assert np.array_equal(np.asarray(_reader_labels(label)[0].data[0]), seg)
    from pipeline.volume.io import open_label_array

    assert np.array_equal(open_label_array(out)[...], seg)  # evaluate and verify read a result this way

    # the same run where the filesystem takes no links: two copies, the same labels
    again = tmp_path / "copies"
    again.mkdir()
    if mode != "standalone":
        src = ome_image(again / "img.zarr", mode)
    orig = labels_stage.can_link
    labels_stage.can_link = lambda folder: False
    try:
        two, _ = _run(again, src, dataset=dataset)
    finally:
        labels_stage.can_link = orig
    assert not (two / "segmentation").is_symlink()
    assert np.array_equal(open_array(two / "segmentation")[...], seg)
    copy = (two / "labels" / "segmentation") if mode == "standalone" else (again / "img.zarr" / "labels" / "segmentation")
    assert np.array_equal(open_array(copy / "0")[...], seg)
    if mode == "standalone":  # one copy fewer: the chunk files of level 0 are not written twice
        assert _files(out) < _files(two)
        moved = tmp_path / "elsewhere" / "moved.zarr"
        moved.parent.mkdir()
        shutil.move(str(out), str(moved))
        assert np.array_equal(open_array(moved / "segmentation")[...], seg)


def test_a_vanished_label_image_is_written_again_with_its_segmentation(tmp_path, monkeypatch):
    """A run stopped after relabelling whose label image (holding the segmentation) is deleted
    before the rerun: the rerun relabels again instead of trusting the relabel markers."""
    import shutil

    img = ome_image(tmp_path / "img.zarr", "0.5")
    _stopped_before_the_label_metadata(tmp_path, img, monkeypatch)
    shutil.rmtree(img / "labels" / "segmentation")
    out, _ = _run(tmp_path, img)
    ref, _ = _run(tmp_path, ome_image(tmp_path / "refimg.zarr", "0.5"), name="ref")
    assert np.array_equal(open_array(out / "segmentation")[...], open_array(ref / "segmentation")[...])
    _validate(img, img / "labels" / "segmentation", "0.5")


# ---------------------------------------------------------------- resampling and planning


def test_downsample_labels_is_the_block_mode():
    a = np.array([[1, 1, 2, 0, 5],
                  [1, 2, 2, 0, 5],
                  [3, 3, 0, 0, 5]], np.uint32)
    assert downsample_labels(a, (2, 2)).tolist() == [[1, 2, 5], [3, 0, 5]]
    assert downsample_labels(a, (1, 2)).tolist() == [[1, 2, 5], [2, 2, 5], [3, 0, 5]]  # ties: the larger id
    assert downsample_labels(a, (1, 1)).tolist() == a.tolist()
    with pytest.raises(ValueError, match="do not fit"):
        downsample_labels(a, (2,))


@settings(max_examples=60, deadline=None)
@given(arrays(np.uint32, st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 9)), elements=st.integers(0, 3)),
       st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)))
def test_downsample_labels_properties(labels, factors):
    out = downsample_labels(labels, factors)
    assert np.array_equal(out, downsample_labels_reference(labels, factors))  # compiled == numpy
    assert out.shape == tuple(-(-n // f) for n, f in zip(labels.shape, factors))
    for idx in np.ndindex(out.shape):
        block = labels[tuple(slice(i * f, (i + 1) * f) for i, f in zip(idx, factors))]
        values, counts = np.unique(block, return_counts=True)
        assert out[idx] == values[counts == counts.max()].max()  # the mode, ties to the largest id
    # blockwise (boxes aligned to the factors) == whole
    cut = [(n // f // 2) * f for n, f in zip(labels.shape, factors)]
    if cut[0]:
        top, bottom = downsample_labels(labels[: cut[0]], factors), downsample_labels(labels[cut[0]:], factors)
        assert np.array_equal(np.concatenate([top, bottom]), out)
    up = upsample_labels(out, factors, labels.shape)
    assert up.shape == labels.shape and np.array_equal(downsample_labels(up, factors), out)


def test_level_planning():
    pyr = [PyramidLevel((16, 64, 64), (2, .5, .5), (0, 0, 0)), PyramidLevel((16, 32, 32), (2, 1, 1), (0, .25, .25)),
           PyramidLevel((8, 16, 16), (4, 2, 2), (1, .75, .75)), PyramidLevel((8, 6, 6), (4, 5, 5), (1, 2.25, 2.25))]
    assert level_factors(pyr[0], pyr[1]) == (1, 2, 2) and level_factors(pyr[2], pyr[3]) is None
    image = plan_levels(pyr[1], pyr, 1, under_image=True)
    assert [(lv.kind, lv.factors, lv.shape) for lv in image] == [
        ("up", (1, 2, 2), (16, 64, 64)), ("copy", (1, 1, 1), (16, 32, 32)), ("down", (2, 2, 2), (8, 16, 16))]
    assert image[1].translation == (0, .25, .25) and image[2].source == 1  # level 3: factor 2.5 does not fit
    standalone = plan_levels(pyr[1], pyr, 1, under_image=False)
    assert [lv.kind for lv in standalone] == ["copy", "down"]
    assert halving_factors((100, 1000, 1000), (2, .5, .5)) == (1, 2, 2)
    assert halving_factors((100, 500, 500), (2, 1, 1)) == (1, 2, 2)
    assert halving_factors((100, 250, 1), (2, 2, 2)) == (2, 2, 1)
    assert coarser(pyr[0], (1, 2, 2)) == pyr[1]
    plain = plan_levels(PyramidLevel((64, 2048, 2048), (1, 1, 1), (0, 0, 0)), None, 0, under_image=False)
    assert len(plain) == 5 and max(plain[-1].shape) < 256 and max(plain[-2].shape) >= 256
    huge = plan_levels(PyramidLevel((1 << 20,), (1,), (0,)), None, 0, under_image=False)
    assert len(huge) == 8


def test_input_dataset_inside_an_ome_image(tmp_path, caplog):
    """input.dataset left over from a plain-zarr config: a missing name says to remove it; a level's
    name is read as a bare array with a warning that says how to keep the image's metadata."""
    import logging

    from pipeline.config import InputConfig
    from pipeline.volume.errors import InputError
    from pipeline.volume.io import open_input

    img = ome_image(tmp_path / "img.zarr", "0.5")
    with pytest.raises(InputError, match="is an OME-Zarr image .* remove input.dataset"):
        open_input(InputConfig(path=img, dataset="raw"))
    with caplog.at_level(logging.WARNING, logger="pipeline.volume.zarr_input"):
        vol = open_input(InputConfig(path=img, dataset="1"))
    assert vol.voxel_size is None and "set input.scale_level: 1" in caplog.text
