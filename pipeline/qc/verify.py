"""``pipeline verify``: is tile-and-stitch exact on *this* data, model, device and precision?

A sample region (default: the blocks around the block corner nearest the volume centre) is
predicted twice, with the run's blocks and with another aligned tiling whose tiles meet
elsewhere (``write_shape + step``); the two must agree to float round-off. Optionally a
misaligned tiling (``write_shape + step // 2``, tiles off the step grid) is predicted as a
positive control, showing that the check can see seams; ``force_misaligned`` uses it in
place of the second aligned tiling (the check must then fail). Also reports the seam
gradient ratio (:mod:`pipeline.qc.seams`) of each tiling.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import UsageError
from ..geometry import Box, Coord
from ..plan.blocks import BlockPlan
from .seams import is_aligned, predict_tiles, seam_ratios

if TYPE_CHECKING:
    from ..plan.prepare import Prepared

logger = logging.getLogger(__name__)

ULPS = 128  # round-off allowed: this many float epsilons of the output's largest magnitude


class VerifyError(UsageError):
    """A region or model that cannot be verified."""


@dataclass(frozen=True)
class Tiling:
    name: str
    tile: Coord
    aligned: bool


def corner_region(plan: BlockPlan) -> Box:
    """The blocks around the block corner nearest the volume centre: two blocks per axis
    where the grid has two or more, the whole axis elsewhere; clipped to the volume."""
    offset, end = [], []
    for v, w, g in zip(plan.volume, plan.write_shape, plan.grid, strict=True):
        if g == 1:
            offset.append(0)
            end.append(v)
            continue
        corner = min(max(round(v / 2 / w), 1), g - 1) * w
        offset.append(corner - w)
        end.append(min(corner + w, v))
    return Box(tuple(offset), tuple(e - o for o, e in zip(offset, end, strict=True)))


def parse_region(text: str, volume: Coord, step: Coord) -> Box:
    """``z0:z1,y0:y1,x0:x1`` -> a box inside the volume whose start is on the step grid."""
    parts = text.split(",")
    bad = VerifyError(f"--region '{text}': give start:stop per axis ({len(volume)} axes, e.g. "
                      f"{','.join(f'0:{min(v, 64)}' for v in volume)}) inside the volume {list(volume)}")
    if len(parts) != len(volume) or not all(re.fullmatch(r"\s*\d+\s*:\s*\d+\s*", p) for p in parts):
        raise bad
    lo, hi = zip(*((int(a), int(b)) for a, b in (p.split(":") for p in parts)), strict=True)
    if any(a >= b or b > v for a, b, v in zip(lo, hi, volume, strict=True)):
        raise bad
    start = tuple(a // s * s for a, s in zip(lo, step, strict=True))  # snapped down onto the step grid
    return Box(start, tuple(b - a for a, b in zip(start, hi, strict=True)))


def misaligned_tile(write: Coord, step: Coord) -> Coord:
    if all(s == 1 for s in step):
        raise VerifyError("the model's step is 1 on every axis: every tiling is aligned, there is nothing to verify")
    return tuple(w + s // 2 for w, s in zip(write, step, strict=True))


def tilings(write: Coord, step: Coord, force_misaligned: bool, control: bool) -> list[Tiling]:
    """The run's blocks first, then the tiling compared with them, then the control."""
    out = [Tiling("run blocks", write, True)]
    if force_misaligned:
        out.append(Tiling("misaligned (forced)", misaligned_tile(write, step), False))
    else:
        out.append(Tiling("other aligned", tuple(w + s for w, s in zip(write, step, strict=True)), True))
    if control and not force_misaligned:
        out.append(Tiling("misaligned (control)", misaligned_tile(write, step), False))
    return out


def tolerance(dtype: str, scale: float) -> float:
    """Float round-off allowed between two tilings of outputs up to ``scale`` in magnitude
    (relative: an untrained network's outputs can be tiny)."""
    eps = np.finfo(np.float64 if dtype == "float64" else np.float32).eps
    return float(ULPS * eps * max(scale, float(np.finfo(np.float32).tiny)))


def verify(run: Prepared, region: Box | None = None, force_misaligned: bool = False,
           control: bool = False) -> dict[str, Any]:
    """Predict ``region`` with each tiling and compare them; see the module docstring."""
    from ..network.predict import get_predictor

    cfg, plan, spec = run.config, run.plan, run.spec
    m = cfg.model
    predictor = get_predictor(str(run.checkpoint.path), m.device, m.precision, m.channels_last, None)
    region = region or corner_region(plan)
    outputs, rows = [], []
    for t in tilings(plan.write_shape, plan.step, force_misaligned, control):
        t0 = time.perf_counter()
        anchor = (0,) * plan.ndim if t.name == "run blocks" else region.offset  # the run's blocks: its own grid
        y = predict_tiles(lambda x: predictor(x, run.stats), run.grid.read, region, t.tile, plan.step, plan.context, anchor)
        seams = seam_ratios(y[: spec.embed_dim], t.tile, plan.step, tuple(o - a for o, a in zip(region.offset, anchor, strict=True)))
        rows.append({"name": t.name, "tile": list(t.tile), "aligned": t.aligned and is_aligned(t.tile, plan.step),
                     "seam_ratio": seams["ratio"], "seam_axes": seams["axes"],
                     "seconds": round(time.perf_counter() - t0, 2)})
        logger.info("verify: %s %s predicted in %.1f s", t.name, list(t.tile), rows[-1]["seconds"])
        outputs.append(y)
    tol = tolerance("float64" if m.precision == "float64" else "float32", float(np.abs(outputs[0]).max()))
    for row, y in zip(rows[1:], outputs[1:], strict=True):
        row["max_difference"] = float(np.abs(y - outputs[0]).max())
    exact = rows[1]["max_difference"] <= tol
    result = {"region": {"offset": list(region.offset), "shape": list(region.shape)}, "step": list(plan.step),
              "device": str(predictor.device), "precision": m.precision, "tolerance": tol,
              "max_difference": rows[1]["max_difference"], "exact": bool(exact), "tilings": rows}
    if len(rows) > 2:
        result["control_detected"] = bool(rows[2]["max_difference"] > tol)
        if not result["control_detected"]:
            logger.warning("verify: the misaligned control shows no seam (difference %.3g): the check may be blind "
                           "on this region (e.g. empty input)", rows[2]["max_difference"])
    return result


def describe(result: dict[str, Any]) -> list[str]:
    """The lines ``pipeline verify`` prints."""
    r = result["region"]
    lines = [f"region offset {r['offset']} shape {r['shape']}, step {result['step']}, {result['device']}, "
             f"{result['precision']}"]
    for t in result["tilings"]:
        diff = f", max difference {t['max_difference']:.3g}" if "max_difference" in t else ""
        ratio = f"{t['seam_ratio']:.3f}" if t["seam_ratio"] is not None else "n/a (no seam in region)"
        lines.append(f"{t['name']:<22} tiles {t['tile']} ({'aligned' if t['aligned'] else 'NOT aligned'}): "
                     f"seam gradient ratio {ratio}{diff} ({t['seconds']} s)")
    verdict = "EXACT" if result["exact"] else "NOT EXACT"
    lines.append(f"{verdict}: largest difference {result['max_difference']:.3g} "
                 f"{'<=' if result['exact'] else '>'} tolerance {result['tolerance']:.3g} (float round-off)")
    if "control_detected" in result:
        lines.append(f"positive control: misaligned tiles {'differ' if result['control_detected'] else 'DO NOT differ'}")
    return lines
