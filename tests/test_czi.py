"""Zeiss CZI input: files written with Zeiss's own library (pylibCZIrw; skipped cleanly when it is not
installed), read box by box plane by plane, segmented exactly like the same data in zarr; channels,
voxel size and one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

czi = pytest.importorskip("pylibCZIrw.czi")

from pipeline.cli import main  # noqa: E402
from pipeline.config import InputConfig  # noqa: E402
from pipeline.errors import UsageError  # noqa: E402
from pipeline.volume.io import open_array, open_input, write_zarr  # noqa: E402


def write_czi(path: Path, data: np.ndarray, voxel=(2.0, 0.5, 0.5), compression: str | None = None) -> None:
    """``data`` (c, z, y, x) as a CZI: one subblock per plane and channel, the voxel size in meters."""
    with czi.create_czi(str(path), exist_ok=True, compression_options=compression) as w:
        for c in range(data.shape[0]):
            for z in range(data.shape[1]):
                w.write(np.ascontiguousarray(data[c, z])[..., None], plane={"C": c, "Z": z, "T": 0})
        w.write_metadata(scale_z=voxel[0] * 1e-6, scale_y=voxel[1] * 1e-6, scale_x=voxel[2] * 1e-6)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from pipeline.volume import synthetic

    root = tmp_path_factory.mktemp("czi")
    image = synthetic.generate(synthetic.appearance("demo", shape=(32, 96, 96)), seed=1)[0]
    noise = np.random.default_rng(0).integers(0, 500, image.shape).astype(image.dtype)
    write_czi(root / "two.czi", np.stack([noise, image]), compression="zstd1:ExplicitLevel=1;PreProcess=HiLoByteUnpack")
    write_zarr(root / "same.zarr", image, chunks=(16, 48, 48), name="raw")
    return root, image, noise


def test_reads_boxes_channels_and_voxel_size(demo):
    root, image, noise = demo
    both = open_input(InputConfig(path=root / "two.czi"))
    assert both.axes == "czyx" and both.channels == 2 and both.shape == image.shape
    np.testing.assert_allclose(both.voxel_size, (2.0, 0.5, 0.5))
    one = open_input(InputConfig(path=root / "two.czi", channel=1))
    assert one.axes == "zyx" and one.channels == 1 and one.dtype == image.dtype
    np.testing.assert_array_equal(one.array[3:9, 10:50, 7:90], image[3:9, 10:50, 7:90])
    np.testing.assert_array_equal(one.array[5], image[5])
    np.testing.assert_array_equal(both.array[0, 2:4, :, 1], noise[2:4, :, 1])


def test_segments_like_the_same_data_in_zarr(demo, tmp_path):
    from pipeline.run import segment

    root, *_ = demo
    got = []
    for name, inp in (("czi", {"path": str(root / "two.czi"), "channel": 1}),
                      ("zarr", {"path": str(root / "same.zarr"), "dataset": "raw"})):
        out = tmp_path / f"{name}.zarr"
        segment({"input": inp, "output": {"path": str(out)}, "cluster": {"kind": "serial"},
                 "blocks": {"write_shape": [16, 48, 48]}})
        got.append(open_array(out / "segmentation", mode="r")[...])
    assert got[0].max() > 10
    np.testing.assert_array_equal(got[0], got[1])


def test_plan_names_the_format_and_bad_input_is_one_line(demo, tmp_path, capsys):
    root, *_ = demo
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"input: {{path: {root / 'two.czi'}, channel: 1}}\noutput: {{path: {tmp_path / 'o.zarr'}}}\n")
    assert main(["plan", str(cfg)]) == 0
    assert "CZI 'two.czi'" in capsys.readouterr().out.replace(str(root) + "/", "")
    for bad, match in (({"channel": 5}, r"input.channel 5 is out of range: .* has 2 channel"),
                       ({"scale_level": 1}, r"input.scale_level 1: CZI input .* full resolution only"),
                       ({"dataset": "x"}, r"input.dataset 'x' is given but .* is CZI")):
        with pytest.raises(UsageError, match=match):
            open_input(InputConfig(path=root / "two.czi", **bad))
    (tmp_path / "torn.czi").write_bytes((root / "two.czi").read_bytes()[:2000])
    with pytest.raises(UsageError, match=r"cannot be read as CZI"):
        open_input(InputConfig(path=tmp_path / "torn.czi"))
