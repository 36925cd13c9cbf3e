"""Fit the bundled model to data it fails on: fine-tune on a few partly annotated crops on the CPU.

Exactly the README's "fit the model to your data" path: `pipeline demo --look LOOK` writes a
volume of an appearance the bundled model was not trained on and three training crops of it with
half of their nuclei annotated (plus a background ring around each; `pipeline.volume.synthetic.
partial_annotation`); `pipeline train finetune.yaml --set time_limit_s=S` fine-tunes from the
bundled weights (`init: demo`) for S seconds of wall time in all (calibration included), in a fresh
process. The same crops fully annotated (no `annotated` mask) run side by side. Every checkpoint
is scored by a full `pipeline run` (2-worker LocalCluster) on held-out volumes of the same look
(the demo volume and one more seed), against their ground truth, pooled.

    python benchmarks/finetune.py [--look lightsheet] [--minutes 5 10 20] [--annotations half full]

Run it on an otherwise idle machine (the wall clock is the budget); prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine

from pipeline.demo import demo_spec, write_crops
from pipeline.qc.metrics import evaluate_many
from pipeline.run import segment
from pipeline.volume.io import open_array, write_zarr
from pipeline.volume.synthetic import generate

EVAL_SEEDS = (7, 8)  # the demo volume's seed and one more; the crops use seeds 1007.. (write_crops)


def held_out(out: Path, look: str, shape: tuple[int, ...]) -> list[tuple[Path, object]]:
    volumes = []
    for seed in EVAL_SEEDS:
        image, labels = generate(demo_spec(look, shape), seed=seed)
        path = out / f"eval-{seed}.zarr"
        write_zarr(path, image, chunks=(16, 64, 64), name="raw")
        volumes.append((path, labels))
    return volumes


def score(checkpoint: str, volumes: list[tuple[Path, object]], out: Path) -> dict[str, float]:
    segs = []
    for path, labels in volumes:
        result = segment({"input": {"path": str(path), "dataset": "raw"},
                          "output": {"path": str(out / f"{path.stem}-{Path(checkpoint).stem}.zarr"), "overwrite": True,
                                     "labels": "none"},
                          "model": {"checkpoint": checkpoint}, "cluster": {"kind": "local", "n_workers": 2}})
        segs.append((open_array(result / "segmentation", mode="r")[:], labels))
    s = evaluate_many(segs)
    return {"ap50": s.at(0.5)["ap"], "ap75": s.at(0.75)["ap"], "splits": s.false_splits, "merges": s.false_merges,
            "n_pred": s.n_pred, "n_gt": s.n_gt}


def configs(out: Path, look: str, seed: int) -> dict[str, Path]:
    """The demo's fine-tuning config (half annotated) and the same crops fully annotated."""
    half = write_crops(out, look, 3, seed)
    data = yaml.safe_load(half.read_text())
    full = dict(data, data=[{k: v for k, v in e.items() if not k.startswith("annotated")} for e in data["data"]])
    (out / "finetune-full.yaml").write_text(yaml.safe_dump(full, sort_keys=False))
    return {"half": half, "full": out / "finetune-full.yaml"}


def fine_tune(config: Path, seconds: float, checkpoint: Path) -> dict[str, float]:
    log = checkpoint.with_suffix(".log")
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        subprocess.run([sys.executable, "-m", "pipeline", "-q", "train", str(config), "--overwrite",
                        "--set", f"time_limit_s={seconds}", "--set", f"out={checkpoint}"],
                       stdout=fh, stderr=subprocess.STDOUT, check=True)
    wall = time.perf_counter() - t0
    from pipeline.network.checkpoint import open_checkpoint

    info = open_checkpoint(checkpoint).info
    return {"wall_s": round(wall, 1), "iterations": info.iterations, "val_ap50": info.metrics.get("ap50", float("nan"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--look", default="lightsheet")
    ap.add_argument("--minutes", type=float, nargs="+", default=[5, 10, 20])
    ap.add_argument("--annotations", nargs="+", default=["half", "full"], choices=["half", "full"])
    ap.add_argument("--out", default="runs/finetune")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    out = Path(args.out).resolve() / args.look
    out.mkdir(parents=True, exist_ok=True)
    print(f"# {machine()}\n# look {args.look}, crops {list(demo_spec(args.look, (40, 128, 128)).shape)} x 3 "
          f"(2 training, 1 validation), held-out volumes seeds {list(EVAL_SEEDS)}", flush=True)
    volumes = held_out(out, args.look, (48, 128, 128))
    cfgs = configs(out, args.look, args.seed)
    rows = [{"annotation": "-", "minutes": 0, **score("demo", volumes, out)}]
    print(json.dumps(rows[-1]), flush=True)
    for annotation in args.annotations:
        for minutes in args.minutes:
            ckpt = out / f"{annotation}-{minutes:g}min.pt"
            trained = fine_tune(cfgs[annotation], 60 * minutes, ckpt)
            rows.append({"annotation": annotation, "minutes": minutes, **trained, **score(str(ckpt), volumes, out)})
            print(json.dumps(rows[-1]), flush=True)
    print("\n| annotation | budget | wall | iterations | validation AP@0.5 | held-out AP@0.5 | AP@0.75 | splits | merges |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["annotation"] == "-":
            print(f"| bundled model | - | - | - | - | {r['ap50']:.3f} | {r['ap75']:.3f} | {r['splits']} | {r['merges']} |")
        else:
            print(f"| {r['annotation']} | {r['minutes']:g} min | {r['wall_s']:.0f} s | {r['iterations']} | "
                  f"{r['val_ap50']:.3f} | {r['ap50']:.3f} | {r['ap75']:.3f} | {r['splits']} | {r['merges']} |")


if __name__ == "__main__":
    main()
