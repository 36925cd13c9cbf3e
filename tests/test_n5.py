"""N5 inputs (BigStitcher-Spark / exaSPIM ``fused.n5``), written here with tensorstore's own N5
writer: every codec it writes reads back in (z, y, x) order; a BigStitcher-like pyramid gives
its levels and voxel sizes; the demo model segments N5 exactly like the same data in zarr;
``pipeline plan`` shows what it found; bad containers and blocks are one-line errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.config import InputConfig
from pipeline.errors import UsageError
from pipeline.geometry import Box
from pipeline.volume.errors import InputReadError, collect_unreadable
from pipeline.volume.formats import kind_of
from pipeline.volume.io import open_array, open_input, write_zarr

ts = pytest.importorskip("tensorstore")

CODECS = {"raw": {}, "gzip": {"level": 6}, "blosc": {"cname": "lz4", "clevel": 5, "shuffle": 1},
          "zstd": {"level": 3}, "xz": {"preset": 6}, "bzip2": {"blockSize": 9}}


def write_n5(folder: Path, data: np.ndarray, blocks: tuple[int, ...], codec: str = "gzip", **attrs: object) -> None:
    """``data`` ((c,) z, y, x) as the N5 dataset ``folder`` with tensorstore's writer (N5 lists
    the axes x first), extra ``attrs`` in its attributes.json, and the container's version."""
    meta = {"dimensions": list(data.shape[::-1]), "blockSize": list(blocks[::-1]), "dataType": data.dtype.name,
            "compression": {"type": codec, **CODECS[codec]}}
    store = ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": str(folder)}, "metadata": meta},
                    create=True, delete_existing=True).result()
    store.T[...] = data
    _add_attrs(folder, **attrs)
    root = next((p for p in (folder, *folder.parents) if p.suffix == ".n5"), folder)
    _add_attrs(root, n5="4.0.0")


def _add_attrs(folder: Path, **attrs: object) -> None:
    file = folder / "attributes.json"
    old = json.loads(file.read_text()) if file.exists() else {}
    folder.mkdir(parents=True, exist_ok=True)
    file.write_text(json.dumps({**old, **attrs}))


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
@pytest.mark.parametrize("codec", list(CODECS))
def test_codecs_read_back_in_zyx_order(tmp_path, codec, dtype):
    """A non-cubic volume in non-cubic blocks (edge blocks partial): tensorstore exposes N5's
    (x, y, z) order; the reader presents (z, y, x), blocks reversed, block files at x/y/z."""
    data = (np.arange(5 * 6 * 7).reshape(5, 6, 7) * 3).astype(dtype)
    try:
        write_n5(tmp_path / "v.n5", data, (2, 3, 4), codec)
    except ValueError as exc:  # a codec this tensorstore build cannot write
        pytest.skip(f"tensorstore cannot write N5 {codec}: {exc}")
    raw = ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": str(tmp_path / "v.n5")}}).result()
    assert raw.shape == (7, 6, 5)  # what tensorstore exposes: the attributes' order, x first
    vol = open_input(InputConfig(path=tmp_path / "v.n5"))
    assert kind_of(tmp_path / "v.n5") == "n5" and vol.axes == "zyx" and vol.dtype == np.dtype(dtype)
    assert vol.shape == (5, 6, 7) and vol.chunks == (2, 3, 4) and vol.voxel_size is None
    np.testing.assert_array_equal(vol.array[...], data)
    np.testing.assert_array_equal(vol.array[1:4, 2, 3:7], data[1:4, 2, 3:7])
    np.testing.assert_array_equal(vol.read(Box((3, 4, 5), (4, 4, 4)))[0], np.pad(data, 2, "reflect")[5:9, 6:10, 7:11])
    again = pickle.loads(pickle.dumps(vol.array))  # no store inside: reopened where it is read
    np.testing.assert_array_equal(again[4:5, :, 6], data[4:5, :, 6])
    assert (tmp_path / "v.n5" / "1" / "0" / "2").is_file()  # block x 1, y 0, z 2
    files = vol.files(Box((4, 0, 4), (1, 3, 3)))
    assert files == [str(tmp_path / "v.n5" / "attributes.json"), str(tmp_path / "v.n5" / "1" / "0" / "2")]


