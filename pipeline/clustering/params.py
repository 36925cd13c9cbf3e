"""Where each clustering parameter of a run comes from (:func:`resolve_params`).

Precedence, per key: the run config's value; else the value calibrated for the same
method on validation data and stored in the checkpoint; else the method's default
derived from the loss margins ``delta_v`` and ``delta_d``.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Protocol

from .base import ClusteringParams, method_class


class _Configured(Protocol):  # pipeline.config.ClusteringConfig
    method: str | None


class _Calibration(Protocol):  # pipeline.network.metadata.Calibration
    def values(self) -> dict[str, Any]: ...


class _Info(Protocol):  # pipeline.network.metadata.CheckpointInfo
    delta_v: float
    delta_d: float
    clustering: _Calibration | None


def resolve_params(config: _Configured, info: _Info) -> ClusteringParams:
    """``config``: the run's ``clustering`` section; ``info``: the checkpoint's metadata (loss
    margins, calibrated values). Values calibrated for one method are never applied to another."""
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
