"""Job-queue clusters: workers as batch jobs through dask-jobqueue (``slurm``, ``pbs``, ``sge``,
``lsf``, ``htcondor``; one config shape for all five): each scheduler's keywords and directives, the
worker lifetime inside the walltime, the job script, and the cluster whose refused submissions
:class:`pipeline.cluster.guard.JobGuard` counts."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from ..config import JobqueueClusterConfig
from .errors import ClusterError

logger = logging.getLogger(__name__)

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


def jobqueue_cluster(cfg: JobqueueClusterConfig) -> Any:
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
