"""Cluster factories. The only module that creates Dask clusters.

``serial`` runs everything in this process (no Dask), ``local`` a
``distributed.LocalCluster`` of worker processes, ``local-cuda`` one worker per
GPU through dask-cuda (imported only when asked for), and ``address`` connects
to a running scheduler.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .config import (
    AddressClusterConfig,
    LocalClusterConfig,
    LocalCudaClusterConfig,
    SerialClusterConfig,
)

logger = logging.getLogger(__name__)

AnyCluster = SerialClusterConfig | LocalClusterConfig | LocalCudaClusterConfig | AddressClusterConfig


class ClusterError(RuntimeError):
    """A cluster that cannot be started as configured."""


def torch_threads(cfg: AnyCluster) -> int | None:
    """Torch intra-op threads per worker: explicit, or the cores split between workers."""
    if cfg.torch_threads:
        return cfg.torch_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if isinstance(cfg, LocalClusterConfig):
        return max(1, cores // cfg.n_workers)
    if isinstance(cfg, SerialClusterConfig):
        return cores
    return None


@contextmanager
def open_client(cfg: AnyCluster) -> Iterator[Any]:
    """Yield a ``distributed.Client`` for ``cfg`` (``None`` for ``serial``); tear down on exit."""
    if isinstance(cfg, SerialClusterConfig):
        yield None
        return
    from distributed import Client

    if isinstance(cfg, AddressClusterConfig):
        security = None
        if cfg.tls_ca_file or cfg.tls_cert:
            from distributed.security import Security

            security = Security(
                tls_ca_file=str(cfg.tls_ca_file) if cfg.tls_ca_file else None,
                tls_client_cert=str(cfg.tls_cert) if cfg.tls_cert else None,
                tls_client_key=str(cfg.tls_key) if cfg.tls_key else None,
                require_encryption=True,
            )
        try:
            client = Client(cfg.address, security=security, timeout="30s")
        except OSError as exc:
            raise ClusterError(f"cluster.address: cannot reach scheduler at {cfg.address} ({exc})") from None
        with client:
            logger.info("connected to %s (dashboard %s)", cfg.address, client.dashboard_link)
            yield client
        return

    cluster = _local_cuda(cfg) if isinstance(cfg, LocalCudaClusterConfig) else _local(cfg)
    with cluster, Client(cluster) as client:
        logger.info("Dask dashboard: %s", client.dashboard_link if cfg.dashboard_address else "disabled")
        yield client


def _local(cfg: LocalClusterConfig) -> Any:
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=cfg.n_workers,
        threads_per_worker=cfg.threads_per_worker,
        processes=True,
        memory_limit=cfg.memory_limit,
        dashboard_address=cfg.dashboard_address or ":0",
        host="127.0.0.1",
        resources={"model": 1},
    )


def _local_cuda(cfg: LocalCudaClusterConfig) -> Any:
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
    kwargs: dict[str, Any] = {"dashboard_address": cfg.dashboard_address or ":0", "resources": {"model": 1}}
    if cfg.devices is not None:
        kwargs["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, cfg.devices))
    return LocalCUDACluster(**kwargs)
