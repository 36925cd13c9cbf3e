"""What a run's block outputs depend on (its resume parts and key: a resumed run must match
them, and what differs is named in words) and its provenance (config, model, plan, versions)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..plan.prepare import Prepared
from ..plan.summary import plan_summary
from ..version import __version__


def resume_parts(run: Prepared, stage: str, params: dict[str, Any],
                 layout: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything that determines a stage's block outputs, by name (recorded in the output's
    ``resume`` attribute; a resumed run must match it). The input's content is checked per
    block (records with the done markers), its identity and intensity statistics here.
    ``layout``: how the stage lays out its scratch files (a run of another layout is not resumed)."""
    c = run.config
    e = c.empty
    return {
        "stage": stage,
        "plan": {"volume": list(run.plan.volume), "write_shape": list(run.plan.write_shape),
                 "context": list(run.plan.context), "step": list(run.plan.step)},
        "model": {"checkpoint": str(c.model.checkpoint), "digest": run.checkpoint.digest},
        "input": {"path": str(Path(c.input.path).resolve()), "dataset": c.input.dataset,
                  "scale_level": c.input.scale_level, "channel": c.input.channel, "dtype": str(run.volume.dtype)}
        | ({"timepoint": c.input.timepoint} if c.input.timepoint is not None else {}),
        "normalisation": {"offset": run.stats.offset, "scale": run.stats.scale},
        "precision": c.model.precision,
        "zoom": list(run.zoom) if run.zoom else None,
        "empty": {"skip": e.skip, "threshold": e.threshold, "level": e.level,
                  "mask": str(Path(e.mask.path).resolve()) if e.mask else None,
                  "mask_dataset": e.mask.dataset if e.mask else None},
        "params": params,
    } | ({"layout": layout} if layout else {})


def resume_hash(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def resume_key(run: Prepared, stage: str, params: dict[str, Any]) -> str:
    """Hash of :func:`resume_parts`."""
    return resume_hash(resume_parts(run, stage, params))


NAMES = {"plan": "blocks", "model": "model.checkpoint", "input": "input", "precision": "model.precision",
         "zoom": "input.diameter (zoom)", "empty": "empty", "params": "clustering/merge parameters",
         "stage": "command (run or predict)", "layout": "scratch layout (another version of the pipeline)"}


def changes(recorded: Any, parts: dict[str, Any]) -> str:
    """What differs between the recorded resume parts and this run's, in words."""
    recorded = json.loads(json.dumps(recorded, default=str)) if isinstance(recorded, dict) else None
    parts = json.loads(json.dumps(parts, default=str))
    if recorded is None or set(recorded) != set(parts):
        return "made by another version of the pipeline"
    out = []
    for name in parts:
        old, new = recorded[name], parts[name]
        if old == new:
            continue
        if name == "normalisation":
            out.append(f"the input's intensity statistics (normalisation offset {old['offset']:.6g} -> "
                       f"{new['offset']:.6g}, scale {old['scale']:.6g} -> {new['scale']:.6g}): the input changed")
        elif name == "model" and old["checkpoint"] == new["checkpoint"]:
            out.append(f"model.checkpoint '{new['checkpoint']}' changed (digest {old['digest']} -> {new['digest']})")
        elif isinstance(old, dict) and isinstance(new, dict):
            diff = [f"{k} {old.get(k)} -> {new.get(k)}" for k in new if old.get(k) != new.get(k)]
            out.append(f"{NAMES.get(name, name)}: {', '.join(diff)}")
        else:
            out.append(f"{NAMES.get(name, name)} {old} -> {new}")
    return "; ".join(out) or "unknown"


def provenance(run: Prepared) -> dict[str, Any]:
    """Config, model, plan, normalisation and library versions of a run."""
    import dask  # the libraries' versions; imported here, not where a resume key is computed
    import distributed
    import torch

    return {
        "pipeline_version": __version__,
        "config": run.config.model_dump(mode="json"),
        "model_digest": run.checkpoint.digest,
        "model_spec": run.spec.model_dump(mode="json"),
        "plan": plan_summary(run),
        "normalisation": run.intensity.record(),
        "versions": {
            "numpy": np.__version__, "torch": torch.__version__, "dask": dask.__version__,
            "distributed": distributed.__version__, "zarr": zarr.__version__,
        },
    }
