from __future__ import annotations

import json
import pickle

import pytest
import torch

from pipeline.network.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pipeline.network.model import ModelSpec, init_model


@pytest.mark.parametrize(
    "ndim,downsample,upsample",
    [
        (3, ((2, 2, 2), (2, 2, 2)), "transposed"),
        (3, ((1, 2, 2), (2, 2, 2)), "nearest"),
        (2, ((2, 2), (2, 2), (2, 2)), "transposed"),
        (2, ((3, 3),), "nearest"),
        (3, ((1, 4, 4),), "transposed"),
    ],
)
def test_shapes_step_context(ndim, downsample, upsample):
    spec = ModelSpec(ndim=ndim, downsample=downsample, upsample=upsample, base_features=2, embed_dim=2)
    model = init_model(spec)
    for n in (1, 2):
        out = tuple(n * s for s in spec.step)
        x = torch.zeros(1, 1, *spec.input_shape(out))
        assert model(x).shape == (1, 3, *out)
        assert spec.input_shape(out) == tuple(o + 2 * c for o, c in zip(out, spec.context))


def test_invalid_input_size_is_refused():
    spec = ModelSpec(base_features=2)
    model = init_model(spec)
    with pytest.raises(RuntimeError, match="not valid"):
        model(torch.zeros(1, 1, 45, 44, 44))
    with pytest.raises(ValueError, match="multiple of step"):
        spec.input_shape((6, 8, 8))


def test_spec_validation():
    with pytest.raises(ValueError, match="has 2 factors but ndim is 3"):
        ModelSpec(downsample=[[2, 2]])
    with pytest.raises(ValueError):
        ModelSpec(unknown_key=1)


def test_checkpoint_roundtrip(tmp_path):
    spec = ModelSpec(ndim=2, downsample=[[2, 2]], base_features=2, embed_dim=2)
    model = init_model(spec, seed=3)
    path = save_checkpoint(model, tmp_path / "m.pt", extra={"trained": False})
    loaded, extra = load_checkpoint(path)
    assert loaded.spec == spec and extra == {"trained": False}
    x = torch.randn(1, 1, *spec.input_shape((4, 4)))
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))


class _Evil:
    def __reduce__(self):
        return (print, ("code executed from checkpoint",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoint_cannot_run_code(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": "pipeline-unet", "obj": _Evil()}, path)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)
    assert "code executed" not in capsys.readouterr().out
    path.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no file"):
        load_checkpoint(tmp_path / "missing.pt")


def test_incompatible_checkpoint(tmp_path):
    spec = ModelSpec(ndim=2, downsample=[[2, 2]], base_features=2)
    payload = torch.load(save_checkpoint(init_model(spec), tmp_path / "m.pt"), weights_only=True)
    payload["spec"] = ModelSpec(ndim=2, downsample=[[2, 2]], base_features=4).model_dump_json()
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(tmp_path / "bad.pt")


def test_open_checkpoint_reads_typed_metadata_once():
    from pipeline.network.checkpoint import DEMO_CHECKPOINT, checkpoint_digest, open_checkpoint
    from pipeline.network.metadata import Calibration

    ckpt = open_checkpoint("demo")
    assert ckpt.path == DEMO_CHECKPOINT.resolve() and ckpt.path.is_absolute()
    assert ckpt.digest == checkpoint_digest("demo") == checkpoint_digest(DEMO_CHECKPOINT)
    assert isinstance(ckpt.info.clustering, Calibration) and ckpt.info.clustering.method == "agglomeration"
    assert ckpt.info.clustering.values()["min_size"] == ckpt.info.clustering.min_size
    assert "bandwidth" not in ckpt.info.clustering.values()  # not calibrated for agglomeration
    assert ckpt.info.trained and ckpt.spec == ckpt.model.spec and not ckpt.model.training
    # the dict view is the stored metadata, and the typed one writes it back byte for byte
    _, extra = load_checkpoint("demo")
    assert extra["clustering"]["method"] == "agglomeration"
    assert ckpt.info.to_json() == torch.load(DEMO_CHECKPOINT, weights_only=True)["extra"]


def test_checkpoint_metadata_is_validated(tmp_path):
    from pipeline.network.checkpoint import open_checkpoint
    from pipeline.network.metadata import CheckpointInfo

    spec = ModelSpec(ndim=2, downsample=[[2, 2]], base_features=2, embed_dim=2)
    good = {"trained": True, "iterations": 7, "clustering": {"method": "connectivity", "threshold": 1.5}}
    payload = torch.load(save_checkpoint(init_model(spec), tmp_path / "m.pt", extra=good), weights_only=True)
    payload["extra"] = json.dumps({**good, "clustering": {"method": "connectivity", "treshold": 1.5}})
    torch.save(payload, tmp_path / "typo.pt")
    for read in (open_checkpoint, load_checkpoint):
        with pytest.raises(CheckpointError, match="unknown key 'clustering.treshold': did you mean 'threshold'") as err:
            read(tmp_path / "typo.pt")
        assert "typo.pt" in str(err.value) and "\n" not in str(err.value)
    # keys outside the clustering section that this version does not know are kept
    payload["extra"] = json.dumps({**good, "note": "from another tool"})
    torch.save(payload, tmp_path / "note.pt")
    assert open_checkpoint(tmp_path / "note.pt").info.model_extra == {"note": "from another tool"}
    assert load_checkpoint(tmp_path / "note.pt")[1]["note"] == "from another tool"
    # saving validates too, from a dict or a CheckpointInfo
    with pytest.raises(CheckpointError, match=r"iterations: Input should be greater than or equal to 0 \(got -1\)"):
        save_checkpoint(init_model(spec), tmp_path / "bad.pt", extra={"iterations": -1})
    assert not (tmp_path / "bad.pt").exists()
    save_checkpoint(init_model(spec), tmp_path / "info.pt", CheckpointInfo.model_validate(good))
    assert load_checkpoint(tmp_path / "info.pt")[1] == good
