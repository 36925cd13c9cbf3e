"""Run configuration: frozen, validated pydantic models shared by YAML, CLI and API.

Unknown keys are errors (with a suggestion for the nearest valid key), every
model is immutable, and :func:`load_config` turns validation failures into a
one-line :class:`ConfigError` that names the field, the bad value and the fix.

This package's ``__init__`` is its public surface: :class:`Config` and the loading functions live
here, and it re-exports the models of each section from the submodules that hold them
(``from pipeline.config import InputConfig`` is how the rest of the package imports them):
:mod:`~pipeline.config.volumes` (input, output), :mod:`~pipeline.config.model` (model, blocks,
empty space), :mod:`~pipeline.config.cluster` (the cluster kinds), :mod:`~pipeline.config.clustering`
(clustering, merge) and :mod:`~pipeline.config.validation` (the frozen base model, YAML, overrides,
one-line errors). The submodules never import ``pipeline.config`` itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import field_validator

from .cluster import (
    JOBQUEUE_KINDS,
    WALLTIME,
    AdaptiveConfig,
    AddressClusterConfig,
    ClusterConfig,
    JobqueueClusterConfig,
    LocalClusterConfig,
    LocalCudaClusterConfig,
    SerialClusterConfig,
)
from .clustering import ClusteringConfig, MergeConfig
from .model import BlocksConfig, EmptyConfig, MaskConfig, ModelConfig, NormalisationConfig, PositiveShape
from .validation import ConfigError, Frozen, apply_overrides, describe_errors, read_yaml, validate_model
from .volumes import InputConfig, ObjectsConfig, OutputConfig, check_diameter

__all__ = [
    "JOBQUEUE_KINDS", "WALLTIME", "AdaptiveConfig", "AddressClusterConfig", "BlocksConfig", "ClusterConfig",
    "ClusteringConfig", "Config", "ConfigError", "EmptyConfig", "Frozen", "InputConfig", "JobqueueClusterConfig",
    "LocalClusterConfig", "LocalCudaClusterConfig", "MaskConfig", "MergeConfig", "ModelConfig", "NormalisationConfig", "ObjectsConfig",
    "OutputConfig", "PositiveShape", "SerialClusterConfig", "apply_overrides", "check_diameter", "describe_errors", "load_config",
    "read_yaml", "validate_config", "validate_model",
]


class Config(Frozen):
    input: InputConfig
    output: OutputConfig
    model: ModelConfig = ModelConfig()
    blocks: BlocksConfig = BlocksConfig()
    empty: EmptyConfig = EmptyConfig()
    cluster: ClusterConfig = LocalClusterConfig()
    clustering: ClusteringConfig = ClusteringConfig()
    merge: MergeConfig = MergeConfig()
    objects: ObjectsConfig = ObjectsConfig()

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
