"""``pipeline report RESULT``: an HTML page with figures of a finished run.

Reads only windows, an overview box and the small tables of the result (see
:mod:`pipeline.qc.views`), so a terabyte result is reported in seconds to minutes: slices of
the raw volume with the labels at the centre and at the two busiest places, a max
projection, the block grid, object size and shape histograms, per-block maps (time,
fragments, skipped blocks) from ``qc/blocks.npz``, the seam audit from
``qc/seam_audit.json``, the seam gradient ratio from a re-prediction of the run's blocks
around one block corner (:mod:`pipeline.qc.verify`'s region; ``seams=False`` skips it), and the
run's provenance. Writes ``index.html``, the PNGs and ``seams.json`` into ``out``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from ..geometry import Box
from ..plan.blocks import BlockPlan
from ..volume.input_volume import InputVolume
from ..volume.io import open_array, open_group
from ..volume.resample import ZoomedVolume
from . import figures
from .views import FOV, busy_positions, object_columns, overlay, overview_box, plane_box, read_objects, window

logger = logging.getLogger(__name__)

AXES = "zyx"


class ReportError(UsageError):
    """A path that is not a finished segmentation result."""


def result_meta(result: Path) -> dict[str, Any]:
    try:
        attrs = dict(open_group(result, mode="r").attrs)
    except Exception:  # noqa: BLE001 - missing or not zarr: one message
        raise ReportError(f"'{result}' is not a zarr group; give the output.path of a `pipeline run`") from None
    if "pipeline" not in attrs or not (result / "segmentation").exists():
        raise ReportError(f"'{result}' holds no segmentation made by `pipeline run`; give the output.path of a run")
    if not attrs.get("complete"):
        logger.warning("report: '%s' is not complete (an interrupted run); showing what is there", result)
    return dict(attrs["pipeline"])


def open_raw(config: dict[str, Any], result: Path) -> InputVolume | None:
    """The run's input, found as recorded or relative to the result's folder; None if gone."""
    from ..config import InputConfig
    from ..volume.io import open_input

    recorded = Path(config["input"]["path"])
    for path in (recorded, result.parent / recorded, result.parent / recorded.name):
        if path.exists():
            try:
                return open_input(InputConfig(path=path, dataset=config["input"].get("dataset"),
                                              scale_level=config["input"].get("scale_level", 0),
                                              channel=config["input"].get("channel")))
            except UsageError as exc:
                logger.warning("report: input '%s' cannot be read (%s)", path, exc)
                return None
    logger.warning("report: input '%s' not found; labels are shown without the raw image", recorded)
    return None


def read_box(seg: Any, raw: InputVolume | None, box: Box) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(seg[box.to_slices()])
    image = raw.read(box)[0] if raw is not None else np.zeros(labels.shape, np.float32)
    return image, labels


def plane_panels(seg: Any, raw: InputVolume | None, centre: tuple[int, ...], voxel: list[float]) -> list[tuple[str, np.ndarray, float]]:
    """The orthogonal planes through ``centre`` (3D), or the window (2D), as overlays."""
    shape = tuple(seg.shape)
    if len(shape) == 2:
        image, labels = read_box(seg, raw, window(shape, centre, (FOV, FOV)))
        return [("image", overlay(image, labels), voxel[0] / voxel[1])]
    panels = []
    for axis in range(3):
        box = plane_box(shape, centre, axis)
        image, labels = read_box(seg, raw, box)
        rest = [a for a in range(3) if a != axis]
        aspect = voxel[rest[0]] / voxel[rest[1]]
        panels.append((f"{AXES[axis]} = {box.offset[axis]} ({AXES[rest[0]]} down, {AXES[rest[1]]} across)",
                       overlay(image.squeeze(axis), labels.squeeze(axis)), aspect))
    return panels


def max_projection(seg: Any, raw: InputVolume | None, box: Box, slab: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Max projections along the first axis of the raw image and of the labels, read in slabs."""
    raw_mip = lab_mip = None
    for z in range(box.offset[0], box.offset[0] + box.shape[0], slab):
        part = Box((z, *box.offset[1:]), (min(slab, box.offset[0] + box.shape[0] - z), *box.shape[1:]))
        image, labels = read_box(seg, raw, part)
        raw_mip = image.max(0) if raw_mip is None else np.maximum(raw_mip, image.max(0))
        lab_mip = labels.max(0) if lab_mip is None else np.maximum(lab_mip, labels.max(0))
    assert raw_mip is not None and lab_mip is not None
    return raw_mip, lab_mip


