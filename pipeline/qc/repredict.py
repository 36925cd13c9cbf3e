"""What the report predicts again with the run's checkpoint: the run's blocks around one block corner
for the seam gradient (:func:`gradient_check`), and the foreground around the objects to check
(:func:`objects_to_check`, :func:`foreground_predictor`)."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from ..geometry import Box
from ..plan.blocks import BlockPlan
from ..volume.input_volume import InputVolume
from .result import AXES, read_box

logger = logging.getLogger(__name__)


def gradient_check(meta: dict[str, Any], raw: InputVolume, plan: BlockPlan) -> dict[str, Any]:
    """The run's blocks around one block corner predicted again: gradient across their
    borders vs inside (:mod:`pipeline.qc.seams`)."""
    from ..network.checkpoint import open_checkpoint
    from ..network.predict import NormStats, get_predictor
    from .seams import predict_tiles, seam_planes, seam_profile, seam_ratios
    from .verify import corner_region

    m = meta["config"]["model"]
    ckpt = open_checkpoint(m["checkpoint"])
    if ckpt.digest != meta["model_digest"]:
        return {"skipped": f"checkpoint '{m['checkpoint']}' changed since the run"}
    pred = get_predictor(str(ckpt.path), m["device"], m["precision"], m["channels_last"], None)
    stats = NormStats(meta["normalisation"]["offset"], meta["normalisation"]["scale"])
    region = corner_region(plan)
    t0 = time.perf_counter()
    y = predict_tiles(lambda x: pred(x, stats), raw.read, region, plan.write_shape, plan.step, plan.context)
    emb = y[: ckpt.spec.embed_dim]
    out = {"region": {"offset": list(region.offset), "shape": list(region.shape)}, **seam_ratios(emb, plan.write_shape, plan.step),
           "seconds": round(time.perf_counter() - t0, 2)}
    profiles = []
    for axis in range(emb.ndim - 1):
        for s in seam_planes(region.shape[axis], plan.write_shape[axis])[:1]:
            width = 3 * plan.step[axis]
            prof = seam_profile(emb, axis, s, width)
            profiles.append((f"across {AXES[-emb.ndim + 1:][axis]} borders", prof, min(width, s - 1)))
    plane = emb[:, emb.shape[1] // 2] if emb.ndim == 4 else emb  # (E, y, x) through the region's middle
    mag = np.zeros(plane.shape[1:])
    for a in range(2):
        d = (np.diff(plane.astype(np.float64), axis=a + 1) ** 2).sum(axis=0)
        mag[tuple(slice(0, -1) if i == a else slice(None) for i in range(2))] += d
    borders = [(a, s) for a in range(2) for s in seam_planes(plane.shape[a + 1], plan.write_shape[-2 + a])]
    out["figure"] = (profiles, np.sqrt(mag), borders)
    return out


def objects_to_check(meta: dict[str, Any], objects: dict[str, Any], seg: Any, raw: InputVolume | None, plan: BlockPlan,
                     predict: bool) -> tuple[list[dict[str, Any]], bool] | None:
    """Panels of :func:`pipeline.qc.suspects.pick`'s objects; with ``predict`` (and the input and an
    unchanged checkpoint) their foreground predicted again on the run's grid, worst first."""
    from .suspects import disagreement, pick, view_box

    found = pick(objects, seg.ndim)
    if not found:
        return None
    fg_of = foreground_predictor(meta, raw, plan) if predict and raw is not None else None
    threshold = float(meta.get("parameters", {}).get("foreground_threshold", 0.5))
    panels = []
    for s in found:
        box = view_box(s, tuple(seg.shape))
        image, labels = read_box(seg, raw, box)
        fg = fg_of(box) if fg_of is not None else None
        score = disagreement(labels, s.id, fg, threshold) if fg is not None else None
        z = min(max(round(s.centroid[0]) - box.offset[0], 0), box.shape[0] - 1) if seg.ndim == 3 else None
        cut = (z,) if z is not None else ()
        panels.append({"raw": image[cut], "mine": (labels == s.id)[cut],
                       "others": np.where(labels == s.id, 0, labels)[cut],
                       "foreground": (fg > threshold)[cut] if fg is not None else None, "score": score,
                       "title": f"#{s.id} at {[round(c) for c in s.centroid]}: {s.voxels} voxels\n{s.reason}"
                                + (f"\ndisagrees with the foreground on {score:.0%}" if score is not None else "")})
    if fg_of is not None:
        panels.sort(key=lambda p: -p["score"])
    return panels, fg_of is not None


def foreground_predictor(meta: dict[str, Any], raw: InputVolume, plan: BlockPlan) -> Any:
    """A function box -> the run's foreground probability over it (blocks on the run's grid, so the
    values are the run's), or None when the checkpoint changed since the run."""
    from ..network.checkpoint import open_checkpoint
    from ..network.predict import NormStats, get_predictor
    from .seams import predict_tiles

    m = meta["config"]["model"]
    ckpt = open_checkpoint(m["checkpoint"])
    if ckpt.digest != meta["model_digest"]:
        logger.warning("report: checkpoint '%s' changed since the run; objects to check without its foreground",
                       m["checkpoint"])
        return None
    pred = get_predictor(str(ckpt.path), m["device"], m["precision"], m["channels_last"], None)
    stats = NormStats(meta["normalisation"]["offset"], meta["normalisation"]["scale"])

    def foreground(box: Box) -> np.ndarray:
        tile = tuple(-(-(n + o % s) // s) * s for n, o, s in zip(box.shape, box.offset, plan.step, strict=True))
        return predict_tiles(lambda x: pred(x, stats), raw.read, box, tile, plan.step, plan.context,
                             anchor=tuple(o - o % s for o, s in zip(box.offset, plan.step, strict=True)))[-1]
    return foreground

