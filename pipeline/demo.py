"""The demo: a synthetic volume, segmented with the bundled model, scored against its ground truth.

With ``look`` (an appearance of :data:`pipeline.volume.synthetic.APPEARANCES` other than the
bundled model's) it also writes what a lab would make to fit the model to such data: a few
partly annotated training crops (half of their nuclei labelled, with a ring of background
around each) and the fine-tuning config that uses them.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .qc.metrics import contingency, scores
from .run import segment
from .volume.errors import OutputError
from .volume.io import open_array, write_zarr
from .volume.synthetic import APPEARANCES, SyntheticSpec, appearance, generate, partial_annotation

DEMO_SPEC = SyntheticSpec(shape=(48, 128, 128), radius=(5.0, 10.0), anisotropy=2.0, density=0.25, overlap=0.0)
CROP_SHAPE = (40, 128, 128)
CROP_FRACTION = 0.5  # of the nuclei of a crop that are annotated


def demo_spec(look: str, size: tuple[int, ...] | list[int]) -> SyntheticSpec:
    """The demo volume's spec: the bundled model's look, or another of :data:`APPEARANCES`."""
    if look == "demo":
        return SyntheticSpec(**{**DEMO_SPEC.__dict__, "shape": tuple(size)})
    return appearance(look, shape=tuple(size))


def write_demo_input(src: Path, size: tuple[int, ...] | list[int] = (48, 128, 128), seed: int = 7,
                     look: str = "demo") -> np.ndarray:
    """The demo volume (arrays ``raw`` and ``labels``, the ground truth) generated into ``src``; returns the labels."""
    image, labels = generate(demo_spec(look, size), seed=seed)
    write_zarr(src, image, chunks=(16, 64, 64), name="raw")
    write_zarr(src, labels, chunks=(16, 64, 64), name="labels")
    return labels


def run_demo(out: Path, size: tuple[int, ...] | list[int] = (48, 128, 128), seed: int = 7, overwrite: bool = False,
             n_workers: int = 2, progress: bool = False, look: str = "demo", crops: int = 0,
             model: str = "demo") -> dict[str, Any]:
    if look not in APPEARANCES:
        raise OutputError(f"--look '{look}' is not an appearance; use one of {', '.join(APPEARANCES)}")
    if out.exists():
        if not overwrite:
            raise OutputError(f"demo folder '{out}' exists; pass --overwrite or choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    src = out / "input.zarr"
    labels = write_demo_input(src, size, seed, look)
    finetune = write_crops(out, look, crops, seed, init=model) if crops else None
    t0 = time.perf_counter()
    result = segment({
        "input": {"path": str(src), "dataset": "raw"},
        "output": {"path": str(out / "result.zarr")},
        "model": {"checkpoint": model},
        "cluster": {"kind": "local", "n_workers": n_workers, "threads_per_worker": 1},
    }, progress=progress)
    seconds = time.perf_counter() - t0
    s = scores(contingency(open_array(result / "segmentation", mode="r"), labels))
    return {"input": str(src), "output": str(result), "objects": s.n_pred, "gt_objects": s.n_gt,
            "ap50": s.at(0.5)["ap"], "ap75": s.at(0.75)["ap"], "avap": s.avap, "seconds": seconds,
            "finetune": str(finetune) if finetune else None}


def write_crops(out: Path, look: str, count: int, seed: int, shape: tuple[int, ...] = CROP_SHAPE,
                fraction: float = CROP_FRACTION, init: str = "demo") -> Path:
    """``count`` training crops of ``look`` (other seeds than the demo volume), each a zarr group
    ``crops/crop-NNN.zarr`` with ``image``, ``labels`` and ``annotated`` (``fraction`` of the nuclei
    and a background ring around them), and ``finetune.yaml`` that fine-tunes the bundled model on
    them (the last crop held out for validation and calibration; ``init``: the model it starts from).
    Returns the config's path."""
    entries = []
    for k in range(count):
        image, labels = generate(demo_spec(look, shape), seed=seed + 1000 + k)
        annotated = partial_annotation(labels, fraction, np.random.default_rng([seed, k]))
        path = (out / "crops" / f"crop-{k:03d}.zarr").resolve()
        for name, arr in (("image", image), ("labels", labels), ("annotated", annotated.astype(np.uint8))):
            write_zarr(path, arr, chunks=(16, 64, 64), name=name)
        entries.append({"image": str(path), "image_dataset": "image", "labels": str(path), "labels_dataset": "labels",
                        "annotated": str(path), "annotated_dataset": "annotated"})
    config = {"init": init, "data": entries, "validation_split": 1,
              "out": str((out / "finetuned.pt").resolve())}
    target = out / "finetune.yaml"
    header = (f"# Fine-tune the bundled model '{init}' on {count} partly annotated crops of the '{look}' look ({fraction:.0%} of\n"
              "# their nuclei labelled; 'annotated' marks what was). On a CPU without schedule keys: 10 minutes.\n"
              f"#   pipeline train {target}\n")
    target.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return target
