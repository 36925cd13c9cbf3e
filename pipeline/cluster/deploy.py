"""Opening a cluster: the only module that starts Dask clusters, and the engine on one.

``serial`` runs everything in this process (no Dask), ``local`` a
``distributed.LocalCluster`` of worker processes, ``local-cuda`` one worker per
GPU through dask-cuda (imported only when asked for; both in :mod:`pipeline.cluster.local`),
``address`` connects to a running scheduler, and ``slurm``, ``pbs``, ``sge``, ``lsf`` and
``htcondor`` submit workers as batch jobs through dask-jobqueue (one config shape for all five,
:mod:`pipeline.cluster.jobqueue`, kept running by :class:`pipeline.cluster.guard.JobGuard`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..config import (
    AddressClusterConfig,
    JobqueueClusterConfig,
    LocalClusterConfig,
    LocalCudaClusterConfig,
    SerialClusterConfig,
)
from ..runtime.engine import Engine
from .errors import ClusterError
from .guard import JobGuard
from .jobqueue import jobqueue_cluster
from .local import cores, local_cluster, local_cuda_cluster

logger = logging.getLogger(__name__)

AnyCluster = (
    SerialClusterConfig | LocalClusterConfig | LocalCudaClusterConfig | AddressClusterConfig | JobqueueClusterConfig
)


def torch_threads(cfg: AnyCluster) -> int | None:
    """Torch intra-op threads per task: explicit, or the cores split between the tasks
    that run at once (worker threads), so prediction and clustering never oversubscribe."""
    if cfg.torch_threads:
        return cfg.torch_threads
    if isinstance(cfg, LocalClusterConfig):
        return max(1, cores() // (cfg.n_workers * cfg.threads_per_worker))
    if isinstance(cfg, SerialClusterConfig):
        return cores()
    if isinstance(cfg, JobqueueClusterConfig):  # GPU jobs: every worker thread clusters on one core
        return 1 if cfg.gpus or cfg.gpu_request else max(1, cfg.cores // cfg.processes)
    if isinstance(cfg, LocalCudaClusterConfig):
        return 1
    return None


@dataclass
class Session:
    """An open cluster: its ``client`` (``None`` for ``serial``) and, for batch jobs, the guard whose
    ``fatal`` error ends the run (:meth:`check` raises it)."""

    client: Any
    guard: JobGuard | None = None

    def check(self) -> None:
        """Raise the error that ended the cluster's workers, if any."""
        if self.guard is not None and self.guard.fatal is not None:
            raise self.guard.fatal


@contextmanager
def open_client(cfg: AnyCluster) -> Iterator[Any]:
    """Yield a ``distributed.Client`` for ``cfg`` (``None`` for ``serial``); tear down on exit."""
    with open_session(cfg) as session:
        yield session.client


def cancel_all(client: Any, reason: str) -> None:
    """Cancel every future of ``client`` in this process (from any thread): whoever waits on one
    wakes up with a ``CancelledError``."""

    def cancel() -> None:
        for state in list(client.futures.values()):
            state.cancel(reason=reason, msg=reason)

    client.loop.add_callback(cancel)


@contextmanager
def open_session(cfg: AnyCluster) -> Iterator[Session]:
    """A :class:`Session` for ``cfg``; clusters are torn down on exit (the client closed first)."""
    if isinstance(cfg, SerialClusterConfig):
        yield Session(None)
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
            yield Session(client)
        return

    if isinstance(cfg, JobqueueClusterConfig):
        with jobqueue_cluster(cfg) as cluster, Client(cluster, security=cluster.security) as client:
            logger.info("%s scheduler %s, dashboard %s, logs in %s", cfg.kind.upper(), cluster.scheduler_address,
                        dashboard_link(client.dashboard_link, cfg.dashboard_address), cfg.log_directory)
            with JobGuard(cluster, cfg, on_fatal=lambda err: cancel_all(client, str(err))) as guard:
                session = Session(client, guard)
                try:
                    yield session
                except Exception:
                    if guard.fatal is not None:  # the workers' loss, not what it caused, is the error
                        raise guard.fatal from None
                    raise
        return

    cluster = local_cuda_cluster(cfg) if isinstance(cfg, LocalCudaClusterConfig) else local_cluster(cfg)
    with cluster, Client(cluster) as client:
        logger.info("Dask dashboard: %s", client.dashboard_link if cfg.dashboard_address else "disabled")
        yield Session(client)


def dashboard_link(link: str, address: str | None) -> str:
    """The dashboard URL where it listens: distributed names the scheduler's host (the cluster
    interface), but a dashboard bound to a loopback ``address`` (the default) is only reachable
    there, e.g. through ``ssh -L``."""
    if not address:
        return "disabled"
    host = address.rsplit(":", 1)[0]
    if host not in ("127.0.0.1", "localhost"):
        return link
    from urllib.parse import urlsplit

    parts = urlsplit(link)
    return f"{parts.scheme}://{host}:{parts.port}{parts.path} (on this machine; from yours: ssh -L {parts.port}:{host}:{parts.port} <this host>)"


@contextmanager
def open_engine(cluster: Any, client: Any = None, progress: bool = False) -> Iterator[Engine]:
    """An engine on the caller's ``client`` when given, else on the cluster configured by
    ``cluster`` (a ``cluster:`` config section; opened here and closed on exit)."""
    if isinstance(client, Session):  # a session opened by the caller for several runs (time-lapses)
        yield Engine(client.client, progress, abort=client.check)
        return
    if client is not None:
        yield Engine(client, progress)
        return
    with open_session(cluster) as session:
        yield Engine(session.client, progress, abort=session.check)
