"""Blockwise prediction equals one whole-volume forward pass (and misaligned tiles do not)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.network.checkpoint import load_checkpoint
from pipeline.network.predict import Predictor, predict_tiled, predict_whole
from pipeline.run import as_config, predict, prepare
from pipeline.volume.io import open_array, write_zarr

from .conftest import make_checkpoint, random_volume

CASES_3D = [
    # (spec kwargs, volume shape, write shape)
    ({"downsample": [[2, 2, 2], [2, 2, 2]]}, (16, 16, 16), (4, 4, 4)),  # n = 1
    ({"downsample": [[2, 2, 2], [2, 2, 2]]}, (16, 16, 16), (8, 8, 8)),  # n = 2
    ({"downsample": [[2, 2, 2], [2, 2, 2]]}, (13, 18, 11), (12, 8, 4)),  # n = 3,2,1, not multiple
    ({"downsample": [[1, 2, 2], [2, 2, 2]]}, (9, 21, 26), (4, 12, 8)),  # anisotropic, mixed
]


def _run(tmp_path, spec_kwargs, shape, write, precision, client=None, ndim=3, dtype="uint16", name="out"):
    ckpt = tmp_path / "m.pt"
    if not ckpt.exists():
        make_checkpoint(ckpt, ndim=ndim, **spec_kwargs)
    vol = random_volume(shape, dtype=dtype)
    if not (tmp_path / "in.zarr").exists():
        write_zarr(tmp_path / "in.zarr", vol, chunks=write, name="raw")
    cfg = as_config({
        "input": {"path": str(tmp_path / "in.zarr"), "dataset": "raw"},
        "output": {"path": str(tmp_path / f"{name}.zarr")},
        "model": {"checkpoint": str(ckpt), "precision": precision},
        "blocks": {"write_shape": list(write)},
        "cluster": {"kind": "serial"} if client is None else {"kind": "local"},
    })
    predict(cfg, client=client)
    s = prepare(cfg)
    ref = predict_whole(Predictor(load_checkpoint(ckpt)[0], precision=precision), vol[None], s.stats)
    emb = open_array(tmp_path / f"{name}.zarr" / "embeddings")[...]
    fg = open_array(tmp_path / f"{name}.zarr" / "foreground")[...]
    return np.concatenate([emb, fg[None]]), ref


@pytest.mark.parametrize("spec_kwargs,shape,write", CASES_3D)
def test_blockwise_equals_whole_3d_float64(tmp_path, spec_kwargs, shape, write):
    out, ref = _run(tmp_path, spec_kwargs, shape, write, "float64")
    assert out.dtype == np.float64 and out.shape == ref.shape
    assert np.abs(out - ref).max() <= 1e-10


@pytest.mark.parametrize("write", [(4, 4), (8, 12), (24, 8)])
def test_blockwise_equals_whole_2d(tmp_path, write):
    out, ref = _run(tmp_path, {"downsample": [[2, 2], [2, 2]]}, (29, 22), write, "float64", ndim=2,
                    dtype="uint8")
    assert np.abs(out - ref).max() <= 1e-10


@pytest.mark.parametrize("nclient", [1, 2])
def test_blockwise_equals_whole_on_dask_float32(tmp_path, request, nclient):
    client = request.getfixturevalue(f"client{nclient}")
    out, ref = _run(tmp_path, {"downsample": [[1, 2, 2], [2, 2, 2]]}, (10, 20, 27), (4, 8, 12), "float32",
                    client=client, dtype="float32")
    assert out.dtype == np.float32
    assert np.abs(out - ref).max() <= 1e-5


def test_misaligned_tiles_show_seams():
    """The equality above can fail: tiles off the step grid give seams."""
    from pipeline.network.model import ModelSpec, init_model

    spec = ModelSpec(ndim=2, downsample=[[2, 2], [2, 2]], base_features=4, embed_dim=3)
    pred = Predictor(init_model(spec, seed=1), precision="float64")
    vol = random_volume((40, 40), dtype="float32")[None]
    from pipeline.network.predict import NormStats

    stats = NormStats(0.0, 1.0)
    whole = predict_whole(pred, vol, stats)
    aligned = predict_tiled(pred, vol, stats, (8, 8), origin=(0, 0))
    shifted_aligned = predict_tiled(pred, vol, stats, (8, 8), origin=(4, 8))
    misaligned = predict_tiled(pred, vol, stats, (8, 8), origin=(1, 2))
    assert np.abs(aligned - whole).max() <= 1e-10
    assert np.abs(shifted_aligned - whole).max() <= 1e-10
    assert np.abs(misaligned - whole).max() > 1e-6


def test_stream_equals_single_blocks(tmp_path):
    """Blocks streamed through the network several per forward pass give the outputs of
    one block at a time (on a GPU the same stream overlaps transfers with compute)."""
    from pipeline.network.model import ModelSpec, init_model
    from pipeline.network.predict import NormStats

    pred = Predictor(init_model(ModelSpec(base_features=2, embed_dim=2), seed=1), precision="float64")
    rng = np.random.default_rng(0)
    blocks = [rng.random((1, 44, 44, 44)).astype(np.float32) * 100 for _ in range(5)]
    stats = NormStats(10.0, 50.0)
    streamed = list(pred.stream(iter(blocks), stats, batch_size=3))
    assert len(streamed) == 5
    for block, out in zip(blocks, streamed):
        np.testing.assert_allclose(out, pred(block, stats), rtol=0, atol=1e-12)


def test_prefetch_keeps_several_reads_in_flight(monkeypatch):
    """The GPU task's reads overlap each other, not only its compute: one read at a time fed the
    simulated device of benchmarks/simulated_gpu.py at the read rate whatever its speed. Blocks
    still come out in order."""
    import threading
    import time

    from pipeline.plan.blocks import BlockPlan
    from pipeline.stages import predict as stage

    lock, running, peak = threading.Lock(), [0], [0]

    def read(cfg, box, zoom=None):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return np.full(1, box.offset[0]), {"input": str(box.offset[0])}

    monkeypatch.setattr(stage, "read_input", read)
    blocks = list(BlockPlan((80, 4, 4), (8, 4, 4), (0, 0, 0), (1, 1, 1)))
    out = [(b.read.offset[0], int(d[0]), r["input"]) for b, d, r in stage.prefetched(None, blocks)]
    assert out == [(b.read.offset[0], b.read.offset[0], str(b.read.offset[0])) for b in blocks]
    assert peak[0] == min(stage.PREFETCH_DEPTH, stage.PREFETCH_THREADS) > 1
