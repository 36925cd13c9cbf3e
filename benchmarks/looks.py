"""How checkpoints do on every look: AP on held-out generated volumes of each appearance of
`pipeline.volume.synthetic.APPEARANCES` (seeds the training recipes never use) and on the real BBBC050
16-cell volume when `../shared/data` is present. Each volume is segmented by a full `pipeline run`
(2-worker LocalCluster, each checkpoint's calibrated clustering); with `--diameter` a second run sets
`input.diameter` to the diameter measured on the volume's ground truth (`pipeline.qc.metrics.object_diameters`,
what a user measures on a few nuclei).

    python benchmarks/looks.py demo pipeline-demo/generalist.pt [--looks demo lightsheet ...] [--diameter]

Prints one Markdown row per volume and checkpoint: AP@0.5 / AP@0.75, false splits / merges.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine

from pipeline.qc.metrics import contingency, object_diameters, scores
from pipeline.run import segment
from pipeline.volume.io import open_array, write_zarr
from pipeline.volume.synthetic import APPEARANCES, appearance, generate

SEEDS = (2000, 2001)
BBBC = Path(__file__).resolve().parents[2] / "shared" / "data" / "bbbc050-qcanet"


def volumes(looks: list[str], work: Path) -> list[tuple[str, Path, np.ndarray]]:
    out = []
    for look in looks:
        for seed in SEEDS:
            image, labels = generate(appearance(look, shape=(48, 128, 128)), seed=seed)
            path = work / f"{look}-{seed}.zarr"
            write_zarr(path, image, chunks=(16, 64, 64), name="raw")
            out.append((f"{look} (seed {seed})", path, labels))
    if (BBBC / "raw_16_cell_stage.tif").exists():
        import tifffile
        from scipy import ndimage

        image = tifffile.imread(BBBC / "raw_16_cell_stage.tif")
        labels, _ = ndimage.label(tifffile.imread(BBBC / "fg_16_cell_stage.tif") > 0)
        path = work / "bbbc050-16.zarr"
        write_zarr(path, image, name="raw")
        out.append(("BBBC050 16-cell (real)", path, labels))
    return out


def run(checkpoint: str, path: Path, labels: np.ndarray, out: Path, diameter: list[float] | None) -> dict[str, float]:
    cfg = {"input": {"path": str(path), "dataset": "raw", **({"diameter": diameter} if diameter else {})},
           "output": {"path": str(out), "overwrite": True, "labels": "none"},
           "model": {"checkpoint": checkpoint}, "cluster": {"kind": "local", "n_workers": 2}}
    result = segment(cfg)
    s = scores(contingency(open_array(result / "segmentation", mode="r")[:], labels))
    return {"ap50": s.at(0.5)["ap"], "ap75": s.at(0.75)["ap"], "splits": s.false_splits, "merges": s.false_merges}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", help="checkpoint files or 'demo'")
    ap.add_argument("--looks", nargs="+", default=list(APPEARANCES))
    ap.add_argument("--diameter", action="store_true", help="also run with input.diameter from the ground truth")
    args = ap.parse_args()
    print(f"# {machine()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = []
        for name, path, labels in volumes(args.looks, work):
            diam = [round(d, 1) for d in object_diameters(labels)]
            for ckpt in args.checkpoints:
                for use in ([None, diam] if args.diameter else [None]):
                    r = run(ckpt, path, labels, work / "out.zarr", use)
                    rows.append({"volume": name, "checkpoint": ckpt, "diameter": use, **r})
                    print(json.dumps(rows[-1]), flush=True)
    print("\n| volume | checkpoint | input.diameter | AP@0.5 | AP@0.75 | false splits | false merges |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['volume']} | {r['checkpoint']} | {r['diameter'] or '-'} | {r['ap50']:.3f} | {r['ap75']:.3f} | "
              f"{r['splits']} | {r['merges']} |")


if __name__ == "__main__":
    main()