def block_columns(result: Path, plan: BlockPlan) -> dict[str, np.ndarray]:
    """``qc/blocks.npz`` reshaped to the block grid (empty when the run kept none)."""
    path = result / "qc" / "blocks.npz"
    if not path.exists():
        return {}
    with np.load(path) as z:
        return {k: z[k].reshape(plan.grid) for k in z.files if z[k].size == len(plan)}


def block_maps(cols: dict[str, np.ndarray]) -> tuple[list[tuple[str, np.ndarray, str]], str]:
    """Maps over the (y, x) block grid, summed over the z layers of blocks."""
    def flat(a: np.ndarray) -> np.ndarray:
        return np.nansum(a, axis=0) if a.ndim == 3 else a

    time_s = np.nansum([cols[k] for k in ("predict_s", "cluster_s") if k in cols], axis=0) if cols else None
    maps = [("seconds (predict + cluster)", flat(np.asarray(time_s, np.float64)), "viridis"),
            ("fragments", flat(cols["count"].astype(np.float64)), "magma")]
    skipped = cols.get("skipped")
    maps.append(("skipped blocks", flat(skipped.astype(np.float64) if skipped is not None
                                        else np.zeros_like(cols["count"], np.float64)), "Oranges"))
    grid = cols["count"].shape
    note = (f"block grid {list(grid)}" + (f", summed over the {grid[0]} z layers of blocks" if len(grid) == 3 else "")
            + ("" if skipped is not None else "; this run records no skipped blocks"))
    return maps, note


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