def test_channels_and_2d(tmp_path):
    """4D N5 (x, y, z, c) reads as (c, z, y, x), input.channel picks one; 2D as (y, x)."""
    data = np.arange(2 * 3 * 4 * 5, dtype=np.uint8).reshape(2, 3, 4, 5)
    write_n5(tmp_path / "c.n5" / "raw", data, (1, 2, 2, 2))
    vol = open_input(InputConfig(path=tmp_path / "c.n5", dataset="raw", channel=1))
    assert vol.axes == "czyx" and vol.shape == (3, 4, 5) and vol.chunks == (2, 2, 2)
    np.testing.assert_array_equal(vol.read(Box((0, 0, 0), (3, 4, 5)))[0], data[1])
    write_n5(tmp_path / "p.n5", data[0, 0], (2, 2), "raw")
    flat = open_input(InputConfig(path=tmp_path / "p.n5"))
    assert flat.axes == "yx" and flat.shape == (4, 5)


def _bigstitcher(root: Path, data: np.ndarray) -> None:
    """BigDataViewer-N5 / BigStitcher-Spark layout: setup0/timepoint0/s0, s1 (x, y halved), the
    setup's downsamplingFactors per level, the time point's resolution (x, y, z)."""
    group = root / "setup0" / "timepoint0"
    write_n5(group / "s0", data, (8, 32, 32), "gzip", downsamplingFactors=[1, 1, 1])
    write_n5(group / "s1", data[:, ::2, ::2], (8, 32, 32), "gzip", downsamplingFactors=[2, 2, 1])
    _add_attrs(root / "setup0", downsamplingFactors=[[1, 1, 1], [2, 2, 1]], dataType=data.dtype.name)
    _add_attrs(group, resolution=[0.25, 0.5, 2.0], unit="um", multiScale=True)


def test_multiscale_group_levels_and_voxel_size(tmp_path):
    data = np.arange(8 * 32 * 32, dtype=np.uint16).reshape(8, 32, 32)
    _bigstitcher(tmp_path / "fused.n5", data)
    base = open_input(InputConfig(path=tmp_path / "fused.n5", dataset="setup0/timepoint0"))
    assert base.voxel_size == pytest.approx((2.0, 0.5, 0.25)) and base.units == ("micrometer",) * 3
    level1 = open_input(InputConfig(path=tmp_path / "fused.n5", dataset="/setup0/timepoint0", scale_level=1))
    assert level1.shape == (8, 16, 16) and level1.voxel_size == pytest.approx((2.0, 1.0, 0.5))
    np.testing.assert_array_equal(level1.array[...], data[:, ::2, ::2])
    # the only multiscale group is found without input.dataset; the group's path works as input.path;
    # n5-viewer's pixelResolution {dimensions, unit} with per-level factors from the dataset
    assert open_input(InputConfig(path=tmp_path / "fused.n5", scale_level=1)).shape == (8, 16, 16)
    inner = open_input(InputConfig(path=tmp_path / "fused.n5" / "setup0" / "timepoint0", scale_level=1))
    assert inner.voxel_size == pytest.approx((2.0, 1.0, 0.5))
    _add_attrs(tmp_path / "fused.n5" / "setup0" / "timepoint0", pixelResolution={"dimensions": [4, 4, 4], "unit": "nm"})
    level1 = open_input(InputConfig(path=tmp_path / "fused.n5", dataset="setup0/timepoint0/s1"))
    assert level1.voxel_size == pytest.approx((4.0, 8.0, 8.0)) and level1.units == ("nanometer",) * 3


