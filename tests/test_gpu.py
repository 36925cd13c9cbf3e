"""local-cuda: runs where a CUDA GPU and dask-cuda exist, skips elsewhere; the refusal is tested everywhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.cluster.errors import ClusterError
from pipeline.run import segment
from pipeline.volume.io import open_array, write_zarr

from .conftest import random_volume
from .helpers import passthrough_checkpoint

try:
    import dask_cuda  # noqa: F401

    HAVE_DASK_CUDA = True
except Exception:  # noqa: BLE001 - dask-cuda fails in several ways without CUDA
    HAVE_DASK_CUDA = False

needs_gpu = pytest.mark.skipif(not (torch.cuda.is_available() and HAVE_DASK_CUDA),
                               reason="needs a CUDA GPU and dask-cuda (pip install -e '.[gpu]')")


def _cfg(tmp_path, name, cluster, **model):
    vol = random_volume((16, 48, 48), dtype="float32")
    if not (tmp_path / "in.zarr").exists():
        write_zarr(tmp_path / "in.zarr", vol, chunks=(8, 16, 16), name="raw")
        passthrough_checkpoint(tmp_path / "pt.pt")
    return {"input": {"path": str(tmp_path / "in.zarr"), "dataset": "raw"},
            "output": {"path": str(tmp_path / f"{name}.zarr")},
            "model": {"checkpoint": str(tmp_path / "pt.pt"), **model},
            "blocks": {"write_shape": [8, 16, 16]}, "cluster": cluster}


@pytest.mark.skipif(torch.cuda.is_available() and HAVE_DASK_CUDA, reason="GPU present: refusal not reachable")
def test_local_cuda_refused_clearly_without_gpu(tmp_path):
    with pytest.raises(ClusterError, match=r"local-cuda.*(dask-cuda|GPU)"):
        segment(_cfg(tmp_path, "x", {"kind": "local-cuda"}))


@pytest.mark.gpu
@needs_gpu
def test_local_cuda_equals_local_cpu(tmp_path):
    ref = segment(_cfg(tmp_path, "cpu", {"kind": "local", "n_workers": 1}, device="cpu", precision="float64"))
    gpu = segment(_cfg(tmp_path, "gpu", {"kind": "local-cuda"}, device="cuda", precision="float64"))
    np.testing.assert_array_equal(open_array(gpu / "segmentation")[...], open_array(ref / "segmentation")[...])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_blockwise_equals_whole(tmp_path):
    from pipeline.network.model import ModelSpec, init_model
    from pipeline.network.predict import NormStats, Predictor, predict_tiled, predict_whole

    spec = ModelSpec(downsample=[[1, 2, 2], [2, 2, 2]], base_features=8)
    vol = random_volume((20, 64, 64), dtype="float32")[None]
    for precision, tol in (("float64", 1e-10), ("float32", 1e-4)):
        pred = Predictor(init_model(spec), device="cuda", precision=precision)
        whole = predict_whole(pred, vol, NormStats(0.0, 1.0))
        tiled = predict_tiled(pred, vol, NormStats(0.0, 1.0), (4, 16, 16))
        assert np.abs(whole - tiled).max() <= tol


def test_local_cuda_workers_keep_threads_for_clustering():
    """One worker per GPU holds the `model` resource; the node's other cores are its threads."""
    from pipeline.cluster.deploy import torch_threads
    from pipeline.cluster.local import cores, local_cuda_options
    from pipeline.config import LocalCudaClusterConfig

    opts = local_cuda_options(LocalCudaClusterConfig(kind="local-cuda"), visible_gpus=1)
    assert opts["resources"] == {"model": 1} and opts["threads_per_worker"] == cores()
    opts = local_cuda_options(LocalCudaClusterConfig(kind="local-cuda", devices=(0, 1), threads_per_worker=3), 4)
    assert opts["threads_per_worker"] == 3 and opts["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert torch_threads(LocalCudaClusterConfig(kind="local-cuda")) == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["float32", "float64", "tf32", "bfloat16"])
def test_gpu_stream_equals_cpu_reference(precision):
    """The overlapped GPU stream (pinned buffers, copy and compute streams, batches of blocks)
    returns what one block at a time returns on the GPU; float32 and float64 also match the
    CPU within round-off (cuDNN TF32 is off for float32)."""
    from pipeline.network.model import ModelSpec, init_model
    from pipeline.network.predict import NormStats, Predictor

    model = init_model(ModelSpec(base_features=8), seed=2)
    gpu = Predictor(model, device="cuda", precision=precision)
    rng = np.random.default_rng(0)
    blocks = [rng.random((1, 48, 56, 56)).astype(np.float32) for _ in range(7)]
    stats = NormStats(0.2, 0.5)
    streamed = list(gpu.stream(iter(blocks), stats, batch_size=3))
    single = [gpu(b, stats) for b in blocks]
    for s, o in zip(streamed, single):
        np.testing.assert_allclose(s, o, rtol=0, atol=1e-5 if precision in ("float32", "float64") else 5e-2)
    if precision in ("float32", "float64"):
        cpu = Predictor(init_model(ModelSpec(base_features=8), seed=2), device="cpu", precision=precision)
        np.testing.assert_allclose(streamed[0], cpu(blocks[0], stats), rtol=0, atol=1e-4)
