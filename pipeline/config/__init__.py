"""Run configuration: frozen, validated pydantic models shared by YAML, CLI and API.

Unknown keys are errors (with a suggestion for the nearest valid key), every
model is immutable, and :func:`load_config` turns validation failures into a
one-line :class:`ConfigError` that names the field, the bad value and the fix.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .validation import ConfigError, Frozen, apply_overrides, describe_errors, read_yaml, validate_model

__all__ = [
    "Config", "ConfigError", "Frozen", "apply_overrides", "describe_errors", "load_config", "read_yaml",
    "validate_config", "validate_model",
]

PositiveShape = tuple[Annotated[int, Field(gt=0)], ...]


def check_diameter(value: Any) -> Any:
    """A diameter: one positive number, or a list of them (one per axis); one message otherwise."""
    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    if value is None or (number(value) and value > 0):
        return value
    if isinstance(value, list | tuple) and value and all(number(v) and v > 0 for v in value):
        return tuple(value)
    raise PydanticCustomError(
        "diameter", "give the typical object diameter in voxels: one positive number, or one per axis "
        "(z, y, x), e.g. [12, 24, 24]", {"value": value})


class InputConfig(Frozen):
    """Where the raw volume is: a zarr array, an OME-Zarr image (group with multiscales), a TIFF
    file, a folder of 2D TIFF slices or an HDF5 file (BigDataViewer layout included)."""

    path: Path
    dataset: str | None = Field(
        None, description="array (or OME-Zarr image group) inside a zarr `path`, or HDF5 dataset (e.g. `raw`); "
        "none: `path` itself, an HDF5 file's only dataset, or a BigDataViewer file's `t00000/s00/<level>/cells`"
    )
    scale_level: int = Field(0, ge=0, description="OME-Zarr multiscale or BigDataViewer level (0 = full resolution)")
    channel: int | None = Field(
        None, ge=0, description="the one channel to read from a multi-channel input (BigDataViewer: the setup); "
        "none: every channel"
    )
    diameter: float | tuple[float, ...] | None = Field(
        None, description="typical object diameter in voxels of this input: one per axis (z, y, x), or one number "
        "(then every axis is scaled by the model's in-plane diameter over it, like cellpose's diameter). The input "
        "is resampled so objects have the model's training diameter (`pipeline model info` shows it) and the labels "
        "are mapped back; none: no resampling"
    )
    diameter_unit: Literal["voxel", "physical"] = Field(
        "voxel", description="physical: input.diameter is in the input's units (OME-Zarr, TIFF, HDF5 voxel size), "
        "converted per axis, so one number suits anisotropic voxels")
    unreadable: Literal["error", "empty"] = Field(
        "error", description="an input chunk, TIFF page or HDF5 chunk that cannot be read (corrupt, truncated): "
        "error = stop with one line naming it and its region; empty = read it as the array's fill value (0) and "
        "go on; the regions are recorded in the result's attributes (pipeline.unreadable_input), "
        "qc/unreadable.json and the report")
    chunk_cache_mib: int | None = Field(
        None, ge=0, description="decoded input chunks kept per process (MiB), so that neighbouring blocks' halos "
        "decode each zarr chunk once; none: 1/8 of the worker's memory limit (the machine's, serially), at most "
        "2048; 0: no cache (every read decodes the chunks it touches). TIFF and HDF5 inputs are not cached")

    _diameter = field_validator("diameter", mode="before")(classmethod(lambda cls, v: check_diameter(v)))


class OutputConfig(Frozen):
    path: Path
    overwrite: bool = Field(False, description="replace an existing output (never done silently)")
    objects_csv: bool | None = Field(
        None, description="also write objects.csv (the table is always written as Parquet parts under objects/); "
        "none: only when there are at most 100,000 objects"
    )
    labels: Literal["auto", "image", "standalone", "none"] = Field(
        "auto", description="where the OME-Zarr label image (a pyramid of the segmentation) goes: image = under "
        "the input OME-Zarr image's labels/ group (napari shows it with the image); standalone = "
        "<output.path>/labels/<label_name>; auto = image for an OME-Zarr input, else standalone; none = not written"
    )
    label_name: str = Field(
        "segmentation", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=128,
        description="name of the label image (its group under labels/); an existing one is replaced only with "
        "output.overwrite"
    )
    changed_input: Literal["refuse", "recompute"] = Field(
        "refuse", description="resuming an interrupted run whose finished blocks now read different input: "
        "refuse (one line naming the input and where it changed), or recompute those blocks and every later "
        "stage (--recompute-changed)")
    resume_check: Literal["metadata", "content"] = Field(
        "metadata", description="how a resumed run checks that finished blocks' input is unchanged: metadata = "
        "the size and modification time of the chunk files each block read, re-reading and comparing the "
        "content digest only where they differ; content = re-read every finished block and compare digests")
    check_space: bool = Field(
        True, description="refuse to start when the output's filesystem has clearly less free space than the "
        "run's estimated output (`pipeline plan` shows the estimate)")


class ModelConfig(Frozen):
    checkpoint: str = Field("demo", description="checkpoint file, or `demo` for the bundled model")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["float32", "tf32", "float64", "bfloat16"] = Field(
        "float32", description="float32: IEEE on every device; tf32 (GPU): TF32 convolutions and matmuls; "
        "bfloat16 runs under autocast; tf32 and bfloat16 are NOT exact across tiles"
    )
    batch_size: int = Field(1, gt=0, description="blocks per forward pass (GPU: more blocks keep it busier)")
    channels_last: bool = Field(True, description="channels-last memory format: measured 14% faster on CPU, as exact")
    diameter: float | tuple[float, ...] | None = Field(
        None, description="typical object diameter (voxels per axis, or one number for every axis) of the model's "
        "training data, for input.diameter; none: the checkpoint's record")

    _diameter = field_validator("diameter", mode="before")(classmethod(lambda cls, v: check_diameter(v)))


class BlocksConfig(Frozen):
    write_shape: PositiveShape | None = Field(
        None, description="output block per axis, a multiple of the model step; none: automatic (target_size, "
        "else the write shape of least predicted cost that fits the memory, see pipeline.plan.cost)"
    )
    target_size: Annotated[int, Field(gt=0)] | None = Field(
        None, description="write size per axis (rounded to the model step, at most the volume) when write_shape "
        "is not given, instead of the cost choice; none: the write shape of least predicted cost whose batch "
        "of blocks fits a quarter of a CPU worker's memory or half the GPU's (`pipeline plan` shows candidates)"
    )
    gpu_memory_gib: float | None = Field(
        None, gt=0, description="GPU memory to size automatic blocks for, when planning where that GPU is not "
        "visible (a login node); none: the visible GPU's, if the model runs on one")
    blocks_per_task: Annotated[int, Field(gt=0)] | None = Field(
        None, description="blocks per task; none: automatic (>= 16 tasks per worker, <= 512 MiB of embeddings "
        "per task, at least model.batch_size)"
    )


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


class ClusteringConfig(Frozen):
    method: str | None = Field(
        None, description="a method of pipeline.clustering (connectivity, agglomeration, meanshift); none: the "
        "method calibrated with the model, else connectivity")
    foreground_threshold: float | None = Field(None, gt=0, lt=1, description="none: model default, else 0.5")
    threshold: float | None = Field(
        None, gt=0, description="connectivity/agglomeration: max embedding distance of neighbouring voxels; "
        "none: model default")
    merge_distance: float | None = Field(
        None, gt=0, description="agglomeration: max distance of adjacent regions' mean embeddings; none: model default")
    grow_threshold: float | None = Field(
        None, gt=0, lt=1, description="agglomeration: cores grow into voxels of foreground above this; none: model "
        "default, else min(0.5, foreground_threshold)")
    grow_distance: float | None = Field(
        None, ge=0, description="agglomeration: how far cores grow (voxels; 0: no growth); none: model default, else 3")
    bandwidth: float | None = Field(None, gt=0, description="meanshift bandwidth; none: model default")
    min_size: int | None = Field(None, ge=0, description="objects smaller than this (voxels) are removed, after "
                                 "merging; voxels of the grid the model sees (resampled with input.diameter); none: "
                                 "the model's calibrated value, else 0")
    backend: Literal["auto", "torch", "numpy"] = Field(
        "auto", description="torch (GPU or CPU threads) or numpy (the reference), same results; auto: torch on "
        "a GPU, else the faster of the two per method on a CPU core")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where torch clusters: auto = the worker's GPU when it has one, else its CPU threads")


    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str | None) -> str | None:
        from ..clustering import METHOD_NAMES  # every registered method, also ones added at run time

        if value is not None and value not in METHOD_NAMES:
            close = difflib.get_close_matches(value, METHOD_NAMES, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"use one of {', '.join(METHOD_NAMES)}"
            raise PydanticCustomError("unknown_method", "unknown clustering method; {hint}", {"hint": hint})
        return value


class MergeConfig(Frozen):
    min_contact: int = Field(1, gt=0, description="meanshift/agglomeration: voxel pairs needed to merge two "
                             "fragments across a block face")
    max_distance: float | None = Field(
        None, gt=0, description="meanshift/agglomeration: max distance of fragment mean embeddings across a block "
        "face; none: bandwidth (meanshift) or merge_distance (agglomeration)"
    )


class MaskConfig(Frozen):
    """A mask array (zarr): blocks where it is 0 everywhere are skipped; any shape whose ratio
    to the volume is the same on every block (e.g. a downsampled mask)."""

    path: Path
    dataset: str | None = None


class EmptyConfig(Frozen):
    """Skipping blocks of empty space (background): not predicted, not clustered."""

    skip: bool = Field(True, description="skip blocks whose input (halo included) never exceeds `threshold`")
    threshold: float = Field(
        0.1, description="background level in normalised input units (0 = the low percentile, 1 = the high one); "
        "a block is empty when no voxel of its input exceeds it"
    )
    level: int | None = Field(
        None, ge=0, description="OME-Zarr level to decide from (one low-resolution read per block); none: the "
        "coarsest level with >= 4 voxels per block axis, or full resolution while each block is read"
    )
    mask: MaskConfig | None = Field(None, description="decide from this mask instead (0 = skip)")


class Config(Frozen):
    input: InputConfig
    output: OutputConfig
    model: ModelConfig = ModelConfig()
    blocks: BlocksConfig = BlocksConfig()
    empty: EmptyConfig = EmptyConfig()
    cluster: ClusterConfig = LocalClusterConfig()
    clustering: ClusteringConfig = ClusteringConfig()
    merge: MergeConfig = MergeConfig()

    @field_validator("cluster", mode="before")
    @classmethod
    def _default_kind(cls, value: Any) -> Any:
        if isinstance(value, Mapping) and "kind" not in value:
            return {**value, "kind": "local"}
        return value


# ---------------------------------------------------------------- loading


def validate_config(data: Mapping[str, Any]) -> Config:
    return validate_model(Config, data, "invalid config")


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Read, override and validate a YAML config."""
    data = read_yaml(path) if path is not None else {}
    return validate_config(apply_overrides(data, overrides))
