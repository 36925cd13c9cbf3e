"""Inputs without conversion: a TIFF file, a folder of TIFF slices, HDF5 (plain and
BigDataViewer) segment exactly like the same data in zarr, with the voxel size their metadata
records; ``input.channel`` selects a channel; ``pipeline evaluate`` reads TIFF labels."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import tifffile
from scipy import ndimage

from pipeline.cli import main
from pipeline.config import InputConfig
from pipeline.errors import UsageError
from pipeline.run import segment
from pipeline.volume.io import open_array, open_input, write_zarr

from .helpers import passthrough_checkpoint

SHAPE, WRITE = (10, 24, 20), (6, 12, 10)
VOXEL = (2.0, 0.5, 0.25)  # z, y, x in micrometres


def _volume() -> np.ndarray:
    rng = np.random.default_rng(5)
    return (ndimage.gaussian_filter(rng.random(SHAPE), 1.5) > 0.5).astype(np.float32)


def _segment(tmp_path, input_cfg: dict, name: str) -> np.ndarray:
    ckpt = tmp_path / "pt.pt"
    if not ckpt.exists():
        passthrough_checkpoint(ckpt)
    out = segment({"input": input_cfg, "output": {"path": str(tmp_path / f"{name}.zarr")},
                   "model": {"checkpoint": str(ckpt), "precision": "float64"},
                   "blocks": {"write_shape": list(WRITE)}, "cluster": {"kind": "serial"}})
    return open_array(out / "segmentation")[...]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The volume, its zarr copy's segmentation and the folder they live in."""
    tmp = tmp_path_factory.mktemp("formats")
    vol = _volume()
    write_zarr(tmp / "in.zarr", vol, chunks=WRITE, name="raw")
    seg = _segment(tmp, {"path": str(tmp / "in.zarr"), "dataset": "raw"}, "ref")
    assert seg.max() > 3
    return tmp, vol, seg


def _imagej(path, data: np.ndarray, **kw) -> None:
    # ImageJ: spacing is z, X/YResolution are pixels per unit
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / VOXEL[2], 1 / VOXEL[1]),
                     metadata={"spacing": VOXEL[0], "unit": "um", **kw})


def write_bdv(path, data: np.ndarray, setups: int = 1) -> None:
    """BigDataViewer HDF5 (uint16 stored as int16, two levels) and its XML with the voxel size."""
    with h5py.File(path, "w") as f:
        for s in range(setups):
            f[f"s{s:02d}/resolutions"] = np.array([[1, 1, 1], [2, 2, 1]], float)
            f[f"s{s:02d}/subdivisions"] = np.array([[8, 8, 4], [8, 8, 4]])
            f.create_dataset(f"t00000/s{s:02d}/0/cells", data=data.view(np.int16), chunks=(4, 8, 8))
            f[f"t00000/s{s:02d}/1/cells"] = data[:, ::2, ::2].view(np.int16)
    views = "".join(f"<ViewSetup><id>{s}</id><voxelSize><unit>µm</unit><size>{VOXEL[2]} {VOXEL[1]} {VOXEL[0]}</size>"
                    "</voxelSize></ViewSetup>" for s in range(setups))
    path.with_suffix(".xml").write_text(
        f'<SpimData><SequenceDescription><ImageLoader format="bdv.hdf5"><hdf5 type="relative">{path.name}</hdf5>'
        f"</ImageLoader><ViewSetups>{views}</ViewSetups></SequenceDescription></SpimData>")


def _write(tmp, vol: np.ndarray, fmt: str) -> dict:
    """``vol`` in format ``fmt`` with VOXEL in its metadata; the input config that reads it."""
    if fmt == "tiff":
        _imagej(tmp / "in.tif", vol, axes="ZYX")
        return {"path": str(tmp / "in.tif")}
    if fmt == "tiff-folder":
        (tmp / "slices").mkdir()
        for z, plane in enumerate(vol):  # natural order: z2 before z10
            _imagej(tmp / "slices" / f"z{z}.tif", plane)
        return {"path": str(tmp / "slices")}
    if fmt == "hdf5":
        with h5py.File(tmp / "in.h5", "w") as f:
            f.create_dataset("raw", data=vol, chunks=(4, 8, 8)).attrs["element_size_um"] = VOXEL
            f["other"] = np.zeros(3)
        return {"path": str(tmp / "in.h5"), "dataset": "raw"}
    write_bdv(tmp / "bdv.h5", vol.astype(np.uint16))
    return {"path": str(tmp / "bdv.h5")}  # dataset: t00000/s00/<scale_level>/cells


