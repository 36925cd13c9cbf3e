"""Cluster factories. The only module that creates Dask clusters.

``serial`` runs everything in this process (no Dask), ``local`` a
``distributed.LocalCluster`` of worker processes, ``local-cuda`` one worker per
GPU through dask-cuda (imported only when asked for), ``address`` connects
to a running scheduler, and ``slurm``, ``pbs``, ``sge``, ``lsf`` and ``htcondor`` submit
workers as batch jobs through dask-jobqueue (one config shape for all five, kept
running by :class:`JobGuard`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import (
    AddressClusterConfig,
    JobqueueClusterConfig,
    LocalClusterConfig,
    LocalCudaClusterConfig,
    SerialClusterConfig,
)
from ..errors import UsageError

logger = logging.getLogger(__name__)

AnyCluster = (
    SerialClusterConfig | LocalClusterConfig | LocalCudaClusterConfig | AddressClusterConfig | JobqueueClusterConfig
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
        with _jobqueue(cfg) as cluster, Client(cluster, security=cluster.security) as client:
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

    cluster = _local_cuda(cfg) if isinstance(cfg, LocalCudaClusterConfig) else _local(cfg)
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
        preload=["pipeline.cluster.workerlog"],  # a worker whose client was killed logs no traceback
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


# ------------------------------------------------------------------ batch schedulers (dask-jobqueue)

CLUSTER_CLASSES = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster", "lsf": "LSFCluster",
                   "htcondor": "HTCondorCluster"}
SUBMIT_COMMANDS = {"slurm": "sbatch", "pbs": "qsub", "sge": "qsub", "lsf": "bsub", "htcondor": "condor_submit"}
LOGIN_HINTS = {"slurm": " (or start a local one with deploy/local-slurm/start.sh)"}
PLACEHOLDER_SCHEDULER = "tls://<scheduler-address>:8786"


def jobs(cfg: JobqueueClusterConfig) -> int:
    """Jobs to submit for ``n_workers`` worker processes (``processes`` per job), rounded up."""
    return math.ceil(cfg.n_workers / cfg.processes)


def walltime_seconds(walltime: str) -> int:
    """``[D-]HH:MM:SS`` in seconds."""
    days, _, clock = walltime.rpartition("-")
    h, m, s = (int(x) for x in clock.split(":"))
    return (int(days) if days else 0) * 86400 + h * 3600 + m * 60 + s


def format_walltime(seconds: int, kind: str) -> str:
    """The walltime as ``kind`` writes it: LSF ``H:MM`` (minutes rounded up), SLURM ``[D-]HH:MM:SS``,
    PBS and SGE ``H:MM:SS`` (hours past 24)."""
    if kind == "lsf":
        minutes = math.ceil(seconds / 60)
        return f"{minutes // 60}:{minutes % 60:02d}"
    h, rest = divmod(seconds, 3600)
    clock = f"{h % 24 if kind == 'slurm' and h >= 24 else h:02d}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{h // 24}-{clock}" if kind == "slurm" and h >= 24 else clock


def lifetime(cfg: JobqueueClusterConfig) -> tuple[float, float] | None:
    """Seconds a worker lives and the random stagger around it (``--lifetime``, ``--lifetime-stagger``):
    explicit, or (``auto``) the walltime less a margin of 10%, at most 5 min and at least 10 s (at most
    half the walltime), staggered by a quarter of the margin so workers retire before the job is killed."""
    if cfg.worker_lifetime is None:
        return None
    if cfg.worker_lifetime != "auto":
        from dask.utils import parse_timedelta

        seconds = float(parse_timedelta(cfg.worker_lifetime, default="s"))
        return seconds, round(min(seconds / 20, 60.0), 1)
    wall = walltime_seconds(cfg.walltime)
    margin = min(max(0.1 * wall, 10.0), 300.0, wall / 2)
    return wall - margin, round(margin / 4, 1)


def gpu_directives(cfg: JobqueueClusterConfig) -> list[str]:
    """The header lines (without their prefix) that request the job's GPUs; PBS asks for them in its
    ``select`` resource list instead (see :func:`jobqueue_options`), unless ``gpu_request`` is given."""
    if cfg.gpu_request:
        return [cfg.gpu_request]
    if not cfg.gpus or cfg.kind == "pbs":
        return []
    return [{"slurm": f"--gres=gpu:{cfg.gpus}", "sge": f"-l gpu={cfg.gpus}", "lsf": f'-gpu "num={cfg.gpus}"',
             "htcondor": f"request_gpus = {cfg.gpus}"}[cfg.kind]]


def _condor_directives(lines: list[str]) -> dict[str, str]:
    """HTCondor submit commands ``key = value`` as the dict HTCondorCluster takes."""
    return dict((k.strip(), v.strip()) for k, _, v in (line.partition("=") for line in lines))


def jobqueue_options(cfg: JobqueueClusterConfig, logs: Path, creds: Path | None) -> dict[str, Any]:
    """Keywords of the dask-jobqueue cluster class of ``cfg.kind``: explicit cores, memory and walltime,
    GPUs per system (:func:`gpu_directives`), the ``model`` resource on every worker (one prediction at a
    time; its other threads cluster), a worker lifetime inside the walltime, logs, TLS."""
    import sys

    from dask.utils import parse_bytes

    wall = walltime_seconds(cfg.walltime)
    # the preload keeps deliberate shutdowns (lifetime, end of run) from writing tracebacks to job logs
    extra_args = ["--resources", "model=1", "--preload", "pipeline.cluster.workerlog", "--preload-nanny", "pipeline.cluster.workerlog"]
    life = lifetime(cfg)
    if life is not None:
        extra_args += ["--lifetime", f"{life[0]:g}s", "--lifetime-stagger", f"{life[1]:g}s"]
    directives = [*cfg.job_extra_directives, *gpu_directives(cfg)]
    kw: dict[str, Any] = {
        "cores": cfg.cores, "processes": cfg.processes, "memory": cfg.memory, "interface": cfg.interface,
        "log_directory": str(logs), "job_script_prologue": list(cfg.job_script_prologue),
        "worker_extra_args": extra_args, "python": cfg.python or sys.executable, "job_name": "dask-worker",
        "worker_command": "pipeline.cluster.worker",  # dask-worker, a failed start in one line (pipeline/cluster/worker.py)
        "security": True if cfg.tls else None,
        "scheduler_options": {"dashboard_address": cfg.dashboard_address or ":0",
                              **({"interface": cfg.interface} if cfg.interface else {})},
    }
    if creds is not None:
        kw["shared_temp_directory"] = str(creds)
    if cfg.kind != "htcondor":
        kw.update(queue=cfg.queue, walltime=format_walltime(wall, cfg.kind), job_extra_directives=directives)
    if cfg.kind == "slurm":
        kw["account"] = cfg.account
    elif cfg.kind == "pbs":
        from dask_jobqueue.pbs import pbs_format_bytes_ceil

        gpus = f":ngpus={cfg.gpus}" if cfg.gpus and not cfg.gpu_request else ""
        kw.update(account=cfg.account, resource_spec=cfg.resource_spec or (
            f"select=1:ncpus={cfg.cores}:mem={pbs_format_bytes_ceil(parse_bytes(cfg.memory))}{gpus}"))
    elif cfg.kind == "sge":
        kw.update(project=cfg.account,
                  resource_spec=cfg.resource_spec or f"h_vmem={math.ceil(parse_bytes(cfg.memory) / 2**20)}M")
    elif cfg.kind == "lsf":
        kw.update(project=cfg.account, ncpus=cfg.cores, mem=parse_bytes(cfg.memory))
    else:  # htcondor: submit commands `key = value`; walltime only bounds the worker lifetime
        condor = _condor_directives(directives)
        if cfg.account:
            condor.setdefault("accounting_group", cfg.account)
        kw.update(disk=cfg.disk, job_extra_directives=condor)
    return kw


def cluster_class(kind: str) -> Any:
    """The dask-jobqueue cluster class for ``kind``."""
    import dask_jobqueue

    return getattr(dask_jobqueue, CLUSTER_CLASSES[kind])


def job_script(cfg: JobqueueClusterConfig) -> str:
    """The worker job script dask-jobqueue submits for ``cfg``, made without starting a scheduler or
    submitting anything (the scheduler address and TLS file flags are filled in at run time)."""
    kw = jobqueue_options(cfg, Path(cfg.log_directory), None)
    for cluster_only in ("security", "scheduler_options"):
        kw.pop(cluster_only)
    if cfg.tls:
        kw["protocol"] = "tls://"
    return str(cluster_class(cfg.kind).job_cls(PLACEHOLDER_SCHEDULER, name="dask-worker-0", **kw).job_script())


class _RecordsSubmitErrors:
    """A job whose submission failure (the queue refusing it) is recorded as ``submit_error`` for the
    guard to count, instead of an exception with a traceback from the cluster's event loop."""

    submit_error: str | None = None

    async def start(self) -> None:
        try:
            await super().start()  # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001 - any submission failure is the guard's to report
            from distributed.core import Status

            self.submit_error = " ".join(str(exc).split())[:300] or type(exc).__name__
            logger.warning("worker job submission failed: %s", self.submit_error)
            self.status = Status.running  # nothing to wait for; the guard removes it


