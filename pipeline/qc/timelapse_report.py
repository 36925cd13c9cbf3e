"""``pipeline report`` of a time-lapse: an index page with the objects per time point and the full
report (:func:`pipeline.qc.report.report`) of a few time points spread over the movie, each on its own
page (the seam gradient, which predicts again, for the first only)."""

from __future__ import annotations

import html
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.timelapse import TIMEPOINTS
from . import figures

logger = logging.getLogger(__name__)

REPORTED = 6  # time points with a full report (first and last among them)


def reported_timepoints(n: int, most: int = REPORTED) -> list[int]:
    """At most ``most`` time points of ``n``, evenly spread, the first and the last among them."""
    return sorted({round(float(x)) for x in np.linspace(0, n - 1, min(n, most))})


def timelapse_report(result: Path, meta: dict[str, Any], out: Path, report: Callable[..., dict[str, Any]],
                     seams: bool = True) -> dict[str, Any]:
    """Write the index and the chosen time points' reports (``report``: the report of one run) into ``out``."""
    t0 = time.perf_counter()
    timepoints, counts = list(meta["timepoints"]), list(meta["objects_per_timepoint"])
    out.mkdir(parents=True, exist_ok=True)
    chosen = reported_timepoints(len(timepoints))
    pages = {}
    for t in chosen:
        logger.info("report: time point %d (input %d)", t, timepoints[t])
        pages[t] = report(result / TIMEPOINTS / f"t{t:05d}", out / f"t{t:05d}", seams=seams and t == chosen[0])
    png = figures.series(out / "objects.png", np.arange(len(counts)), np.asarray(counts), "time point (t)", "objects")
    rows = "".join(
        f"<tr><td>{t}</td><td>{k}</td><td>{n:,}</td><td>"
        + (f'<a href="t{t:05d}/index.html">report</a>' if t in pages else "") + "</td></tr>"
        for t, (k, n) in enumerate(zip(timepoints, counts, strict=True)))
    page = out / "index.html"
    page.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>time-lapse report</title></head><body>"
        f"<h1>Time-lapse {html.escape(str(result))}</h1>"
        f"<p>{len(timepoints)} time points, each segmented on its own; {sum(counts):,} objects in all (ids per "
        f"time point). Full reports of {len(pages)} time points spread over the movie.</p>"
        f"<img src='{png.name}' alt='objects per time point'>"
        "<table><tr><th>t</th><th>input time point</th><th>objects</th><th></th></tr>" + rows + "</table>"
        "</body></html>")
    seconds = time.perf_counter() - t0
    figs = [png] + [f for p in pages.values() for f in p["figures"]]
    return {"html": page, "figures": figs, "seconds": seconds, "gradient_ratio": pages[chosen[0]]["gradient_ratio"],
            "audit": None}
