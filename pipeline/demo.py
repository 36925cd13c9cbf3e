"""The demo: a synthetic volume, segmented with the bundled model, scored against its ground truth."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from .io import OutputError, open_array, write_zarr
from .metrics import contingency, scores
from .run import segment
from .synthetic import SyntheticSpec, generate

DEMO_SPEC = SyntheticSpec(shape=(48, 128, 128), radius=(5.0, 10.0), anisotropy=2.0, density=0.25, overlap=0.0)


def write_demo_input(src: Path, size: tuple[int, ...] | list[int] = (48, 128, 128), seed: int = 7) -> np.ndarray:
    """The demo volume (arrays ``raw`` and ``labels``, the ground truth) generated into ``src``; returns the labels."""
    image, labels = generate(SyntheticSpec(**{**DEMO_SPEC.__dict__, "shape": tuple(size)}), seed=seed)
    write_zarr(src, image, chunks=(16, 64, 64), name="raw")
    write_zarr(src, labels, chunks=(16, 64, 64), name="labels")
    return labels


def run_demo(out: Path, size: tuple[int, ...] | list[int] = (48, 128, 128), seed: int = 7, overwrite: bool = False,
             n_workers: int = 2, progress: bool = False) -> dict[str, Any]:
    if out.exists():
        if not overwrite:
            raise OutputError(f"demo folder '{out}' exists; pass --overwrite or choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    src = out / "input.zarr"
    labels = write_demo_input(src, size, seed)
    t0 = time.perf_counter()
    result = segment({
        "input": {"path": str(src), "dataset": "raw"},
        "output": {"path": str(out / "result.zarr")},
        "model": {"checkpoint": "demo"},
        "cluster": {"kind": "local", "n_workers": n_workers, "threads_per_worker": 1},
    }, progress=progress)
    seconds = time.perf_counter() - t0
    s = scores(contingency(open_array(result / "segmentation", mode="r"), labels))
    return {"input": str(src), "output": str(result), "objects": s.n_pred, "gt_objects": s.n_gt,
            "ap50": s.at(0.5)["ap"], "ap75": s.at(0.75)["ap"], "avap": s.avap, "seconds": seconds}
