"""`input.diameter: auto` against the ground truth: measured size per axis and AP side by side.

Every look of `pipeline.volume.synthetic.APPEARANCES` and the demo look with its nuclei scaled by
0.5-2.5 (held-out seeds, (64, 192, 192) volumes, (96, 256, 256) for the largest), plus the real
BBBC050 16-cell volume when `../shared/data` is present. Per volume: the ground truth's diameter
(median over the objects that touch no face, `pipeline.qc.metrics.diameters_per_object`), what
`auto` measured and its error per axis, its time; then AP@0.5 of three full `pipeline run`s (serial,
the bundled model): no `input.diameter`, the ground truth's, and `auto`.

    python benchmarks/diameter_auto.py [--seed 4000] [--cases demo lightsheet "demo x2" ...] [--no-ap]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine

from pipeline.plan.prepare import prepare
from pipeline.qc.metrics import contingency, diameters_per_object, scores
from pipeline.run import segment
from pipeline.volume.io import open_array, write_zarr
from pipeline.volume.synthetic import APPEARANCES, appearance, generate

BBBC = Path(__file__).resolve().parents[2] / "shared" / "data" / "bbbc050-qcanet"
SCALES = (0.5, 0.7, 1.5, 2.0, 2.5)


def cases(names: list[str] | None, seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    specs = [(look, appearance(look, shape=(64, 192, 192))) for look in APPEARANCES]
    for f in SCALES:
        spec = appearance("demo", shape=(64, 192, 192) if f < 2 else (96, 256, 256))
        specs.append((f"demo x{f}", replace(spec, radius=tuple(r * f for r in spec.radius), blur=spec.blur * f)))
    out = [(name, *generate(spec, seed=seed)) for name, spec in specs if not names or name in names]
    if (BBBC / "raw_16_cell_stage.tif").exists() and (not names or "bbbc050-16" in names):
        import tifffile
        from scipy import ndimage

        labels, _ = ndimage.label(tifffile.imread(BBBC / "fg_16_cell_stage.tif") > 0)
        out.append(("bbbc050-16", tifffile.imread(BBBC / "raw_16_cell_stage.tif"), labels))
    return out


def ap50(path: Path, labels: np.ndarray, out: Path, diameter: object) -> float:
    cfg = {"input": {"path": str(path), "dataset": "raw", **({"diameter": diameter} if diameter else {})},
           "output": {"path": str(out), "overwrite": True, "labels": "none"},
           "model": {"checkpoint": "demo", "device": "cpu"}, "cluster": {"kind": "serial"}}
    result = segment(cfg)
    return float(scores(contingency(open_array(result / "segmentation", mode="r")[:], labels)).at(0.5)["ap"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=4000)
    ap.add_argument("--cases", nargs="+", help="look names, 'demo xF' or bbbc050-16 (default: all)")
    ap.add_argument("--no-ap", action="store_true", help="only the measured sizes, no segmentation runs")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"# {machine()}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, image, labels in cases(args.cases, args.seed):
            path = work / f"{name.replace(' ', '_')}.zarr"
            write_zarr(path, image, chunks=(32, 96, 96), name="raw")
            truth = [round(float(d), 1) for d in np.median(diameters_per_object(labels, 8, interior=True), axis=0)]
            t0 = time.perf_counter()
            run = prepare({"input": {"path": str(path), "dataset": "raw", "diameter": "auto"},
                           "output": {"path": str(work / "plan.zarr")}, "cluster": {"kind": "serial"}})
            seconds = time.perf_counter() - t0
            measured = list(run.estimate.diameter)
            row = {"volume": name, "truth": truth, "auto": measured, "seconds": round(seconds, 1),
                   "error_pct": [round(100 * (m / t - 1)) for m, t in zip(measured, truth, strict=True)]}
            if not args.no_ap:
                for key, diameter in (("ap_none", None), ("ap_truth", truth), ("ap_auto", "auto")):
                    row[key] = round(ap50(path, labels, work / "out.zarr", diameter), 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| volume | truth (z, y, x) | auto | error % | auto s | AP@0.5 none | truth | auto |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        aps = " | ".join(f"{r[k]:.3f}" if k in r else "-" for k in ("ap_none", "ap_truth", "ap_auto"))
        print(f"| {r['volume']} | {r['truth']} | {[round(v, 1) for v in r['auto']]} | {r['error_pct']} | "
              f"{r['seconds']} | {aps} |")


if __name__ == "__main__":
    main()
