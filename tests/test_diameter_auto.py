"""``input.diameter: auto``: the objects' size measured by the model on sampled boxes at a ladder of
zooms (pipeline.plan.diameter), against the ground truth; shown by ``pipeline plan``; kept by a rerun
of a begun output; one message where it cannot measure."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest

from pipeline.config import ConfigError, validate_config
from pipeline.errors import UsageError
from pipeline.plan.diameter import (
    DiameterUnknown,
    Measurement,
    agrees,
    auto_zoom,
    box_shape,
    inplane,
    plateau,
    probe_centres,
    refined_zoom,
)
from pipeline.qc.metrics import diameters_per_object, object_diameters
from pipeline.run import prepare, segment
from pipeline.runtime.resume import resume_parts
from pipeline.volume.io import open_input, write_zarr
from pipeline.volume.synthetic import appearance, generate

from .conftest import make_checkpoint


def test_interior_objects_leave_out_those_cut_by_a_face():
    """Objects touching a face measure small: ``interior`` leaves them out; without it the
    per-object diameters are :func:`object_diameters`' (their median)."""
    labels = np.zeros((20, 40, 40), np.uint32)
    zz, yy, xx = np.ogrid[:20, :40, :40]
    labels[(zz - 10) ** 2 / 36 + (yy - 12) ** 2 / 64 + (xx - 12) ** 2 / 64 <= 1] = 1  # whole: 12 x 16 x 16
    labels[(zz - 10) ** 2 / 36 + (yy - 30) ** 2 / 64 + (xx - 38) ** 2 / 64 <= 1] = 2  # cut by x = 39
    both = diameters_per_object(labels)
    assert both.shape == (2, 3) and both[1, 2] < both[0, 2] - 4
    assert np.allclose(np.median(both, axis=0), object_diameters(labels))
    inner = diameters_per_object(labels, interior=True)
    assert inner.shape == (1, 3) and np.allclose(inner[0], both[0])
    assert np.allclose(inner[0], [12, 16, 16], atol=0.6)


def test_the_ladder_takes_the_two_zooms_that_agree():
    """Merged at the smallest zoom, split at the largest: the estimate is the mean of the two
    neighbouring measurements that agree best; a refinement is taken within 25% on every axis."""
    steps = [Measurement((0.25,) * 3, (30.0, 40.0, 40.0), 20), Measurement((0.35,) * 3, (21.0, 25.0, 25.0), 40),
             Measurement((0.5,) * 3, (20.0, 24.0, 24.0), 90), Measurement((0.71,) * 3, (9.0, 12.0, 12.0), 200),
             Measurement((1.0,) * 3, None, 3)]
    k, estimate = plateau(steps)
    assert k == 1 and estimate == pytest.approx((20.5, 24.5, 24.5))
    with pytest.raises(DiameterUnknown):
        plateau([steps[0], Measurement((0.35,) * 3, None, 2)])
    assert agrees((22, 20, 30), (20, 24, 25)) and not agrees((14, 24, 24), (20, 24, 24))
    # flat objects: z zoomed up to look as large as in-plane at the plateau's zoom, never above 1
    assert refined_zoom(0.5, (6.0, 12.0, 12.0)) == (1.0, 0.5, 0.5)
    assert refined_zoom(0.3, (20.0, 30.0, 24.0)) == pytest.approx((0.45, 0.3, 0.375))
    assert inplane((6.0, 9.0, 16.0)) == pytest.approx(12.0)


def test_the_run_zooms_every_axis_by_the_in_plane_size_outside_the_tolerance():
    """auto resamples like a single-number diameter (every axis by the in-plane ratio, never one
    axis alone: flat nuclei stay flat) and not at all within the +-30% the model tolerates."""
    model = (11.2, 11.9, 11.9)
    assert auto_zoom((6.4, 12.8, 12.8), model, 3, "m") is None  # light-sheet: flat in z, in-plane as trained
    assert auto_zoom((7.0, 14.0, 14.0), model, 3, "m") is None  # 18% larger: tolerated
    assert auto_zoom((24.0, 23.8, 23.8), model, 3, "m") == (0.5, 0.5, 0.5)  # snapped to 1/2
    zoom = auto_zoom((20.0, 30.0, 30.0), model, 3, "m")
    assert zoom is not None and zoom[0] == zoom[1] == zoom[2] == pytest.approx(11.9 / 30)
    assert auto_zoom((6.0, 6.0, 6.0), model, 3, "m") == (2.0, 2.0, 2.0)


