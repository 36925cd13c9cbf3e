from __future__ import annotations

import pickle

import pytest
import torch

from pipeline.model import CheckpointError, ModelSpec, init_model, load_checkpoint, save_checkpoint


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