def _jobqueue(cfg: JobqueueClusterConfig) -> Any:
    """A dask-jobqueue cluster of ``cfg.kind``: explicit memory, logs in ``log_directory``, TLS."""
    import shutil

    submit = SUBMIT_COMMANDS[cfg.kind]
    if shutil.which(submit) is None:
        raise ClusterError(f"cluster.kind '{cfg.kind}': no {submit} on PATH; run on a login node of the "
                           f"{cfg.kind.upper()} cluster{LOGIN_HINTS.get(cfg.kind, '')}")
    logs = Path(cfg.log_directory).resolve()
    logs.mkdir(parents=True, exist_ok=True)
    creds = logs / ".credentials"  # temporary TLS files for the workers, readable by this user only
    creds.mkdir(mode=0o700, exist_ok=True)
    creds.chmod(0o700)
    base = cluster_class(cfg.kind)
    job_cls = type(f"Guarded{base.job_cls.__name__}", (_RecordsSubmitErrors, base.job_cls), {})
    cluster = base(job_cls=job_cls, **jobqueue_options(cfg, logs, creds))
    logger.debug("%s job script:\n%s", cfg.kind, cluster.job_script())
    if cfg.adaptive is not None:  # bounds in worker processes, as n_workers
        cluster.adapt(minimum=cfg.adaptive.minimum, maximum=cfg.adaptive.maximum)
    else:
        cluster.scale(jobs=jobs(cfg))
    return cluster


