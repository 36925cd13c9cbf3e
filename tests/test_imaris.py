"""Imaris ``.ims`` inputs, written here in Imaris's layout with h5py (attributes as arrays of
one-byte strings, data padded beyond ``ImageSize``, LZ4 via hdf5plugin and gzip): the padding is
cut off, levels, channels and voxel sizes come out right, the demo model segments an .ims exactly
like the same data in zarr, and bad files are one-line errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import InputConfig
from pipeline.volume.errors import InputError
from pipeline.volume.formats import kind_of
from pipeline.volume.imaris import text
from pipeline.volume.io import open_array, open_input, read_image, write_zarr

h5py = pytest.importorskip("h5py")
hdf5plugin = pytest.importorskip("hdf5plugin")

EXTENT = (0.0, 0.0, 0.0), (96.0, 48.0, 60.0)  # x, y, z in um; level 0 of (20, 24, 32): 3, 2, 3 um


def strings(value: object) -> np.ndarray:
    """An attribute as Imaris writes it: an array of one-byte strings."""
    return np.array([c.encode() for c in str(value)], dtype="S1")


def write_ims(path: Path, channels: list[list[np.ndarray]], times: int = 1, pad: int = 8,
              compression: list[str] | None = None) -> None:
    """``channels[c][r]``: channel c at resolution level r, (z, y, x); each stored padded by
    ``pad`` voxels per axis (the padding holds junk), chunked, LZ4 or gzip."""
    compression = compression or ["lz4", "gzip"]
    base = channels[0][0].shape
    with h5py.File(path, "w") as f:
        f.attrs["ImarisDataSet"] = strings("ImarisDataSet")
        info = f.create_group("DataSetInfo/Image")
        for axis, n in zip("ZYX", base, strict=True):
            info.attrs[axis] = strings(n)
        for i in range(3):
            info.attrs[f"ExtMin{i}"] = strings(EXTENT[0][i])
            info.attrs[f"ExtMax{i}"] = strings(EXTENT[1][i])
        info.attrs["Unit"] = strings("um")
        for c, levels in enumerate(channels):
            for r, data in enumerate(levels):
                for t in range(times):
                    group = f.create_group(f"DataSet/ResolutionLevel {r}/TimePoint {t}/Channel {c}")
                    for axis, n in zip("ZYX", data.shape, strict=True):
                        group.attrs[f"ImageSize{axis}"] = strings(n)
                    stored = np.full(tuple(n + pad for n in data.shape), 99, data.dtype)
                    stored[tuple(slice(0, n) for n in data.shape)] = data
                    codec = compression[(c + r) % len(compression)]
                    kw = dict(hdf5plugin.LZ4()) if codec == "lz4" else {"compression": "gzip"}
                    chunks = tuple(min(c, n) for c, n in zip((8, 16, 16), stored.shape, strict=True))
                    group.create_dataset("Data", data=stored, chunks=chunks, **kw)


def pyramid(data: np.ndarray) -> list[np.ndarray]:
    return [data, data[::2, ::2, ::2].copy()]


@pytest.fixture
def two_channels(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 1000, (20, 24, 32)).astype(np.uint16)
    b = (a * 2 + 1).astype(np.uint16)
    path = tmp_path / "cells.ims"
    write_ims(path, [pyramid(a), pyramid(b)])
    return path, a, b


def test_attributes_are_byte_string_arrays_joined():
    assert text(strings("512")) == "512" and text(b"um") == "um" and text("x") == "x"


def test_levels_channels_padding_and_voxel_size(two_channels):
    path, a, b = two_channels
    assert kind_of(path) == "ims"
    with h5py.File(path) as f:  # what the reader has to cope with
        ds = f["DataSet/ResolutionLevel 0/TimePoint 0/Channel 0/Data"]
        assert ds.shape == (28, 32, 40) and "32004" in ds._filters
        assert f["DataSetInfo/Image"].attrs["X"].dtype == np.dtype("S1")
    vol = open_input(InputConfig(path=path, channel=1))
    assert vol.axes == "zyx" and vol.shape == (20, 24, 32) and vol.dtype == np.uint16
    assert vol.voxel_size == pytest.approx((3.0, 2.0, 3.0)) and vol.units == ("micrometer",) * 3
    np.testing.assert_array_equal(vol.array[...], b)
    np.testing.assert_array_equal(vol.array[2:5, -3:, 30:], b[2:5, -3:, 30:])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(vol.array))[1], b[1])
    np.testing.assert_array_equal(read_image(path)[0], a)

    low = open_input(InputConfig(path=path, channel=0, scale_level=1))
    assert low.shape == (10, 12, 16) and low.voxel_size == pytest.approx((6.0, 4.0, 6.0))
    np.testing.assert_array_equal(low.array[...], a[::2, ::2, ::2])

    both = open_input(InputConfig(path=path))  # several channels, none selected: a c axis
    assert both.axes == "czyx" and both.array.shape == (2, 20, 24, 32) and both.channels == 2
    np.testing.assert_array_equal(both.array[...], np.stack([a, b]))
    np.testing.assert_array_equal(both.array[1, :3], b[:3])
    from pipeline.geometry import Box

    np.testing.assert_array_equal(both.read(Box((0, 0, 0), (4, 24, 32))), np.stack([a, b])[:, :4])
    assert "Channel 1" in both.chunk_name((1, 0, 0, 0))


def test_one_channel_is_read_without_c_axis(tmp_path):
    data = np.arange(6 * 7 * 9, dtype=np.float32).reshape(6, 7, 9)
    write_ims(tmp_path / "one.ims", [[data]], pad=3, compression=["gzip"])
    vol = open_input(InputConfig(path=tmp_path / "one.ims"))
    assert vol.axes == "zyx" and vol.shape == (6, 7, 9)
    np.testing.assert_array_equal(vol.array[...], data)


def _seg(tmp_path: Path, name: str, inp: dict) -> np.ndarray:
    from pipeline.run import segment

    out = tmp_path / f"{name}.zarr"
    segment({"input": inp, "output": {"path": str(out)}, "cluster": {"kind": "serial"}})
    return open_array(out / "segmentation", mode="r")[...]


def test_segments_like_the_same_data_in_zarr(tmp_path):
    from pipeline.volume import synthetic

    image = synthetic.generate(synthetic.appearance("demo", shape=(32, 96, 96)), seed=1)[0]
    other = np.zeros_like(image)
    write_ims(tmp_path / "demo.ims", [pyramid(image), pyramid(other)])
    write_zarr(tmp_path / "demo.zarr", image, chunks=(16, 48, 48), name="raw")
    ims = _seg(tmp_path, "ims", {"path": str(tmp_path / "demo.ims"), "channel": 0})
    ref = _seg(tmp_path, "ref", {"path": str(tmp_path / "demo.zarr"), "dataset": "raw"})
    assert ims.shape == image.shape and ims.max() > 0
    np.testing.assert_array_equal(ims, ref)


def _error(path: Path, **cfg: object) -> str:
    with pytest.raises(InputError) as info:
        open_input(InputConfig(path=path, **cfg))
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    return message


def test_errors_are_one_line(tmp_path, two_channels):
    path = two_channels[0]
    assert "resolution levels 0, 1" in _error(path, scale_level=2)
    assert "channel 2 is out of range" in _error(path, channel=2) and "0, 1" in _error(path, channel=2)
    assert "remove input.dataset" in _error(path, dataset="raw")

    with h5py.File(tmp_path / "plain.ims", "w") as f:
        f["raw"] = np.zeros((2, 3, 4))
    assert "not an Imaris file (no DataSet group)" in _error(tmp_path / "plain.ims")

    (tmp_path / "junk.ims").write_bytes(b"not hdf5")
    assert "not a readable HDF5" in _error(tmp_path / "junk.ims")

    data = np.ones((4, 5, 6), np.uint8)
    write_ims(tmp_path / "movie.ims", [[data]], times=3, compression=["gzip"])
    assert "3 time points" in _error(tmp_path / "movie.ims")


def test_a_filter_that_cannot_be_loaded_is_named(tmp_path, monkeypatch):
    write_ims(tmp_path / "lz4.ims", [[np.ones((4, 5, 6), np.uint16)]], compression=["lz4"])
    monkeypatch.setattr(h5py.h5z, "filter_avail", lambda code: code != 32004)
    message = _error(tmp_path / "lz4.ims")
    assert "filter 32004 (LZ4)" in message and "ResolutionLevel 0/TimePoint 0/Channel 0/Data" in message
    assert "lz4.ims" in message and "hdf5plugin" in message