def test_boxes_are_where_the_objects_are(tmp_path):
    """The probes rank the volume's regions by bright voxels: nuclei only in one corner -> the
    boxes are centred there; the output box holds tens of objects (8 diameters in-plane, 3 in z)."""
    image, _ = generate(appearance("demo", shape=(48, 128, 128)), seed=3)
    image[:, 64:, :] = image.min()
    image[:, :, 64:] = image.min()
    write_zarr(tmp_path / "in.zarr", image, chunks=(16, 64, 64), name="raw")
    vol = open_input(validate_config({"input": {"path": str(tmp_path / "in.zarr"), "dataset": "raw"},
                                      "output": {"path": "o"}}).input)
    from pipeline.network.predict import NormStats

    lo, hi = np.percentile(image, [1, 99.8])
    centres = probe_centres(vol, NormStats(float(lo), float(hi - lo)))
    assert len(centres) == 3 and all(c[1] < 64 and c[2] < 64 for c in centres)
    assert box_shape((11.2, 11.9, 11.9), (2, 4, 4)) == (34, 96, 96)


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_auto_measures_the_demo_look_and_plan_shows_it(tmp_path, scale, capsys):
    """The demo look at its own size and with nuclei twice as large (a held-out seed): auto's
    per-axis diameter is within 15% of the ground truth's, `pipeline plan` prints it, and the zoom
    (one for every axis, from the in-plane size) leaves the first as it is and halves the second."""
    from pipeline.cli import main

    spec = appearance("demo", shape=(48, 128, 128) if scale == 1 else (64, 192, 192))
    spec = replace(spec, radius=tuple(r * scale for r in spec.radius), blur=spec.blur * scale)
    image, labels = generate(spec, seed=4100)
    write_zarr(tmp_path / "in.zarr", image, chunks=(32, 96, 96), name="raw")
    truth = np.median(diameters_per_object(labels, interior=True), axis=0)
    cfg = {"input": {"path": str(tmp_path / "in.zarr"), "dataset": "raw", "diameter": "auto"},
           "output": {"path": str(tmp_path / "out.zarr")}, "cluster": {"kind": "serial"}}
    run = prepare(cfg)
    assert run.estimate is not None and np.all(np.abs(np.array(run.estimate.diameter) / truth - 1) <= 0.15)
    assert run.estimate.steps[-1].objects >= 20
    if scale == 1:
        assert run.zoom is None  # within the snapping tolerance of the model's own size
    else:
        assert run.zoom is not None and all(0.4 < z < 0.6 for z in run.zoom)
    argv = ["plan", "--set", f"input.path={tmp_path / 'in.zarr'}", "--set", "input.dataset=raw",
            "--set", f"output.path={tmp_path / 'out.zarr'}", "--set", "input.diameter=auto"]
    assert main(argv) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("diameter "))
    assert "auto: measured [" in line and "whole objects" in line and "ladder x0.25:" in line


def test_a_rerun_keeps_the_zoom_it_began_with(tmp_path, caplog):
    """A rerun at a begun output is not measured again (a measurement is deterministic on one
    machine, not across CPUs): the recorded zoom is kept, so the resume key is the same."""
    spec = appearance("demo", shape=(32, 96, 96))
    spec = replace(spec, radius=tuple(r * 0.6 for r in spec.radius), blur=spec.blur * 0.6)
    image, _ = generate(spec, seed=4101)
    write_zarr(tmp_path / "in.zarr", image, chunks=(32, 96, 96), name="raw")
    cfg = {"input": {"path": str(tmp_path / "in.zarr"), "dataset": "raw", "diameter": "auto"},
           "output": {"path": str(tmp_path / "out.zarr"), "labels": "none"}, "cluster": {"kind": "serial"}}
    first = prepare(cfg)
    assert first.zoom is not None and first.estimate is not None
    segment(cfg)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        again = prepare(cfg)
    assert again.zoom == first.zoom and again.estimate is None and "kept from the output" in again.diameter
    assert "was begun with zoom" in caplog.text
    assert resume_parts(again, "segment", {}) == resume_parts(first, "segment", {})


def test_auto_says_what_it_cannot_do(tmp_path):
    """`auto` is for input.diameter only; a volume without objects to measure (single bright
    voxels) and a model recording no training diameter are one message each, not a traceback."""
    with pytest.raises(ConfigError, match="or auto"):
        validate_config({"input": {"path": "x", "diameter": "big"}, "output": {"path": "o"}})
    with pytest.raises(ConfigError) as err:
        validate_config({"input": {"path": "x"}, "output": {"path": "o"}, "model": {"diameter": "auto"}})
    assert "or auto" not in str(err.value)
    rng = np.random.default_rng(0)
    specks = rng.integers(100, 103, (32, 96, 96)).astype(np.uint16)  # single bright voxels, nothing whole
    specks[rng.random(specks.shape) < 0.005] = 1000
    write_zarr(tmp_path / "noise.zarr", specks, name="raw")
    cfg = {"input": {"path": str(tmp_path / "noise.zarr"), "dataset": "raw", "diameter": "auto"},
           "output": {"path": str(tmp_path / "out.zarr")}, "cluster": {"kind": "serial"}}
    with pytest.raises(UsageError, match="too few whole objects .* give input.diameter"):
        prepare(cfg)
    ckpt = make_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(UsageError, match="records no training object diameter"):
        prepare({**cfg, "model": {"checkpoint": str(ckpt)}})


def test_a_time_lapse_is_measured_once_on_its_first_time_point(tmp_path, caplog):
    """input.diameter auto on a time-lapse: the first time point is measured, the others keep its zoom
    (one scale over the movie, as a tracker needs; no measurement per time point)."""
    import zarr

    spec = appearance("demo", shape=(32, 96, 96))
    spec = replace(spec, radius=tuple(r * 0.6 for r in spec.radius), blur=spec.blur * 0.6)
    movie = np.stack([generate(spec, seed=4101 + t)[0] for t in range(2)])
    write_zarr(tmp_path / "in.zarr", movie, chunks=(1, 32, 96, 96), name="raw", dims="tzyx")
    cfg = {"input": {"path": str(tmp_path / "in.zarr"), "dataset": "raw", "diameter": "auto"},
           "output": {"path": str(tmp_path / "out.zarr"), "labels": "none"}, "cluster": {"kind": "serial"}}
    with caplog.at_level(logging.INFO, logger="pipeline"):
        out = segment(cfg)
    plans = [dict(zarr.open_group(str(out / "timepoints" / f"t{t:05d}"), mode="r").attrs)["pipeline"]["plan"]
             for t in range(2)]
    assert plans[0]["zoom"] is not None and plans[1]["zoom"] == plans[0]["zoom"]
    assert plans[0]["diameter"].startswith("auto: ") and "kept from the output" in plans[1]["diameter"]
    assert caplog.text.count("was begun with zoom") == 1
