"""The bundled generalist (issue 30): opened by name like `demo`, the same architecture (so inference
costs the same), calibrated, and far better than `demo` on a look `demo` was not trained on."""

from __future__ import annotations

import re

import yaml

from pipeline.cli import main
from pipeline.network.checkpoint import (
    BUNDLED,
    DEMO_AUTHORS,
    checkpoint_authors,
    checkpoint_digest,
    open_checkpoint,
)
from pipeline.qc.metrics import contingency, scores
from pipeline.run import segment
from pipeline.volume.io import open_array, write_zarr
from pipeline.volume.synthetic import appearance, generate


def test_the_generalist_is_bundled_beside_demo_with_its_architecture():
    demo, ours = open_checkpoint("demo"), open_checkpoint("generalist")
    assert ours.path == BUNDLED["generalist"].resolve() and ours.digest == checkpoint_digest("generalist")
    assert ours.digest != demo.digest and ours.spec == demo.spec  # other weights, the same network
    assert ours.info.trained and ours.info.clustering is not None and ours.info.clustering.method == "agglomeration"
    assert checkpoint_authors(ours) == DEMO_AUTHORS and ours.info.diameter is not None


def test_the_generalist_segments_light_sheet_nuclei_that_demo_merges(tmp_path):
    """A light-sheet-like volume (z twice as coarse, depth attenuation, haze, few photons; a seed no
    training or calibration used): the bundled demo model merges most nuclei (AP@0.5 0.59 measured),
    the generalist separates them (0.96 measured) through the full blockwise pipeline."""
    image, labels = generate(appearance("lightsheet", shape=(32, 96, 96)), seed=77)
    write_zarr(tmp_path / "in.zarr", image, name="raw")
    ap = {}
    for model in ("demo", "generalist"):
        out = segment({"input": {"path": str(tmp_path / "in.zarr"), "dataset": "raw"},
                       "output": {"path": str(tmp_path / f"{model}.zarr"), "labels": "none"},
                       "model": {"checkpoint": model}, "cluster": {"kind": "serial"}})
        ap[model] = scores(contingency(open_array(out / "segmentation", mode="r")[:], labels)).at(0.5)["ap"]
    assert ap["generalist"] >= 0.9 and ap["generalist"] >= ap["demo"] + 0.25, ap


def test_demo_command_takes_the_model_and_its_crops_fine_tune_it(tmp_path, capsys):
    out = tmp_path / "ls"
    assert main(["-q", "demo", "--look", "lightsheet", "--model", "generalist", "--crops", "1", "--size", "24", "96",
                 "96", "--workers", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert float(re.search(r"AP@0.5 ([0-9.]+)", text).group(1)) >= 0.85, text
    assert yaml.safe_load((out / "finetune.yaml").read_text())["init"] == "generalist"
    assert "bundled model 'generalist'" in (out / "finetune.yaml").read_text()
    assert main(["model", "info", "generalist"]) == 0
