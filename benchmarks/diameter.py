"""Object-size matching: the demo volume zoomed in-plane, segmented without and with `input.diameter`.

The demo volume (`pipeline demo`'s, seed 7) is zoomed by ``--zoom`` along y and x (image: linear,
labels: nearest), so its nuclei are ``--zoom`` times wider than the bundled model was trained on.
Three runs side by side, the same model and clustering: the original volume, the zoomed volume
as is, and the zoomed volume with ``input.diameter`` set to the diameter measured on its ground
truth (`pipeline.qc.metrics.object_diameters`, what a user measures on a few nuclei). Prints
AP@0.5, AP@0.75, average AP, false splits and merges, wall time.

    python benchmarks/diameter.py [--zoom 2.0] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine

from pipeline.demo import DEMO_SPEC
from pipeline.qc.metrics import contingency, object_diameters, scores
from pipeline.run import segment
from pipeline.volume.io import open_array, write_zarr
from pipeline.volume.synthetic import generate


def zoomed_demo(zoom: float, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """The demo volume and labels zoomed by ``zoom`` in-plane."""
    image, labels = generate(DEMO_SPEC, seed=seed)
    factors = (1.0, zoom, zoom)
    big = ndimage.zoom(image.astype(np.float32), factors, order=1)
    return np.clip(np.rint(big), 0, 65535).astype(np.uint16), ndimage.zoom(labels, factors, order=0)


def run(image: np.ndarray, truth: np.ndarray, folder: Path, name: str, workers: int,
        diameter: list[float] | None = None) -> dict[str, float]:
    src = folder / f"{name}.zarr"
    write_zarr(src, image, chunks=(16, 64, 64), name="raw")
    cfg = {"input": {"path": str(src), "dataset": "raw", **({"diameter": diameter} if diameter else {})},
           "output": {"path": str(folder / f"{name}-result.zarr")},
           "model": {"checkpoint": "demo", "device": "cpu"},
           "cluster": {"kind": "local", "n_workers": workers} if workers > 1 else {"kind": "serial"}}
    t0 = time.perf_counter()
    out = segment(cfg)
    seconds = time.perf_counter() - t0
    s = scores(contingency(np.asarray(open_array(out / "segmentation", mode="r")), truth))
    at = s.at(0.5)
    return {"ap50": round(at["ap"], 3), "ap75": round(s.at(0.75)["ap"], 3), "avap": round(s.avap, 3),
            "objects": s.n_pred, "truth": s.n_gt, "splits": s.false_splits, "merges": s.false_merges,
            "seconds": round(seconds, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zoom", type=float, default=2.0)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    print(json.dumps({"machine": machine()}))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        image, labels = generate(DEMO_SPEC, seed=7)
        big, big_labels = zoomed_demo(args.zoom)
        diameter = [round(d, 1) for d in object_diameters(big_labels)]
        rows = {
            "original": run(image, labels, folder, "original", args.workers),
            f"zoomed {args.zoom}x": run(big, big_labels, folder, "zoomed", args.workers),
            f"zoomed {args.zoom}x, input.diameter {diameter}": run(big, big_labels, folder, "matched",
                                                                      args.workers, diameter),
        }
    for name, row in rows.items():
        print(json.dumps({"run": name, **row}))


if __name__ == "__main__":
    main()
