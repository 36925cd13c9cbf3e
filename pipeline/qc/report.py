"""``pipeline report RESULT``: an HTML page with figures of a finished run.

Reads only windows, an overview box and the small tables of the result (see
:mod:`pipeline.qc.views`), so a terabyte result is reported in seconds to minutes: slices of
the raw volume with the labels at the centre and at the two busiest places, a max
projection, the block grid, object size and shape histograms, per-block maps (time,
fragments, skipped blocks) from ``qc/blocks.npz``, the seam audit from
``qc/seam_audit.json``, the seam gradient ratio from a re-prediction of the run's blocks
around one block corner (:mod:`pipeline.qc.verify`'s region; ``seams=False`` skips it), and the
run's provenance. Writes ``index.html``, the PNGs and ``seams.json`` into ``out``.
What it reads of the result is in :mod:`pipeline.qc.result`, what it predicts again in
:mod:`pipeline.qc.repredict`; :mod:`pipeline.qc.figures` draws the figures and :mod:`pipeline.qc.page`
writes the page.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..plan.blocks import BlockPlan
from ..volume.io import open_array
from ..volume.resample import ZoomedVolume
from . import figures
from .repredict import gradient_check, objects_to_check
from .result import block_columns, block_maps, max_projection, open_raw, plane_panels, read_box, result_meta
from .views import FOV, busy_positions, object_columns, overlay, overview_box, plane_box, read_objects, window

logger = logging.getLogger(__name__)


def report(result: str | Path, out: str | Path | None = None, seams: bool = True) -> dict[str, Any]:
    """Write the report of ``result`` into ``out`` (default: ``<result>-report`` next to it)."""
    from .page import write_page

    t0 = time.perf_counter()
    result = Path(result)
    meta = result_meta(result)
    out = Path(out) if out else result.with_name(f"{result.stem}-report")
    if meta.get("timelapse"):
        from .timelapse_report import timelapse_report

        return timelapse_report(result, meta, out, report, seams)
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
