"""Run configuration: frozen, validated pydantic models shared by YAML, CLI and API.

Unknown keys are errors (with a suggestion for the nearest valid key), every
model is immutable, and :func:`load_config` turns validation failures into a
one-line :class:`ConfigError` that names the field, the bad value and the fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from .errors import UsageError


class ConfigError(UsageError):
    """A configuration the user must fix (exit code 2 on the CLI)."""


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


PositiveShape = tuple[Annotated[int, Field(gt=0)], ...]


class InputConfig(Frozen):
    """Where the raw volume is: a zarr array, or an OME-Zarr image (group with multiscales)."""

    path: Path
    dataset: str | None = Field(
        None, description="array (or OME-Zarr image group) inside `path`; none: `path` itself"
    )
    scale_level: int = Field(0, ge=0, description="OME-Zarr multiscale level (0 = full resolution)")


class OutputConfig(Frozen):
    path: Path
    overwrite: bool = Field(False, description="replace an existing output (never done silently)")


class ModelConfig(Frozen):
    checkpoint: str = Field("demo", description="checkpoint file, or `demo` for the bundled model")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["float32", "float64", "bfloat16"] = Field(
        "float32", description="bfloat16 runs under autocast and is NOT exact across tiles"
    )
    channels_last: bool = Field(True, description="channels-last memory format: measured 14% faster on CPU, as exact")


class BlocksConfig(Frozen):
    write_shape: PositiveShape | None = Field(
        None, description="output block per axis, a multiple of the model step; none: automatic"
    )
    target_size: Annotated[int, Field(gt=0)] = Field(
        64, description="preferred write size per axis when write_shape is automatic"
    )
    blocks_per_task: Annotated[int, Field(gt=0)] = 1


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
    torch_threads: int | None = Field(None, gt=0)
    dashboard_address: str | None = "127.0.0.1:0"


class AddressClusterConfig(Frozen):
    kind: Literal["address"]
    address: str = Field(..., description="scheduler address, e.g. tls://host:8786")
    tls_ca_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    torch_threads: int | None = Field(None, gt=0)


class AdaptiveConfig(Frozen):
    minimum: int = Field(1, ge=0, description="fewest SLURM jobs")
    maximum: int = Field(..., gt=0, description="most SLURM jobs")


class SlurmClusterConfig(Frozen):
    """Workers as SLURM jobs through dask-jobqueue; TLS with temporary credentials by default."""

    kind: Literal["slurm"]
    queue: str | None = Field(None, description="partition (#SBATCH -p)")
    account: str | None = Field(None, description="#SBATCH -A")
    cores: int = Field(1, gt=0, description="cores per job")
    processes: int = Field(1, gt=0, description="worker processes per job")
    memory: str = Field("4GiB", description="memory per job (always requested explicitly)")
    walltime: str = "01:00:00"
    gpus: int = Field(0, ge=0, description="GPUs per job (#SBATCH --gres=gpu:N)")
    gres: str | None = Field(None, description="raw gres string, e.g. 'gpu:a100:1' (overrides gpus)")
    job_extra_directives: tuple[str, ...] = Field((), description="more #SBATCH lines, e.g. ['--qos=high']")
    job_script_prologue: tuple[str, ...] = Field((), description="shell lines before the worker starts")
    interface: str | None = Field(None, description="network interface of workers and scheduler, e.g. ib0")
    log_directory: Path = Field(Path("slurm-logs"), description="worker job logs")
    jobs: int = Field(2, gt=0, description="jobs to start (ignored with adaptive)")
    adaptive: AdaptiveConfig | None = None
    max_worker_restarts: int = Field(3, ge=0, description="replace lost worker jobs at most this often")
    tls: bool = Field(True, description="encrypt and authenticate with temporary TLS credentials")
    dashboard_address: str | None = "127.0.0.1:0"
    python: str | None = Field(None, description="python on the compute nodes; none: this interpreter")
    torch_threads: int | None = Field(None, gt=0)


ClusterConfig = Annotated[
    SerialClusterConfig | LocalClusterConfig | LocalCudaClusterConfig | AddressClusterConfig | SlurmClusterConfig,
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
                                 "merging; none: the model's calibrated value, else 0")


    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str | None) -> str | None:
        from .clustering import METHOD_NAMES  # every registered method, also ones added at run time

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


class Config(Frozen):
    input: InputConfig
    output: OutputConfig
    model: ModelConfig = ModelConfig()
    blocks: BlocksConfig = BlocksConfig()
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


M = TypeVar("M", bound=BaseModel)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through unions, ``Optional``, tuples)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in get_args(annotation):
        found += [m for m in _models_in(arg) if m not in found]
    return found


def _locate(model: type[BaseModel], loc: Sequence[str | int]) -> tuple[list[str], list[str]]:
    """The readable path of an error location and the keys valid in the section it ends in.

    Pydantic puts the member of a union (its class name or discriminator tag) into the
    location; those parts are dropped, and the valid keys of a union are those of all its
    members. Sequence indices and keys of plain mappings are kept.
    """
    models: list[type[BaseModel]] = [model]
    path: list[str] = []
    for i, part in enumerate(loc):
        name = str(part)
        owners = [m for m in models if name in m.model_fields]
        if owners:
            path.append(name)
            models = []
            for m in owners:
                models += [c for c in _models_in(m.model_fields[name].annotation) if c not in models]
        elif isinstance(part, int) or not models or i == len(loc) - 1 or name not in _labels(models):
            path.append(name)
    if len(models) == 1:
        return path, list(models[0].model_fields)
    return path, sorted({f for m in models for f in m.model_fields})


def _labels(models: Sequence[type[BaseModel]]) -> set[str]:
    """What pydantic may insert into a location for a union of ``models``."""
    if len(models) < 2:
        return set()
    tags = {str(v) for m in models for f in m.model_fields.values() for v in get_args(f.annotation)
            if isinstance(v, str | int)}
    return {m.__name__ for m in models} | tags


def _describe(model: type[BaseModel], error: Mapping[str, Any]) -> str:
    """One error of ``model.model_validate`` as a line naming the key, the value and the fix."""
    path, known = _locate(model, error["loc"])
    where = ".".join(path) or "config"
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(path[-1] if path else "?", known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"valid keys: {', '.join(known)}"
        return f"unknown key '{where}': {hint}"
    if error["type"] == "missing":
        return f"missing required key '{where}'"
    value = error.get("input")
    if not path and isinstance(value, Mapping):  # a check of the whole document: its text is the message
        return f"{where}: {error['msg']}"
    return f"{where}: {error['msg']} (got {value!r})"


def describe_errors(model: type[BaseModel], exc: ValidationError) -> str:
    """All errors of validating ``model``, one line, separated by ``;``."""
    return "; ".join(_describe(model, e) for e in exc.errors())


def validate_model(model: type[M], data: Mapping[str, Any], what: str) -> M:
    """``model.model_validate(data)``, or a one-line :class:`ConfigError` starting with ``what``
    (e.g. ``invalid config``) that names each bad key or value and suggests the fix."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{what}: {describe_errors(model, exc)}") from None


def validate_config(data: Mapping[str, Any]) -> Config:
    return validate_model(Config, data, "invalid config")


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides; values are parsed as YAML (``[16,32,32]``, ``true``)."""
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in data.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set '{item}': expected key.sub=value, e.g. blocks.write_shape=[16,32,32]")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = {}
            elif not isinstance(child, Mapping):
                raise ConfigError(f"--set '{item}': '{part}' is a value, not a section")
            node[part] = child = dict(child)
            node = child
        node[parts[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' does not exist (give the path of a YAML file)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{p}' is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file '{p}' must hold a mapping of sections, got {type(data).__name__}")
    return dict(data)


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Read, override and validate a YAML config."""
    data = read_yaml(path) if path is not None else {}
    return validate_config(apply_overrides(data, overrides))