def test_segments_like_zarr_and_plan_shows_it(tmp_path, capsys):
    """The demo model on a synthetic volume: float32 N5 (BigStitcher fuses to float) gives the
    segmentation of the same data in zarr; `pipeline plan` shows its shape, blocks and voxel size."""
    from pipeline.run import segment
    from pipeline.volume.synthetic import appearance, generate

    image = generate(appearance("demo", shape=(32, 96, 96)), seed=1)[0].astype(np.float32)
    write_zarr(tmp_path / "in.zarr", image, chunks=(16, 48, 48), name="raw")
    _bigstitcher(tmp_path / "fused.n5", image)
    inputs = {"zarr": {"path": str(tmp_path / "in.zarr"), "dataset": "raw"},
              "n5": {"path": str(tmp_path / "fused.n5"), "dataset": "setup0/timepoint0/s0"}}
    seg = {}
    for name, cfg in inputs.items():
        out = segment({"input": cfg, "output": {"path": str(tmp_path / f"{name}.zarr")}, "cluster": {"kind": "serial"}})
        seg[name] = open_array(out / "segmentation", mode="r")[...]
    assert seg["zarr"].max() > 3
    np.testing.assert_array_equal(seg["n5"], seg["zarr"])
    # level 1 of the multiscale group (empty blocks are then found as each block is read)
    assert main(["plan", "--set", f"input.path={tmp_path / 'fused.n5'}", "--set", "input.dataset=setup0/timepoint0",
                 "--set", "input.scale_level=1", "--set", f"output.path={tmp_path / 'plan.zarr'}"]) == 0
    lines = {line.split()[0]: line.split(None, 1)[1] for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert lines["volume_shape"] == "[32, 48, 48]" and lines["input_chunks"] == "[8, 32, 32]"
    assert lines["voxel_size"] == "[2.0, 1.0, 0.5] micrometer" and lines["input_dtype"] == "float32"
    assert lines["empty_blocks_from"].startswith("each block's input as it is read")
    assert lines["input_format"].startswith("N5 ") and lines["input_format"].endswith("axes zyx")
    from pipeline.errors import UsageError
    from pipeline.run import prepare

    with pytest.raises(UsageError, match="empty.level 1: .* is not an OME-Zarr image"):
        prepare({"input": inputs["n5"], "output": {"path": str(tmp_path / "p.zarr")}, "empty": {"level": 1}})


def test_errors_are_one_line(tmp_path):
    data = np.zeros((4, 8, 8), np.uint16)
    write_n5(tmp_path / "a.n5" / "raw", data, (2, 4, 4))
    _bigstitcher(tmp_path / "a.n5", data)
    (tmp_path / "a.n5" / "empty").mkdir()
    cases = [
        ({"dataset": "raws"}, r"no dataset 'raws' in N5 .*available: raw, setup0/timepoint0 \(levels s0..s1\)"),
        ({}, r"N5 '.*a.n5' is not a dataset and has no scale levels .*set input.dataset to one of: raw, "),
        ({"dataset": "empty"}, r"group 'empty' in N5 .* no scale levels s0, s1"),
        ({"dataset": "setup0/timepoint0", "scale_level": 2}, r"scale_level 2 does not exist .* 2 levels \(0..1\)"),
        ({"dataset": "raw", "scale_level": 1}, r"scale_level 1: N5 dataset .*raw' is one level"),
    ]
    for extra, message in cases:
        with pytest.raises(UsageError, match=message) as err:
            open_input(InputConfig(path=tmp_path / "a.n5", **extra))
        assert "\n" not in str(err.value)
    (tmp_path / "a.n5" / "raw" / "attributes.json").write_text("{not json")
    with pytest.raises(UsageError, match=r"raw/attributes.json' cannot be read as N5 attributes"):
        open_input(InputConfig(path=tmp_path / "a.n5", dataset="raw"))
    (tmp_path / "a.n5" / "raw" / "attributes.json").write_text(json.dumps(
        {"dimensions": [8, 8, 4], "blockSize": [4, 4, 2], "dataType": "uint16", "compression": {"type": "lz4"}}))
    with pytest.raises(UsageError, match=r"dataset 'raw' cannot be opened as an N5 dataset \(.*lz4") as err:
        open_input(InputConfig(path=tmp_path / "a.n5", dataset="raw"))
    assert "\n" not in str(err.value) and "tensorstore_spec" not in str(err.value)
    with pytest.raises(UsageError, match=r"'.*missing.n5' does not exist \(give an existing N5 container\)"):
        open_input(InputConfig(path=tmp_path / "missing.n5"))


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_unreadable_block_is_named_or_read_as_empty(tmp_path, damage):
    """A damaged block file: named with its region (input.unreadable: error), or read as empty
    and recorded (empty), like a corrupt zarr chunk."""
    data = np.arange(1, 1 + 8 * 8 * 8, dtype=np.uint16).reshape(8, 8, 8)
    write_n5(tmp_path / "v.n5", data, (4, 4, 4))
    block = tmp_path / "v.n5" / "1" / "0" / "1"  # x 1, y 0, z 1
    block.write_bytes(block.read_bytes()[:20] if damage == "truncated" else b"not an N5 block")
    box = Box((2, 0, 0), (4, 8, 8))
    strict = open_input(InputConfig(path=tmp_path / "v.n5"))
    with pytest.raises(InputReadError, match=rf"N5 block file '{block}' \(z 4:8, y 0:4, x 4:8\) cannot be read") as err:
        strict.read(box)
    assert "\n" not in str(err.value)
    lenient = open_input(InputConfig(path=tmp_path / "v.n5", unreadable="empty"))
    want = data[2:6].copy()
    want[2:, 0:4, 4:8] = 0
    with collect_unreadable() as found:
        got = lenient.read(box)[0]
    assert np.array_equal(got, want) and [u.chunk for u in found] == [f"N5 block file '{block}'"]