def report(result: str | Path, out: str | Path | None = None, seams: bool = True) -> dict[str, Any]:
    """Write the report of ``result`` into ``out`` (default: ``<result>-report`` next to it)."""
    from .page import write_page

    t0 = time.perf_counter()
    result = Path(result)
    meta = result_meta(result)
    out = Path(out) if out else result.with_name(f"{result.stem}-report")
    out.mkdir(parents=True, exist_ok=True)
    p = meta["plan"]
    plan = BlockPlan(tuple(p["volume_shape"]), tuple(p["write_shape"]), tuple(p["context"]), tuple(p["step"]))
    seg = open_array(result / "segmentation", mode="r")
    shape, ndim = tuple(seg.shape), seg.ndim
    raw = open_raw(meta["config"], result)
    voxel = list(raw.voxel_size) if raw is not None and raw.voxel_size else [1.0] * ndim
    objects = read_objects(result)
    cols = object_columns(objects, ndim, raw.voxel_size if raw is not None else None)
    centre = tuple(n // 2 for n in shape)
    positions = [("centre", centre)] + [(f"busy {i + 1}", q) for i, q in
                                        enumerate(busy_positions(cols["centroids"], shape, 2, exclude=centre))]
    sections: list[dict[str, Any]] = []

    def add(title: str, png: Path | None, text: str) -> None:
        sections.append({"title": title, "png": png.name if png else None, "text": text})

    rows = [(f"{name} {list(q)}", plane_panels(seg, raw, q, voxel)) for name, q in positions]
    add("Slices with labels", figures.slices(out / "slices.png", rows),
        f"Orthogonal planes (windows of at most {FOV} voxels per axis) through the volume centre and the two places "
        "where object centroids are densest.")
    box = overview_box(shape, centre)
    if ndim == 3:
        raw_mip, lab_mip = max_projection(seg, raw, box)
        add("Max projection", figures.projection(out / "projection.png", raw_mip if raw is not None else None,
                                                 overlay(raw_mip, lab_mip), f"box offset {list(box.offset)} shape {list(box.shape)}"),
            "Maximum along z of the raw image and of the labels over " + ("the whole volume." if box.shape == shape
                                                                          else "a crop (the volume is large)."))
    blocks = block_columns(result, plan)
    z = centre[0] if ndim == 3 else None
    gbox = plane_box(shape, centre, 0) if ndim == 3 else window(shape, centre, (FOV, FOV))
    image, labels = read_box(seg, raw, gbox)
    zoom = tuple(p.get("zoom") or (1.0,) * ndim)  # input.diameter: the blocks cover the resampled grid
    drawn = tuple(max(1, round(w / f)) for w, f in zip(plan.write_shape, zoom, strict=True))  # in input voxels
    layer = min(int(z * zoom[0]) // plan.write_shape[0], plan.grid[0] - 1) if z is not None else None
    counts = blocks["count"][layer] if blocks and layer is not None else blocks.get("count")
    texts = {tuple(i): f"{int(c)} fragments" for i, c in np.ndenumerate(counts)} if counts is not None else {}
    skip = blocks.get("skipped")
    skipped = {tuple(i) for i, v in np.ndenumerate(skip[layer] if skip is not None and layer is not None else skip) if v} \
        if skip is not None else set()
    add("Block grid", figures.block_grid(out / "grid.png", overlay(image.squeeze(0) if ndim == 3 else image,
                                                                   labels.squeeze(0) if ndim == 3 else labels),
                                         gbox.offset[-2:], drawn[-2:], texts, skipped,
                                         f"write blocks {list(plan.write_shape)} (cyan)" + (f", plane z = {z}" if z is not None else "")
                                         + (f", {list(drawn)} input voxels (input.diameter zoom {list(zoom)})" if p.get("zoom") else "")),
        "Where blocks met; the number of fragments each block produced; skipped blocks hatched (if the run skipped any).")
    unit = "voxels"
    add("Objects", figures.objects(out / "objects.png", cols, unit),
        "From the objects table: sizes, and shape measures from the bounding boxes (physical units when the input has a voxel size).")
    check = objects_to_check(meta, objects, seg, raw, plan, seams and not p.get("zoom"))
    if check:
        panels, predicted = check
        add("Objects to check", figures.suspects(out / "suspects.png", panels),
            "Where the model most likely erred, so you know where to annotate: the largest and smallest objects for "
            "their median size, the least compact and those spanning the most blocks"
            + (", ordered by how much they disagree with the model's foreground, predicted again around them "
               "(dashed yellow; red: the object, cyan: other objects)." if predicted else
               " (red: the object, cyan: other objects; the model's foreground is shown when the input and the "
               "checkpoint are available).") + " Correct them in a viewer and fine-tune on them (README: fit the "
            "model to your data).")
    if blocks:
        maps, note = block_maps(blocks)
        add("Blocks", figures.block_maps(out / "blocks.png", maps, note),
            "Per block: prediction + clustering time (NaN: finished by an earlier, interrupted run), fragments, skipped.")
    audit_path = result / "qc" / "seam_audit.json"
    audit = json.loads(audit_path.read_text()) if audit_path.exists() else None
    if audit is not None and audit["faces"]:
        add("Seam audit", figures.seam_audit(out / "seams.png", audit),
            "Every fragment pair that touched across a block face, accepted (joined) or rejected by the merge rule, "
            "with its evidence; recorded by the merge tasks during the run.")
    gradient: dict[str, Any] = {"skipped": "no re-prediction asked (--no-seams)"} if not seams else (
        {"skipped": "the input is not available"} if raw is None
        else gradient_check(meta, ZoomedVolume(raw, zoom) if p.get("zoom") else raw, plan))
    if "figure" in gradient:
        profiles, mag, borders = gradient.pop("figure")
        ratio = gradient["ratio"]
        add("Seam gradient", figures.gradient(out / "gradient.png", profiles, mag, borders,
                                              f"seam / inside gradient ratio {ratio:.3f}" if ratio else "no seam in the region"),
            "The run's blocks around one block corner predicted again: embedding gradient magnitude across block borders "
            "vs across the same-phase planes inside blocks (Rumberger et al., supplementary Fig. 1c); about 1.0 when "
            "stitching is exact." + (f" Voxels of the resampled grid the model saw (input.diameter, zoom {list(zoom)})."
                                     if p.get("zoom") else ""))
    (out / "seams.json").write_text(json.dumps({"audit": audit, "gradient": gradient}, indent=1))
    seconds = time.perf_counter() - t0
    page = write_page(out / "index.html", result, meta, sections, audit, gradient, seconds)
    logger.info("report: %d figures in %.1f s -> %s", sum(s["png"] is not None for s in sections), seconds, page)
    return {"html": page, "figures": [out / s["png"] for s in sections if s["png"]], "seconds": seconds,
            "gradient_ratio": gradient.get("ratio"), "audit": audit}
