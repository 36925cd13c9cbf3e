"""bioimage.io packages: an export validates with the bioimage.io tools (format and a run of both
weight formats against the test tensors) and runs back through `pipeline run` identically."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import yaml

from pipeline.cli import main
from pipeline.network.checkpoint import CheckpointError, open_checkpoint
from pipeline.network.modelzoo import export_bioimageio
from pipeline.run import segment
from pipeline.volume.io import open_array, write_zarr
from pipeline.volume.synthetic import generate


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo") / "demo-model"
    assert main(["model", "export", "demo", "--format", "bioimageio", "--out", str(out), "--author", "Tester"]) == 0
    return out / "rdf.yaml"


def test_export_validates_with_bioimageio(package):
    spec = pytest.importorskip("bioimageio.spec")
    with spec.ValidationContext(perform_io_checks=True):
        descr = spec.load_description(package)
    assert type(descr).__name__ == "ModelDescr", descr.validation_summary.display() if hasattr(descr, "validation_summary") else descr
    assert descr.validation_summary.status in ("valid-format", "passed")
    core = pytest.importorskip("bioimageio.core")
    summary = core.test_model(package)  # runs the state dict and the TorchScript weights on the test tensors
    failed = [(d.name, [e.msg for e in d.errors]) for d in summary.details if d.status != "passed"]
    assert summary.status == "passed", failed
    assert any("torchscript" in d.name for d in summary.details)
    rdf = yaml.safe_load(package.read_text())
    ctx = open_checkpoint("demo").spec.context
    z = rdf["outputs"][0]["axes"][2]["size"]
    assert z == {"tensor_id": "raw", "axis_id": "z", "offset": -2 * ctx[0]}
    assert "Exact tiling" in (package.parent / "README.md").read_text()


def test_exported_package_runs_back_identically(package, tmp_path):
    ckpt, demo = open_checkpoint(package), open_checkpoint("demo")
    assert ckpt.spec == demo.spec and ckpt.info == demo.info
    assert all(torch.equal(v, demo.model.state_dict()[k]) for k, v in ckpt.model.state_dict().items())
    image, _ = generate(None, seed=3, shape=(24, 64, 64), radius=(5.0, 9.0), density=0.3)
    write_zarr(tmp_path / "in.zarr", image, name="raw")
    segs = []
    for name, model in (("demo", "demo"), ("zoo", str(package))):
        out = segment({"input": {"path": str(tmp_path / "in.zarr"), "dataset": "raw"},
                       "output": {"path": str(tmp_path / f"{name}.zarr"), "labels": "none"},
                       "model": {"checkpoint": model}, "blocks": {"write_shape": [12, 32, 32]},
                       "cluster": {"kind": "serial"}})
        segs.append(open_array(out / "segmentation", mode="r")[:])
    assert segs[0].max() > 5 and np.array_equal(segs[0], segs[1])


def test_packages_that_do_not_fit_are_one_line_errors(package, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(package.parent, bad)
    (bad / "weights.pt").write_bytes((bad / "weights.pt").read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="does not match its sha256"):
        open_checkpoint(bad / "rdf.yaml")
    rdf = yaml.safe_load(package.read_text())
    del rdf["config"]
    (bad / "rdf.yaml").write_text(yaml.safe_dump(rdf))
    with pytest.raises(CheckpointError, match="not this project's valid-convolution U-Net"):
        open_checkpoint(bad / "rdf.yaml")
    assert main(["model", "export", "demo", "--out", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not empty" in err
    assert hashlib.sha256((bad / "weights.pt").read_bytes()).hexdigest() != rdf["weights"]["pytorch_state_dict"]["sha256"]


def test_export_of_a_trained_checkpoint_documents_its_validation(tmp_path):
    from pipeline.network.checkpoint import save_checkpoint
    from pipeline.network.model import ModelSpec, init_model

    spec = ModelSpec(ndim=2, downsample=[[2, 2]], base_features=2, embed_dim=2)
    save_checkpoint(init_model(spec), tmp_path / "m.pt", {"trained": True, "iterations": 10,
                                                           "metrics": {"ap50": 0.8, "avap": 0.5},
                                                           "fine_tuned_from": "demo"})
    rdf = export_bioimageio(tmp_path / "m.pt", tmp_path / "pkg")
    doc = (rdf.parent / "README.md").read_text()
    assert "AP@0.5 0.800" in doc and "fine-tuned from `demo`" in doc
    assert open_checkpoint(rdf).info.metrics == {"ap50": 0.8, "avap": 0.5}


def test_exported_packages_always_name_authors(tmp_path, monkeypatch):
    """--author wins; else the checkpoint's recorded authors (the bundled model: the project's); else
    whoever exports (git's user.name). Never an empty list."""
    import yaml

    from pipeline.network import metadata
    from pipeline.network.checkpoint import DEMO_AUTHORS, save_checkpoint
    from pipeline.network.model import ModelSpec, init_model

    def authors(rdf):
        return [a["name"] for a in yaml.safe_load(rdf.read_text())["authors"]]

    monkeypatch.setattr(metadata, "local_author", lambda: "Ada Lovelace")
    monkeypatch.setattr("pipeline.network.modelzoo.local_author", lambda: "Ada Lovelace")
    spec = ModelSpec(ndim=2, downsample=[[2, 2]], base_features=2, embed_dim=2)
    save_checkpoint(init_model(spec), tmp_path / "none.pt", {"trained": True})
    save_checkpoint(init_model(spec), tmp_path / "rec.pt", {"trained": True, "authors": ["Grace Hopper", "Alan Turing"]})
    assert authors(export_bioimageio(tmp_path / "none.pt", tmp_path / "a")) == ["Ada Lovelace"]
    assert authors(export_bioimageio(tmp_path / "rec.pt", tmp_path / "b")) == ["Grace Hopper", "Alan Turing"]
    assert authors(export_bioimageio(tmp_path / "rec.pt", tmp_path / "c", authors=("K. Me",))) == ["K. Me"]
    assert authors(export_bioimageio("demo", tmp_path / "d")) == list(DEMO_AUTHORS)


def test_local_author_falls_back_to_the_account(monkeypatch, tmp_path):
    from pipeline.network.metadata import local_author

    monkeypatch.setenv("HOME", str(tmp_path))  # no git user.name here
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "none"))
    assert local_author().strip()
    (tmp_path / "cfg").write_text("[user]\n\tname = Rosalind Franklin\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "cfg"))
    assert local_author() == "Rosalind Franklin"
