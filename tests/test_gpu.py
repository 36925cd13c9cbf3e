"""local-cuda: runs where a CUDA GPU and dask-cuda exist, skips elsewhere; the refusal is tested everywhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.deploy import ClusterError
from pipeline.io import open_array, write_zarr
from pipeline.run import segment

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
    from pipeline.model import ModelSpec, init_model
    from pipeline.predict import NormStats, Predictor, predict_tiled, predict_whole

    spec = ModelSpec(downsample=[[1, 2, 2], [2, 2, 2]], base_features=8)
    vol = random_volume((20, 64, 64), dtype="float32")[None]
    for precision, tol in (("float64", 1e-10), ("float32", 1e-4)):
        pred = Predictor(init_model(spec), device="cuda", precision=precision)
        whole = predict_whole(pred, vol, NormStats(0.0, 1.0))
        tiled = predict_tiled(pred, vol, NormStats(0.0, 1.0), (4, 16, 16))
        assert np.abs(whole - tiled).max() <= tol
