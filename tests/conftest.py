from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def client1():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                      host="127.0.0.1", resources={"model": 1}) as cluster, Client(cluster) as c:
        yield c


@pytest.fixture(scope="session")
def client2():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      host="127.0.0.1", resources={"model": 1}) as cluster, Client(cluster) as c:
        yield c


def make_checkpoint(path: Path, seed: int = 0, **spec_kwargs) -> Path:
    from pipeline.network.checkpoint import save_checkpoint
    from pipeline.network.model import ModelSpec, init_model

    spec = ModelSpec(**{"base_features": 3, "embed_dim": 3, **spec_kwargs})
    save_checkpoint(init_model(spec, seed=seed), path)
    return path


def random_volume(shape, seed=0, dtype="uint16") -> np.ndarray:
    rng = np.random.default_rng(seed)
    from scipy import ndimage

    v = ndimage.gaussian_filter(rng.random(shape), 1.0)
    v = (v - v.min()) / (v.max() - v.min())
    if np.dtype(dtype).kind == "f":
        return v.astype(dtype)
    return (v * np.iinfo(dtype).max * 0.8).astype(dtype)
