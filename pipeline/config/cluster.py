"""The ``cluster:`` section, one model per kind: ``serial`` (:class:`SerialClusterConfig`), ``local``,
``local-cuda``, ``address``, and the job queues (:class:`JobqueueClusterConfig`: SLURM, PBS, SGE, LSF,
HTCondor); :data:`ClusterConfig` is their union, told apart by ``kind``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .validation import Frozen


class SerialClusterConfig(Frozen):
    """Everything in this process, no Dask: for debugging and small volumes."""

    kind: Literal["serial"]
    torch_threads: int | None = Field(None, gt=0)


class LocalClusterConfig(Frozen):
    kind: Literal["local"] = "local"
    n_workers: int = Field(2, gt=0)
    threads_per_worker: int = Field(1, gt=0)
    torch_threads: int | None = Field(
        None, gt=0, description="torch threads per worker; none: cores / workers"
    )
    memory_limit: str = Field("auto", description="per worker, e.g. '4GiB'; 'auto' splits the machine")
    dashboard_address: str | None = Field("127.0.0.1:0", description="none disables the dashboard")


class LocalCudaClusterConfig(Frozen):
    kind: Literal["local-cuda"]
    devices: tuple[int, ...] | None = Field(None, description="GPU indices; none: all visible")
    threads_per_worker: int | None = Field(
        None, gt=0, description="threads per GPU worker: one predicts (holding the GPU), the others cluster; "
        "none: the node's cores / GPUs")
    torch_threads: int | None = Field(None, gt=0, description="none: 1 (each worker thread clusters on one core)")
    dashboard_address: str | None = "127.0.0.1:0"


class AddressClusterConfig(Frozen):
    kind: Literal["address"]
    address: str = Field(..., description="scheduler address, e.g. tls://host:8786")
    tls_ca_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    torch_threads: int | None = Field(None, gt=0)


class AdaptiveConfig(Frozen):
    """Let Dask grow and shrink the cluster; bounds in Dask worker processes, like ``n_workers``."""

    minimum: int = Field(1, ge=0, description="fewest Dask worker processes (jobs x processes)")
    maximum: int = Field(..., gt=0, description="most Dask worker processes (jobs x processes)")


JOBQUEUE_KINDS = ("slurm", "pbs", "sge", "lsf", "htcondor")
WALLTIME = r"^(\d+-)?\d+:\d{2}:\d{2}$"


class JobqueueClusterConfig(Frozen):
    """Workers as batch jobs through dask-jobqueue (SLURM, PBS, SGE, LSF, HTCondor): one shape for
    every scheduler, mapped to each one's directives by :func:`pipeline.cluster.jobqueue.jobqueue_options`;
    TLS with temporary credentials by default."""

    # keys of older versions: a one-line error names the key to use instead
    renamed: ClassVar[dict[str, str]] = {
        "jobs": "use cluster.n_workers (Dask worker processes in all; jobs = n_workers / processes)",
        "gres": "use cluster.gpu_request (the raw directive, e.g. '--gres=gpu:a100:1')",
        "project": "use cluster.account (SLURM/PBS -A, SGE/LSF -P, HTCondor accounting_group)",
    }

    kind: Literal["slurm", "pbs", "sge", "lsf", "htcondor"]
    queue: str | None = Field(None, description="partition or queue (SLURM -p, PBS/SGE/LSF -q; not HTCondor)")
    account: str | None = Field(None, description="account or project charged (SLURM/PBS -A, SGE/LSF -P, "
                                "HTCondor accounting_group)")
    cores: int = Field(1, gt=0, description="cores per job")
    processes: int = Field(1, gt=0, description="Dask worker processes per job (their threads share the cores)")
    memory: str = Field("4GiB", description="memory per job, always requested explicitly")
    walltime: str = Field("01:00:00", description="[D-]HH:MM:SS per job (HTCondor: only "
                          "for the worker lifetime)")
    gpus: int = Field(0, ge=0, description="GPUs per job: SLURM --gres=gpu:N, PBS ngpus=N in the select, "
                      "SGE -l gpu=N, LSF -gpu \"num=N\", HTCondor request_gpus = N")
    gpu_request: str | None = Field(None, description="raw GPU directive replacing the one `gpus` makes, e.g. "
                                    "'--gres=gpu:a100:1' (SLURM) or '-l gpu_card=1' (SGE)")
    resource_spec: str | None = Field(None, description="PBS/SGE: the raw `-l` resource list replacing the one "
                                      "made from cores, memory and gpus")
    disk: str = Field("1GiB", description="HTCondor: disk per job (request_disk)")
    job_extra_directives: tuple[str, ...] = Field(
        (), description="more header lines without the prefix, e.g. ['--qos=high'] (SLURM) or "
        "['+MaxRuntime = 3600'] (HTCondor `key = value`)")
    job_script_prologue: tuple[str, ...] = Field(
        (), description="shell lines before the worker starts (module load, conda activate, source venv)")
    interface: str | None = Field(None, description="network interface of workers and scheduler, e.g. ib0")
    log_directory: Path = Field(Path("slurm-logs"), description="worker job logs, on a filesystem the "
                                "login node sees (temporary TLS credentials in .credentials)")
    n_workers: int = Field(2, gt=0, description="Dask worker processes in all (jobs = n_workers / processes, "
                           "rounded up); ignored with adaptive")
    adaptive: AdaptiveConfig | None = None
    max_worker_restarts: int = Field(3, ge=0, description="replace jobs lost to faults (cancelled, failed, "
                                     "refused) at most this often; retired jobs do not count")
    worker_lifetime: str | None = Field(
        "auto", description="workers retire gracefully after this long and their jobs are replaced: a duration "
        "('50m', '3000s'); auto: walltime minus min(10%, 5 min), at least 10 s; none: never")
    tls: bool = Field(True, description="encrypt and authenticate with temporary TLS credentials")
    dashboard_address: str | None = "127.0.0.1:0"
    python: str | None = Field(None, description="python on the compute nodes, with the pipeline installed; "
                               "none: this interpreter")
    torch_threads: int | None = Field(None, gt=0)

    @field_validator("walltime")
    @classmethod
    def _walltime(cls, value: str) -> str:
        if not re.match(WALLTIME, value):
            raise PydanticCustomError("walltime", "expected [D-]HH:MM:SS, e.g. '04:00:00' or '1-12:00:00'", {})
        return value

    @field_validator("worker_lifetime")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is None or value == "auto":
            return value
        from dask.utils import parse_timedelta

        try:
            seconds = parse_timedelta(value, default="s")
        except (ValueError, KeyError, TypeError):
            seconds = None
        if not seconds or seconds <= 0:
            raise PydanticCustomError("duration", "expected 'auto', none or a positive duration like '50m'", {})
        return value

    @model_validator(mode="after")
    def _consistent(self) -> JobqueueClusterConfig:
        if self.kind == "htcondor" and self.queue:
            raise PydanticCustomError("htcondor_queue", "cluster.queue: HTCondor has no queues; select machines "
                                      "with job_extra_directives, e.g. ['requirements = (Arch == \"X86_64\")']",
                                      {})
        if self.kind != "htcondor" and any(" = " in d for d in self.job_extra_directives):
            raise PydanticCustomError("directive", "cluster.job_extra_directives: `key = value` lines are "
                                      "HTCondor's; give {kind} directives without the prefix, e.g. '--qos=high'",
                                      {"kind": self.kind})
        if self.cores < self.processes:
            raise PydanticCustomError("cores", "cluster.cores {cores} is less than cluster.processes {processes}: every "
                                      "worker process needs at least one core; raise cores or lower processes",
                                      {"cores": self.cores, "processes": self.processes})
        return self


ClusterConfig = Annotated[
    SerialClusterConfig | LocalClusterConfig | LocalCudaClusterConfig | AddressClusterConfig | JobqueueClusterConfig,
    Field(discriminator="kind"),
]

