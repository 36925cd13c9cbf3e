"""Quality of the bundled demo model through the full pipeline (`pipeline.segment`).

* held-out synthetic volumes (seeds never used in training, same generator settings);
* the real BBBC050 nuclei in ../shared/data (16-cell stage: held out; 8-cell: used in training),
  ground truth = connected components of the mask; Otsu + connected components as a baseline.

    python benchmarks/demo_quality.py [--method connectivity|agglomeration|meanshift] [--volumes 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, synthetic_volume

from pipeline.qc.metrics import evaluate, evaluate_many
from pipeline.run import segment
from pipeline.volume.io import open_array, write_zarr

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "bbbc050-qcanet"


def run(tmp: Path, name: str, image: np.ndarray, method: str | None) -> np.ndarray:
    write_zarr(tmp / f"{name}-in.zarr", image, chunks=(16, 64, 64), name="raw")
    out = segment({"input": {"path": str(tmp / f"{name}-in.zarr"), "dataset": "raw"},
                   "output": {"path": str(tmp / f"{name}.zarr")}, "model": {"checkpoint": "demo"},
                   "blocks": {"write_shape": [16, 64, 64]}, "cluster": {"kind": "serial"},
                   "clustering": {"method": method} if method else {}})
    return open_array(out / "segmentation")[...]


def line(name: str, s) -> str:
    r = s.summary()
    return (f"{name:32s} AP@0.5 {r['ap50']:.3f}  AP@0.75 {r['ap75']:.3f}  avAP {r['avap']:.3f}  F1@0.5 {r['f1_50']:.3f}"
            f"  pred {r['n_pred']} / gt {r['n_gt']}  splits {r['false_splits']} merges {r['false_merges']}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default=None, help="default: the model's calibrated method")
    ap.add_argument("--volumes", type=int, default=3)
    ap.add_argument("--shape", type=int, nargs=3, default=[48, 128, 128])
    args = ap.parse_args()
    print(f"machine: {machine()}")
    tmp = Path(tempfile.mkdtemp())
    pairs = []
    for k in range(args.volumes):
        image, gt = synthetic_volume(args.shape, seed=5000 + k)  # training used seeds 100..111
        seg = run(tmp, f"syn{k}", image, args.method)
        pairs.append((seg, gt))
        print(line(f"synthetic seed {5000 + k}", evaluate(seg, gt)))
    print(line(f"synthetic, {args.volumes} volumes pooled", evaluate_many(pairs)))
    if not DATA.exists():
        print("BBBC050: ../shared/data not found, skipped")
        return
    import tifffile
    from scipy import ndimage

    for stage, note in (("16", "held out"), ("8", "in training")):
        raw = tifffile.imread(DATA / f"raw_{stage}_cell_stage.tif")
        gt, _ = ndimage.label(tifffile.imread(DATA / f"fg_{stage}_cell_stage.tif") > 0)
        seg = run(tmp, f"bbbc{stage}", raw, args.method)
        print(line(f"BBBC050 {stage}-cell ({note})", evaluate(seg, gt)))
    print("reference (shared/data README, 16-cell): Otsu + CC AP@0.5 0.57 AP@0.75 0.43; "
          "QCANet AP@0.5 1.00 AP@0.75 0.33")


if __name__ == "__main__":
    main()
