"""Object-size matching (input.diameter): resampled reads are the same in any block, blockwise
prediction on the resampled grid equals the whole resampled volume, labels come back to the
input grid, and the 2x-zoomed demo is segmented as well as the original."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from pipeline.config import InputConfig
from pipeline.geometry import Box
from pipeline.network.checkpoint import load_checkpoint
from pipeline.network.predict import Predictor, predict_whole
from pipeline.qc.metrics import contingency, object_diameters, scores
from pipeline.run import as_config, predict, prepare, segment
from pipeline.volume.io import open_array, open_input, write_zarr
from pipeline.volume.resample import (
    DiameterError,
    ZoomedVolume,
    interpolate_axis,
    linear_taps,
    nearest_indices,
    sample_coords,
    snap,
    voxel_diameter,
    zoom_factors,
    zoomed_shape,
)

from .conftest import make_checkpoint, random_volume
from .helpers import passthrough_checkpoint, same_partition


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("resample") / "in.zarr"
    write_zarr(path, random_volume((9, 23, 17), dtype="uint16"), chunks=(4, 8, 8), name="raw")
    return open_input(InputConfig(path=path, dataset="raw"))


@settings(max_examples=40, deadline=None)
@given(zoom=st.tuples(*[st.sampled_from([0.37, 0.5, 0.8, 1.0, 1.3, 2.0, 2.6])] * 3),
       data=st.data())
def test_zoomed_read_is_the_same_in_any_box(source, zoom, data):
    """A block's resampled input equals the same region of the whole resampled volume, bit for
    bit, halo (reflected outside the volume) included: what keeps tile-and-stitch exact."""
    vol = ZoomedVolume(source, zoom)
    pad = 3
    whole = vol.read(Box(tuple(-pad for _ in vol.shape), tuple(n + 2 * pad for n in vol.shape)))
    offset = tuple(data.draw(st.integers(-pad, n - 1)) for n in vol.shape)
    shape = tuple(data.draw(st.integers(1, n + pad - o)) for o, n in zip(offset, vol.shape, strict=True))
    part = vol.read(Box(offset, shape))
    ref = whole[(slice(None), *(slice(o + pad, o + pad + s) for o, s in zip(offset, shape, strict=True)))]
    assert part.dtype == np.float32 and part.shape == ref.shape
    assert np.array_equal(part, ref)


def test_zoomed_read_values():
    """Identity zoom reads the source; 1/2 averages voxel pairs; 2 interpolates halfway."""
    src = np.arange(12, dtype=np.float32).reshape(1, 12)
    lo, w = linear_taps(sample_coords(np.arange(6), 0.5, 12), 12)
    assert np.array_equal(interpolate_axis(src, 1, lo, w), src[:, ::2] + 0.5)
    lo, w = linear_taps(sample_coords(np.arange(24), 2.0, 12), 12)
    up = interpolate_axis(src, 1, lo, w)[0]
    assert up[0] == 0 and up[-1] == 11  # clamped at the borders
    assert np.allclose(up[1:-1], np.arange(1, 23) / 2 - 0.25)
    lo, w = linear_taps(sample_coords(np.arange(12), 1.0, 12), 12)
    assert np.array_equal(interpolate_axis(src, 1, lo, w), src)


def test_zoom_factors_and_snapping():
    model = (11.2, 11.9, 11.9)
    assert zoom_factors([11.7, 23.5, 24.1], model, 3) == (1.0, 0.5, 0.5)  # within 10% of 1 and 1/2
    assert zoom_factors(11.9, model, 3) is None
    z = zoom_factors([11.2, 17.9, 17.9], model, 3)
    assert z is not None and z[0] == 1.0 and math.isclose(z[1], 11.9 / 17.9)  # 0.66: interpolated
    assert zoom_factors(6.0, model, 3) == (2.0, 2.0, 2.0)  # one number: every axis, in-plane ratio
    assert snap(0.33) == 1 / 3 and snap(3.2) == 3.0 and snap(0.7) == 0.7 and snap(1.05) == 1.0
    with pytest.raises(DiameterError, match="records no training object diameter; set model.diameter"):
        zoom_factors(20.0, None, 3, "model.checkpoint 'x.pt'")
    with pytest.raises(DiameterError, match="has 2 values for a 3D input"):
        zoom_factors([20.0, 20.0], model, 3)
    assert voxel_diameter(6.0, (0.5, 0.25, 0.25), "x") == (12.0, 24.0, 24.0)  # microns -> voxels per axis
    with pytest.raises(DiameterError, match="records no voxel size"):
        voxel_diameter(6.0, None, "'in.zarr'")


def test_nearest_indices_invert_an_integer_zoom():
    labels = np.repeat(np.repeat(np.arange(12).reshape(3, 4), 2, axis=0), 2, axis=1)  # (6, 8)
    small = labels[::2, ::2]
    idx = [nearest_indices(0, n, 0.5, m) for n, m in zip(labels.shape, small.shape, strict=True)]
    assert np.array_equal(small[np.ix_(*idx)], labels)
    assert zoomed_shape((6, 8), (0.5, 0.5)) == (3, 4)


def test_object_diameters_of_an_ellipsoid():
    z, y, x = np.mgrid[:30, :60, :60]
    ball = ((z - 15) ** 2 / 36 + (y - 30) ** 2 / 144 + (x - 30) ** 2 / 400 <= 1).astype(np.uint32)
    d = object_diameters(ball)
    assert np.allclose(d, (12, 24, 40), rtol=0.06)


def test_blockwise_equals_whole_on_the_resampled_grid(tmp_path):
    """Prediction with input.diameter: blocks of the resampled grid equal one forward pass
    over the whole resampled volume (float64)."""
    ckpt = make_checkpoint(tmp_path / "m.pt", downsample=[[1, 2, 2], [2, 2, 2]])
    vol = random_volume((10, 30, 22))
    write_zarr(tmp_path / "in.zarr", vol, chunks=(5, 8, 8), name="raw")
    cfg = as_config({
        "input": {"path": str(tmp_path / "in.zarr"), "dataset": "raw", "diameter": [10.0, 20.0, 13.0]},
        "output": {"path": str(tmp_path / "out.zarr")},
        "model": {"checkpoint": str(ckpt), "precision": "float64", "diameter": [10.0, 10.0, 20.0]},
        "blocks": {"write_shape": [4, 8, 12]}, "cluster": {"kind": "serial"},
    })
    run = prepare(cfg)
    assert run.zoom == (1.0, 0.5, 20 / 13) and run.plan.volume == (10, 15, 34)
    predict(cfg)
    whole = run.grid.read(Box((0, 0, 0), run.plan.volume))
    ref = predict_whole(Predictor(load_checkpoint(ckpt)[0], precision="float64"), whole, run.stats)
    emb = open_array(tmp_path / "out.zarr" / "embeddings")[...]
    assert emb.shape[1:] == run.plan.volume
    assert np.abs(emb - ref[:-1]).max() <= 1e-10


def _cubes(shape, size, gap):
    labels = np.zeros(shape, dtype=np.uint32)
    n = 0
    for z in range(2, shape[0] - size[0], size[0] + gap):  # even offsets and sizes: exact at zoom 1/2
        for y in range(2, shape[1] - size[1], size[1] + gap):
            for x in range(2, shape[2] - size[2], size[2] + gap):
                n += 1
                labels[z:z + size[0], y:y + size[1], x:x + size[2]] = n
    return labels


def test_segmentation_comes_back_on_the_input_grid(tmp_path):
    """Objects twice as wide in y, x as the model's: segmented at half size, labelled on the
    input grid (same partition as the truth), the objects table in input voxels; the same
    labels with any block size."""
    ckpt = passthrough_checkpoint(tmp_path / "p.pt")
    truth = _cubes((12, 64, 64), (4, 10, 10), 4)
    image = (truth > 0).astype(np.float32) * 2.0
    write_zarr(tmp_path / "in.zarr", image, chunks=(6, 32, 32), name="raw")
    outs = []
    for write in ([4, 8, 8], [12, 16, 32]):
        out = segment({
            "input": {"path": str(tmp_path / "in.zarr"), "dataset": "raw", "diameter": [4.0, 10.0, 10.0]},
            "output": {"path": str(tmp_path / f"out{write[1]}.zarr")},
            "model": {"checkpoint": str(ckpt), "diameter": [4.0, 5.0, 5.0]},
            "blocks": {"write_shape": write}, "cluster": {"kind": "serial"}, "empty": {"skip": False},
            "clustering": {"method": "connectivity", "foreground_threshold": 0.5, "threshold": 0.5},
        })
        seg = open_array(out / "segmentation", mode="r")[...]
        assert seg.shape == truth.shape
        outs.append(seg)
    assert same_partition(outs[0], truth) and same_partition(outs[1], truth)
    import csv

    with open(tmp_path / "out8.zarr" / "objects.csv") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == truth.max() and all(int(row["voxels"]) == 400 for row in table)


def test_zoomed_demo_with_diameter(tmp_path):
    """The demo volume zoomed 2x in-plane: the bundled model splits its nuclei; with
    input.diameter (measured on the zoomed truth) AP@0.5 is back to >= 0.9."""
    from pipeline.demo import DEMO_SPEC
    from pipeline.volume.synthetic import generate

    image, labels = generate(DEMO_SPEC, seed=7)
    big = np.clip(np.rint(ndimage.zoom(image.astype(np.float32), (1, 2, 2), order=1)), 0, 65535).astype(np.uint16)
    truth = ndimage.zoom(labels, (1, 2, 2), order=0)
    write_zarr(tmp_path / "in.zarr", big, chunks=(16, 64, 64), name="raw")
    diameter = [round(d, 1) for d in object_diameters(truth)]
    out = segment({"input": {"path": str(tmp_path / "in.zarr"), "dataset": "raw", "diameter": diameter},
                   "output": {"path": str(tmp_path / "out.zarr")}, "cluster": {"kind": "serial"}})
    seg = open_array(out / "segmentation", mode="r")[...]
    assert seg.shape == big.shape
    assert scores(contingency(seg, truth)).at(0.5)["ap"] >= 0.9


@pytest.mark.parametrize("bad", [0, [-1, 24, 24], "abc", [12, True, 3]])
def test_bad_diameters_are_one_message(tmp_path, bad):
    from pipeline.config import ConfigError, validate_config

    with pytest.raises(ConfigError) as err:
        validate_config({"input": {"path": "x.zarr", "diameter": bad}, "output": {"path": "o.zarr"}})
    msg = str(err.value)
    assert msg.count("input.diameter") == 1 and "one positive number, or one per axis (z, y, x)" in msg
    assert validate_config({"input": {"path": "x", "diameter": 20}, "output": {"path": "o"},
                            "model": {"diameter": 12}}).model.diameter == 12


def test_plan_says_when_resampling_is_unlikely_to_help(tmp_path, capsys):
    """input.diameter of dense anisotropic nuclei (z 7, in-plane 15 voxels for a model of ~12):
    `pipeline plan` names the interpolated upsampling and the axes within the model's tolerance;
    objects 4 voxels across are below the network's resolution; the 2x-zoomed demo gets no warning."""
    from pipeline.cli import main
    from pipeline.volume.resample import zoom_warnings

    model = (11.2, 11.9, 11.9)
    notes = zoom_warnings((11.2 / 7, 11.9 / 15, 11.9 / 15), model, (2, 4, 4))
    assert len(notes) == 2 and "upsampled by interpolation (z x1.60)" in notes[0]
    assert "axis y, x is resampled although" in notes[1]
    tiny = zoom_warnings((11.2 / 4, 1.0, 1.0), model, (2, 4, 4))
    assert any("fewer than 5 voxels across along z (4.0)" in n for n in tiny)
    assert zoom_warnings((1.0, 0.5, 0.5), model, (2, 4, 4)) == [] and zoom_warnings(None, model, (2, 4, 4)) == []
    write_zarr(tmp_path / "in.zarr", np.zeros((16, 32, 32), np.uint16), name="raw")
    argv = ["plan", "--set", f"input.path={tmp_path / 'in.zarr'}", "--set", "input.dataset=raw",
            "--set", f"output.path={tmp_path / 'out.zarr'}", "--set", "input.diameter=[7,15,15]"]
    assert main(argv) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("diameter_check"))
    assert "upsampled by interpolation" in line and "within the +-30%" in line
