"""Clusters on this machine: a ``distributed.LocalCluster`` of worker processes (``local``) and one
worker per GPU through dask-cuda (``local-cuda``, imported only when asked for)."""

from __future__ import annotations

import os
from typing import Any

from ..config import LocalClusterConfig, LocalCudaClusterConfig
from .errors import ClusterError


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def local_cluster(cfg: LocalClusterConfig) -> Any:
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=cfg.n_workers,
        threads_per_worker=cfg.threads_per_worker,
        processes=True,
        memory_limit=cfg.memory_limit,
        dashboard_address=cfg.dashboard_address or ":0",
        host="127.0.0.1",
        resources={"model": 1},
        preload=["pipeline.cluster.workerlog"],  # a worker whose client was killed logs no traceback
    )


def local_cuda_cluster(cfg: LocalCudaClusterConfig) -> Any:
    try:
        from dask_cuda import LocalCUDACluster
    except Exception as exc:  # noqa: BLE001 - dask-cuda raises various errors without CUDA
        raise ClusterError(
            "cluster.kind 'local-cuda' needs dask-cuda and a CUDA GPU "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); install "
            "with `pip install 'pipeline[gpu]'` on a GPU machine, or use cluster.kind 'local'"
        ) from None
    import torch

    if not torch.cuda.is_available():
        raise ClusterError("cluster.kind 'local-cuda': torch sees no CUDA GPU; use cluster.kind 'local'")
    return LocalCUDACluster(**local_cuda_options(cfg, torch.cuda.device_count()))


def local_cuda_options(cfg: LocalCudaClusterConfig, visible_gpus: int) -> dict[str, Any]:
    """LocalCUDACluster keywords: one worker per GPU, holding the ``model`` resource (one
    prediction at a time), with the node's other cores as threads for clustering."""
    gpus = len(cfg.devices) if cfg.devices is not None else max(1, visible_gpus)
    kwargs: dict[str, Any] = {"dashboard_address": cfg.dashboard_address or ":0", "resources": {"model": 1},
                              "threads_per_worker": cfg.threads_per_worker or max(1, cores() // gpus)}
    if cfg.devices is not None:
        kwargs["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, cfg.devices))
    return kwargs
