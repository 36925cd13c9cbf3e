"""Inputs: zarr v2 and v3 arrays, OME-Zarr (0.4 on zarr v2, 0.5 on zarr v3), dtypes, errors."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from pipeline.config import InputConfig
from pipeline.run import predict, segment
from pipeline.runtime.output import prepare_output
from pipeline.volume.errors import InputError, OutputError
from pipeline.volume.io import open_array, open_group, open_input

from .conftest import make_checkpoint, random_volume
from .helpers import passthrough_checkpoint


def _ome(path, levels, version, voxel=(2.0, 0.5, 0.5), channel=False):
    fmt = 2 if version == "0.4" else 3
    g = zarr.open_group(str(path), mode="w", zarr_format=fmt)
    axes = ([{"name": "c", "type": "channel"}] if channel else []) + [
        {"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    datasets = []
    for i, lv in enumerate(levels):
        g.create_array(str(i), data=lv[None] if channel else lv, chunks=(1, 8, 16, 16) if channel else (8, 16, 16))
        sc = [voxel[0], voxel[1] * 2**i, voxel[2] * 2**i]
        datasets.append({"path": str(i), "coordinateTransformations": [
            {"type": "scale", "scale": ([1.0] if channel else []) + sc}]})
    ms = [{"version": version, "axes": axes, "datasets": datasets, "name": "img"}]
    if version == "0.4":
        g.attrs["multiscales"] = ms
    else:
        g.attrs["ome"] = {"version": "0.5", "multiscales": ms}
    return path


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_input_levels_and_voxel_size(tmp_path, version):
    full = random_volume((12, 40, 40), dtype="uint16")
    half = full[:, ::2, ::2].copy()
    _ome(tmp_path / "img.zarr", [full, half], version)
    vol = open_input(InputConfig(path=tmp_path / "img.zarr", scale_level=1))
    assert vol.shape == (12, 20, 20) and vol.voxel_size == (2.0, 1.0, 1.0) and vol.axes == "zyx"
    assert np.array_equal(vol.array[...], half)
    with pytest.raises(InputError, match="scale_level 2 does not exist"):
        open_input(InputConfig(path=tmp_path / "img.zarr", scale_level=2))


def test_ome_channel_axis_and_label_output(tmp_path):
    fg = np.zeros((8, 16, 16), np.float32)
    fg[2:6, 2:8, 2:8] = 1.0
    _ome(tmp_path / "img.zarr", [fg], "0.5", channel=True)
    passthrough_checkpoint(tmp_path / "pt.pt")
    out = segment({"input": {"path": str(tmp_path / "img.zarr")}, "output": {"path": str(tmp_path / "o.zarr")},
                   "model": {"checkpoint": str(tmp_path / "pt.pt")}, "blocks": {"write_shape": [4, 8, 8]},
                   "cluster": {"kind": "serial"}})
    seg = open_array(out / "segmentation")[...]
    assert seg.max() == 1 and (seg > 0).sum() == 4 * 6 * 6
    ome = open_group(tmp_path / "img.zarr" / "labels" / "segmentation").attrs["ome"]  # next to the image
    ds = ome["multiscales"][0]["datasets"][0]
    assert ds["path"] == "0" and ds["coordinateTransformations"][0]["scale"] == [2.0, 0.5, 0.5]
    assert [a["name"] for a in ome["multiscales"][0]["axes"]] == ["z", "y", "x"]  # no channel axis
    assert ome["image-label"]["source"]["image"] == "../../"
    assert "volume" in (out / "objects.csv").read_text().splitlines()[0]


@pytest.mark.parametrize("fmt,dtype", [(2, "uint8"), (3, "uint16"), (2, "float32"), (3, "float32")])
def test_zarr_v2_v3_and_dtypes(tmp_path, fmt, dtype):
    make_checkpoint(tmp_path / "m.pt", ndim=2, downsample=[[2, 2]])
    data = random_volume((20, 24), dtype=dtype)
    zarr.create_array(str(tmp_path / "a.zarr"), data=data, chunks=(8, 8), zarr_format=fmt)
    out = predict({"input": {"path": str(tmp_path / "a.zarr")}, "output": {"path": str(tmp_path / "o.zarr")},
                   "model": {"checkpoint": str(tmp_path / "m.pt")}, "cluster": {"kind": "serial"}})
    fg = open_array(out / "foreground")[...]
    assert fg.shape == (20, 24) and np.isfinite(fg).all()


def test_input_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        open_input(InputConfig(path=tmp_path / "missing.zarr"))
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    g.create_array("raw", data=np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(InputError, match="no array 'rwa'.*available: raw"):
        open_input(InputConfig(path=tmp_path / "g.zarr", dataset="rwa"))
    with pytest.raises(InputError, match="without OME-Zarr multiscales; set input.dataset to one of its arrays: raw"):
        open_input(InputConfig(path=tmp_path / "g.zarr"))
    zarr.create_array(str(tmp_path / "c.zarr"), data=np.zeros((4, 4), np.complex64))
    with pytest.raises(InputError, match="dtype complex64"):
        open_input(InputConfig(path=tmp_path / "c.zarr"))
    zarr.create_array(str(tmp_path / "b.zarr"), data=np.zeros((4, 4), bool))
    with pytest.raises(InputError, match="dtype bool"):
        open_input(InputConfig(path=tmp_path / "b.zarr"))


def test_output_never_replaced_silently(tmp_path):
    (tmp_path / "notzarr").mkdir()
    (tmp_path / "notzarr" / "precious.txt").write_text("data")
    with pytest.raises(OutputError, match="already exists"):
        prepare_output(tmp_path / "notzarr", overwrite=False)
    with pytest.raises(OutputError, match="not a zarr group: refusing"):
        prepare_output(tmp_path / "notzarr", overwrite=True)
    assert (tmp_path / "notzarr" / "precious.txt").read_text() == "data"
