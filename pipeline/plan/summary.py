"""What ``pipeline plan`` prints about a prepared run: its numbers, and the write shape chosen
against the next cheapest candidates."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from . import cost
from .blocks import sweep_axes
from .prepare import Prepared
from .sizing import (
    block_bytes,
    block_choice,
    block_memory,
    cache_needed,
    coefficients,
    over_read,
    planned_workers,
    ranked_blocks,
)


def plan_summary(run: Prepared) -> dict[str, Any]:
    """Numbers printed by ``pipeline plan``."""
    plan = run.plan
    memory, sized_for = block_memory(run.config)
    workers = planned_workers(run.config.cluster)
    return {
        "volume_shape": list(plan.volume),
        "input_dtype": str(run.volume.dtype),
        "step": list(plan.step),
        "context": list(plan.context),
        "write_shape": list(plan.write_shape),
        "write_shape_from": block_choice(run.config),
        "read_shape": list(plan.read_shape),
        "grid": list(plan.grid),
        "blocks": len(plan),
        "blocks_per_task": run.blocks_per_task,
        "redundancy": round(plan.redundancy, 3),
        "memory_per_block_mib": round(block_bytes(run.spec, plan.write_shape) / 2**20, 1),
        "blocks_sized_for": f"{sized_for}: at most {memory / 2**20:.0f} MiB per block",
        "predicted_cost_s": round(cost.predicted_cost(plan.volume, plan.write_shape, plan.context, run.grid.chunks,
                                                      coefficients(run.config), workers, run.live), 1),
        "predicted_wall": predicted_wall(run, workers),
        "input_chunks": list(run.volume.chunks),
        "input_over_read": round(over_read(run.grid.chunks, plan), 2),
        "block_order": "".join("zyx"[-plan.ndim:][a] for a in sweep_axes(plan, run.grid.chunks)),
        "cache_needed_mib": round(cache_needed(plan, run.grid.chunks, run.volume) / 2**20, 1),
        "diameter": run.diameter or "not given (no resampling)",
        "zoom": list(run.zoom) if run.zoom else None,
        "diameter_check": "; ".join(run.notes) if run.notes else ("ok" if run.zoom else "no resampling"),
        "input_shape": list(run.volume.shape),
        "normalisation": f"offset {run.stats.offset:.6g}, scale {run.stats.scale:.6g} from {run.intensity.source}",
        "empty_blocks_from": run.empty.describe() if run.empty else "not skipped (empty.skip: false)",
        "objects_measure": run.measure.describe() if run.measure else "voxels, boxes, centroids (no intensity)",
        "plan_digest": plan.digest(),
    }


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:,.1f} {unit}"
    return f"{seconds:.0f} s"


def predicted_wall(run: Prepared, workers: int) -> str:
    """The plan's predicted wall time on this cluster and on 10 and 100 times its workers (nodes like it),
    from the cost model's coefficients for the device (:mod:`.cost`; a GPU's are not measured yet)."""
    plan, coeff = run.plan, coefficients(run.config)
    terms = cost.terms(plan.volume, plan.write_shape, plan.context, run.grid.chunks, run.live)
    if run.empty is not None and run.listing is not None and not run.listing[0].any():
        terms = replace(terms, live=0)  # no chunk stored: every block is skipped (the fill value is read as empty)
    device = "GPU (coefficients not measured: the CPU's network term)" if coeff is cost.GPU else "CPU"
    times = [f"x{n} {_duration(terms.cost(coeff, workers * n))}" for n in (10, 100)]
    return (f"{_duration(terms.cost(coeff, workers))} on this cluster ({workers} worker{'s' if workers != 1 else ''}, "
            f"{device}); with {', '.join(times)} as many workers (nodes like these), if the file system keeps up")


def cost_table(run: Prepared, rows: int = 5) -> list[str]:
    """The plan's write shape and the next cheapest candidates, as lines of a table: blocks,
    redundancy, over-read, memory per block and predicted cost relative to the plan's
    (:mod:`pipeline.plan.cost`: the device's coefficients, the cluster's workers)."""
    plan, spec = run.plan, run.spec
    workers = planned_workers(run.config.cluster)
    chosen = cost.terms(plan.volume, plan.write_shape, plan.context, run.grid.chunks, run.live)
    others = [t for t in ranked_blocks(run.config, spec, plan.volume, run.grid.chunks, run.live)
              if t.write != chosen.write]
    coeff = coefficients(run.config)
    base = chosen.cost(coeff, workers)
    header = ("write shape", "blocks", "not empty", "redundancy", "over-read", "MiB/block", "cost")
    table = [header]
    for k, t in enumerate([chosen, *others[: rows - 1]]):
        table.append((str(list(t.write)) + (" *" if k == 0 else ""), str(t.blocks),
                      str(t.live) if t.live is not None else "all", f"{t.redundancy:.2f}",
                      f"{t.over_read:.2f}", f"{block_bytes(spec, t.write) / 2**20:.0f}",
                      f"{t.cost(coeff, workers) / base:.2f}x"))
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            for r in table]