@pytest.mark.parametrize("fmt", ["tiff", "tiff-folder", "hdf5", "bdv"])
def test_format_segments_like_zarr_with_its_voxel_size(reference, tmp_path, fmt):
    _, vol, ref = reference
    cfg = _write(tmp_path, vol, fmt)
    opened = open_input(InputConfig(**cfg))
    assert opened.shape == SHAPE and opened.voxel_size == pytest.approx(VOXEL)
    assert opened.units == ("micrometer",) * 3
    np.testing.assert_array_equal(_segment(tmp_path, cfg, fmt), ref)
    import zarr  # the standalone label image carries the voxel size and its unit

    ms = zarr.open_group(str(tmp_path / f"{fmt}.zarr" / "labels" / "segmentation"), mode="r").attrs["ome"]["multiscales"][0]
    assert [a.get("unit") for a in ms["axes"]] == ["micrometer"] * 3
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == pytest.approx(VOXEL)


def test_bdv_levels_channels_and_xml(tmp_path):
    data = np.arange(np.prod(SHAPE), dtype=np.uint16).reshape(SHAPE) + 40000  # above int16's range
    write_bdv(tmp_path / "bdv.h5", data, setups=2)
    with pytest.raises(UsageError, match="2 setups.*input.channel"):
        open_input(InputConfig(path=tmp_path / "bdv.h5"))
    level1 = open_input(InputConfig(path=tmp_path / "bdv.xml", channel=1, scale_level=1))  # the XML names the file
    assert level1.shape == (10, 12, 10) and level1.voxel_size == pytest.approx((2.0, 1.0, 0.5))
    np.testing.assert_array_equal(level1.array[...], data[:, ::2, ::2])
    with pytest.raises(UsageError, match="scale_level 2 .* 2 BDV levels"):
        open_input(InputConfig(path=tmp_path / "bdv.h5", channel=0, scale_level=2))


def test_channel_selects_one_channel(reference, tmp_path):
    """A 2-channel TIFF (ZCYX) with input.channel gives the single channel's segmentation; the
    same input without it is refused with the key to set."""
    _, vol, ref = reference
    rng = np.random.default_rng(0)
    stack = np.stack([rng.random(SHAPE).astype(np.float32), vol], axis=1)
    tifffile.imwrite(tmp_path / "two.tif", stack, imagej=True, metadata={"axes": "ZCYX"})
    cfg = {"path": str(tmp_path / "two.tif"), "channel": 1}
    assert open_input(InputConfig(**cfg)).channels == 1
    np.testing.assert_array_equal(_segment(tmp_path, cfg, "ch"), ref)
    with pytest.raises(UsageError, match=r"2 channel\(s\).*set input.channel to one of 0..1"):
        _segment(tmp_path, {"path": str(tmp_path / "two.tif")}, "both")


def test_format_errors_say_what_to_fix(tmp_path):
    write_zarr(tmp_path / "c.zarr", np.zeros((2, *SHAPE), np.float32))  # czyx
    with pytest.raises(UsageError, match=r"input.channel 2 is out of range: .* 2 channel\(s\); set input.channel "
                       r"to one of 0..1"):
        open_input(InputConfig(path=tmp_path / "c.zarr", channel=2))
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["raw"] = np.zeros(SHAPE)
        f["group/labels"] = np.zeros(SHAPE)
    with pytest.raises(UsageError, match="no dataset 'raws' .*available: group/labels, raw"):
        open_input(InputConfig(path=tmp_path / "a.h5", dataset="raws"))
    with pytest.raises(UsageError, match="2 datasets; set input.dataset to one of: group/labels, raw"):
        open_input(InputConfig(path=tmp_path / "a.h5"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    with pytest.raises(UsageError, match="folder .* holds no .tif/.tiff files"):
        open_input(InputConfig(path=tmp_path / "empty"))


def test_evaluate_reads_tiff_and_hdf5_labels(reference, tmp_path, capsys):
    root, _, ref = reference
    tifffile.imwrite(tmp_path / "gt.tif", ref.astype(np.uint16))
    with h5py.File(tmp_path / "pred.h5", "w") as f:
        f["labels"] = ref
    assert main(["evaluate", "--pred", str(tmp_path / "pred.h5"), "--pred-dataset", "labels",
                 "--gt", str(tmp_path / "gt.tif"), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["n_gt"] == scores["n_pred"] == ref.max() and scores["avap"] == 1.0
    assert main(["evaluate", "--pred", str(root / "ref.zarr"), "--gt", str(tmp_path / "gt.tif")]) == 0
    capsys.readouterr()  # the run's OME-Zarr label image (a group with multiscales) is read at level 0
    assert main(["evaluate", "--pred", str(root / "ref.zarr" / "labels" / "segmentation"), "--gt",
                 str(tmp_path / "gt.tif"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["avap"] == 1.0


def test_empty_tiff_is_one_line(tmp_path, capsys):
    (tmp_path / "empty.tif").write_bytes(b"II*\x00\x00\x00\x00\x00")  # a header, no page
    assert main(["evaluate", "--pred", str(tmp_path / "empty.tif"), "--gt", str(tmp_path / "empty.tif")]) == 2
    err = capsys.readouterr().err
    assert "holds no image (an empty or truncated TIFF)" in err and "Traceback" not in err
