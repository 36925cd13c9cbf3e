"""The resolved clustering parameters of a run, and where each value comes from.

Precedence, per key: the run config's value; else the value calibrated for the same
method on validation data and stored in the checkpoint; else the method's default
derived from the loss margins ``delta_v`` and ``delta_d``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Protocol


class _Configured(Protocol):  # pipeline.config.ClusteringConfig
    method: str | None


class _Calibration(Protocol):  # pipeline.network.metadata.Calibration
    def values(self) -> dict[str, Any]: ...


class _Info(Protocol):  # pipeline.network.metadata.CheckpointInfo
    delta_v: float
    delta_d: float
    clustering: _Calibration | None


@dataclass(frozen=True)
class ClusteringParams:
    """Every clustering key of one run, resolved (each method reads the keys it uses)."""

    method: str = "connectivity"
    foreground_threshold: float = 0.5
    threshold: float = 1.5  # connectivity/agglomeration: neighbour embedding distance
    merge_distance: float = 2.0  # agglomeration: distance of adjacent regions' means
    grow_threshold: float = 0.5  # agglomeration: foreground of the voxels cores grow into
    grow_distance: float = 3.0  # agglomeration: how far (voxels); 0 = no growth
    bandwidth: float = 1.0  # meanshift
    min_size: int = 0  # objects smaller than this are removed after merging

    def __post_init__(self) -> None:
        from .base import METHOD_NAMES

        if self.method not in METHOD_NAMES:
            raise ValueError(f"clustering.method must be one of {', '.join(METHOD_NAMES)}, got {self.method!r}")

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ClusteringParams:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def resolve_params(config: _Configured, info: _Info) -> ClusteringParams:
    """``config``: the run's ``clustering`` section; ``info``: the checkpoint's metadata (loss
    margins, calibrated values). Values calibrated for one method are never applied to another."""
    from .base import method_class

    cal = info.clustering.values() if info.clustering is not None else {}
    cal.setdefault("method", "connectivity")  # checkpoints calibrated before methods were recorded
    name = config.method or cal["method"]
    if cal["method"] != name:
        cal = {}
    defaults = method_class(name).defaults(float(info.delta_v), float(info.delta_d))
    values: dict[str, Any] = {"method": name}
    for f in fields(ClusteringParams):
        if f.name == "method":
            continue
        given = getattr(config, f.name)
        if given is not None:
            values[f.name] = given
        elif cal.get(f.name) is not None:
            values[f.name] = type(f.default)(cal[f.name])
        elif f.name == "grow_threshold":  # cores grow into foreground at most as strict as their own
            values[f.name] = min(0.5, values["foreground_threshold"])
        else:
            values[f.name] = defaults[f.name]
    return ClusteringParams(**values)