class WorkersLost(UsageError):
    """Every worker is gone and none can be replaced: the run stops (and resumes when rerun)."""


class JobGuard:
    """Keeps the worker jobs of a dask-jobqueue cluster: a job that ended is replaced. A job that
    ended after its worker lifetime (retired before its walltime) is replaced freely; one lost to a
    fault (cancelled, failed, killed, refused by the queue) counts against ``max_worker_restarts``.
    When the budget is spent and no worker is left or coming, the guard records a
    :class:`WorkersLost` error in ``fatal`` and calls ``on_fatal`` (the engine stops waiting).

    A job has ended when SLURM no longer lists it (``squeue``), or, elsewhere, when the workers it had
    have been gone for ``grace`` seconds."""

    def __init__(self, cluster: Any, cfg: JobqueueClusterConfig, interval: float = 2.0, grace: float = 10.0,
                 on_fatal: Callable[[WorkersLost], None] | None = None) -> None:
        import threading

        self.cluster, self.cfg, self.interval, self.grace, self.on_fatal = cluster, cfg, interval, grace, on_fatal
        self.restarts = 0  # jobs lost to faults and replaced
        self.retired = 0  # jobs that ended at their worker lifetime, replaced
        self.lost = 0  # jobs lost to faults beyond the budget, not replaced
        self.fatal: WorkersLost | None = None
        self._seen: dict[str, float] = {}  # job -> when its workers were first seen
        self._gone: dict[str, float] = {}  # job -> since when its workers are missing
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="job-guard", daemon=True)

    def __enter__(self) -> JobGuard:
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
            except Exception as exc:  # noqa: BLE001 - keep guarding; one line, no traceback
                logger.warning("worker job check failed: %s: %s", type(exc).__name__, exc)

    def _worker_names(self, job: str) -> set[str]:
        p = self.cfg.processes
        return {job} if p == 1 else {f"{job}-{i}" for i in range(p)}

    def _alive_slurm(self, ids: list[str]) -> set[str]:
        import subprocess

        out = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(ids)],
                             capture_output=True, text=True, timeout=30)
        if out.returncode != 0 and not out.stdout.strip():
            raise RuntimeError(f"squeue failed: {out.stderr.strip()[:200]}")
        return {line.split()[0] for line in out.stdout.splitlines()
                if line.split()[1:] and line.split()[1] in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")}

    def ended(self, now: float) -> dict[str, tuple[bool, str]]:
        """Jobs that ended: name -> (retired at their lifetime, what happened)."""
        connected = {w.get("name") for w in self.cluster.scheduler_info.get("workers", {}).values()}
        jobs_now = dict(list(self.cluster.workers.items()))
        for name in jobs_now:
            if self._worker_names(name) & connected:
                self._seen.setdefault(name, now)
                self._gone.pop(name, None)
            elif name in self._seen:
                self._gone.setdefault(name, now)
        ids = [str(j.job_id) for j in jobs_now.values() if getattr(j, "job_id", None)]
        alive = self._alive_slurm(ids) if self.cfg.kind == "slurm" and ids else set()
        life = lifetime(self.cfg)
        out: dict[str, tuple[bool, str]] = {}
        for name, job in jobs_now.items():
            if getattr(job, "submit_error", None):
                out[name] = (False, f"submission failed: {job.submit_error}")
                continue
            if self.cfg.kind == "slurm":
                gone = bool(getattr(job, "job_id", None)) and str(job.job_id) not in alive
            else:
                gone = name in self._gone and now - self._gone[name] >= self.grace
            if not gone:
                continue
            ran = self._gone.get(name, now) - self._seen[name] if name in self._seen else 0.0
            retired = life is not None and ran >= life[0] - life[1] - self.interval - 2
            out[name] = (retired, f"job {getattr(job, 'job_id', None) or name} "
                         + (f"retired after {ran:.0f} s" if retired else "ended"))
        return out

    def check(self, now: float | None = None) -> None:
        import time

        if self.fatal is not None:
            return
        now = time.monotonic() if now is None else now
        ended = self.ended(now)
        for name in ended:
            # forget the job entirely: closing it would cancel a job the queue no longer knows
            self.cluster.worker_spec.pop(name, None)
            self.cluster.workers.pop(name, None)
            self._seen.pop(name, None)
            self._gone.pop(name, None)
        faults = [why for retired, why in ended.values() if not retired]
        retirees = len(ended) - len(faults)
        if retirees:
            self.retired += retirees
            logger.info("%d worker job(s) retired at their lifetime; submitting replacements", retirees)
        if faults:
            budget = max(0, self.cfg.max_worker_restarts - self.restarts)
            self.restarts += min(budget, len(faults))
            self.lost += len(faults) - min(budget, len(faults))
            logger.warning("lost worker job(s): %s; %s (%d/%d restarts used)", "; ".join(faults),
                           "replacing" if len(faults) <= budget else "restart budget spent",
                           self.restarts, self.cfg.max_worker_restarts)
        if ended and self.cfg.adaptive is None:
            self.cluster.scale(jobs=max(0, jobs(self.cfg) - self.lost))
        if self.lost and not self.cluster.workers and not self.cluster.scheduler_info.get("workers"):
            self.fatal = WorkersLost(
                f"cluster: every {self.cfg.kind} worker job is gone and cluster.max_worker_restarts "
                f"({self.cfg.max_worker_restarts}) is spent (last: {faults[-1] if faults else 'lost'}); see "
                f"{self.cfg.log_directory}, then rerun the same command to resume")
            logger.debug("guard: %s", self.fatal)
            self._stop.set()
            if self.on_fatal is not None:
                self.on_fatal(self.fatal)

