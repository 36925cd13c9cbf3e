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
from pathlib import Path
from typing import Any

from .config import (
    AddressClusterConfig,
    LocalClusterConfig,
    LocalCudaClusterConfig,
    SerialClusterConfig,
    SlurmClusterConfig,
)
from .errors import UsageError

logger = logging.getLogger(__name__)

AnyCluster = (
    SerialClusterConfig | LocalClusterConfig | LocalCudaClusterConfig | AddressClusterConfig | SlurmClusterConfig
)


class ClusterError(UsageError):
    """A cluster that cannot be started as configured."""


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def torch_threads(cfg: AnyCluster) -> int | None:
    """Torch intra-op threads per task: explicit, or the cores split between the tasks
    that run at once (worker threads), so prediction and clustering never oversubscribe."""
    if cfg.torch_threads:
        return cfg.torch_threads
    if isinstance(cfg, LocalClusterConfig):
        return max(1, cores() // (cfg.n_workers * cfg.threads_per_worker))
    if isinstance(cfg, SerialClusterConfig):
        return cores()
    if isinstance(cfg, SlurmClusterConfig):  # GPU jobs: every worker thread clusters on one core
        return 1 if cfg.gpus or cfg.gres else max(1, cfg.cores // cfg.processes)
    if isinstance(cfg, LocalCudaClusterConfig):
        return 1
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

    if isinstance(cfg, SlurmClusterConfig):
        with _slurm(cfg) as cluster, Client(cluster, security=cluster.security) as client:
            logger.info("SLURM scheduler %s, dashboard %s, logs in %s", cluster.scheduler_address,
                        client.dashboard_link, cfg.log_directory)
            with SlurmGuard(cluster, cfg):
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


def _slurm(cfg: SlurmClusterConfig) -> Any:
    """A dask-jobqueue SLURMCluster: explicit memory, logs in ``log_directory``, TLS."""
    import shutil

    if shutil.which("sbatch") is None:
        raise ClusterError("cluster.kind 'slurm': no sbatch on PATH; run on a SLURM login node "
                           "(or start a local one with deploy/local-slurm/start.sh)")
    from dask_jobqueue import SLURMCluster

    logs = Path(cfg.log_directory).resolve()
    logs.mkdir(parents=True, exist_ok=True)
    creds = logs / ".credentials"  # temporary TLS files for the workers, readable by this user only
    creds.mkdir(mode=0o700, exist_ok=True)
    creds.chmod(0o700)
    cluster = SLURMCluster(**slurm_options(cfg, logs, creds))
    logger.debug("SLURM job script:\n%s", cluster.job_script())
    if cfg.adaptive is not None:
        cluster.adapt(minimum_jobs=cfg.adaptive.minimum, maximum_jobs=cfg.adaptive.maximum)
    else:
        cluster.scale(jobs=cfg.jobs)
    return cluster


def slurm_options(cfg: SlurmClusterConfig, logs: Path, creds: Path) -> dict[str, Any]:
    """SLURMCluster keywords: explicit memory, GPUs through gres, the ``model`` resource on
    every worker (one prediction at a time; its other threads cluster), logs, TLS."""
    import sys

    directives = list(cfg.job_extra_directives)
    if cfg.gres or cfg.gpus:
        directives.append(f"--gres={cfg.gres or f'gpu:{cfg.gpus}'}")
    return {
        "queue": cfg.queue, "account": cfg.account, "cores": cfg.cores, "processes": cfg.processes,
        "memory": cfg.memory, "walltime": cfg.walltime, "interface": cfg.interface, "log_directory": str(logs),
        "job_extra_directives": directives, "job_script_prologue": list(cfg.job_script_prologue),
        "worker_extra_args": ["--resources", "model=1"], "python": cfg.python or sys.executable,
        "security": True if cfg.tls else None, "shared_temp_directory": str(creds),
        "scheduler_options": {"dashboard_address": cfg.dashboard_address or ":0",
                              **({"interface": cfg.interface} if cfg.interface else {})},
    }


class SlurmGuard:
    """Replaces worker jobs that SLURM lost (cancelled, failed, timed out), at most
    ``max_worker_restarts`` times, checking every ``interval`` seconds."""

    def __init__(self, cluster: Any, cfg: SlurmClusterConfig, interval: float = 2.0) -> None:
        import threading

        self.cluster, self.cfg, self.interval = cluster, cfg, interval
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="slurm-guard", daemon=True)

    def __enter__(self) -> SlurmGuard:
        if self.cfg.adaptive is None:  # adaptive clusters manage their own size
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:
                logger.exception("SLURM guard check failed")

    def dead_jobs(self) -> list[str]:
        import subprocess

        jobs = {name: getattr(job, "job_id", None) for name, job in list(self.cluster.workers.items())}
        ids = [j for j in jobs.values() if j]
        if not ids:
            return []
        out = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(ids)],
                             capture_output=True, text=True, timeout=30)
        alive = {line.split()[0] for line in out.stdout.splitlines()
                 if line.split()[1:] and line.split()[1] in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")}
        return [name for name, j in jobs.items() if j and j not in alive]

    def check(self) -> None:
        dead = self.dead_jobs()
        if not dead:
            return
        if self.restarts >= self.cfg.max_worker_restarts:
            logger.error("SLURM lost worker jobs %s; restart limit %d reached, not replacing",
                         dead, self.cfg.max_worker_restarts)
            self._stop.set()
            return
        for name in dead:
            # forget the dead job entirely: closing it would scancel a job SLURM no longer
            # knows, which fails and stops the cluster from starting the replacement
            self.cluster.worker_spec.pop(name, None)
            self.cluster.workers.pop(name, None)
        self.restarts += len(dead)
        logger.warning("SLURM lost worker jobs %s; submitting replacements (%d/%d)", dead, self.restarts,
                       self.cfg.max_worker_restarts)
        self.cluster.scale(jobs=self.cfg.jobs)
