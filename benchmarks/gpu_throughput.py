"""GPU throughput, side by side in one run: bare model loop vs the predict stage vs `pipeline run`,
for the demo model and the paper's nuclei3d net (f=2, l=3, 16-d embeddings); plus blockwise vs
whole-volume difference per precision. Runs on a CPU too (small sizes) to check the script.

    python benchmarks/gpu_throughput.py --out DIR [--shape 64 512 512] [--write 32 128 128] [--batch 4]

Prints a table and writes ``DIR/gpu_throughput.json``. Mvox/s are written (output) voxels per second.
* compute: the network alone on blocks already on the device (upper bound);
* bare loop: host blocks -> device -> network -> host, one batch after the other (what a user writes);
* predict stage: the pipeline's GPU task (zarr read with prefetch, pinned buffers, copy/compute
  streams), results kept in memory, over all blocks;
* pipeline run: `pipeline run` end to end (predict + cluster + merge + relabel), local-cuda when
  dask-cuda and a GPU are there, else a local cluster.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, synthetic_volume

from pipeline.network.checkpoint import open_checkpoint, save_checkpoint
from pipeline.network.model import ModelSpec, init_model
from pipeline.network.predict import NormStats, Predictor, predict_tiled, predict_whole
from pipeline.plan.blocks import BlockPlan
from pipeline.volume.io import write_zarr


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(name: str, ckpt: Path, vol: Path, image: np.ndarray, args: argparse.Namespace, tmp: Path) -> dict:
    from pipeline.config import InputConfig
    from pipeline.run import prepare, segment
    from pipeline.runtime.store import Store
    from pipeline.stages.base import Task
    from pipeline.stages.predict import predict_blocks

    model = open_checkpoint(ckpt).model
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pred = Predictor(model, device=str(device), precision="float32", channels_last=True)
    plan = BlockPlan(image.shape, args.write, model.spec.context, model.spec.step)
    blocks = list(plan)
    from pipeline.volume.io import open_input

    volume = open_input(InputConfig(path=vol, dataset="raw"))
    host = [volume.read(b.read) for b in blocks]  # pre-read: the bare loop does no I/O
    stats = NormStats(0.0, 1.0)
    voxels = int(np.prod(image.shape))
    row: dict = {"model": name, "step": list(model.spec.step), "context": list(model.spec.context),
                 "write": list(args.write), "blocks": len(blocks), "redundancy": round(plan.redundancy, 3)}
    batches = [host[i:i + args.batch] for i in range(0, len(host), args.batch)]
    pred.batch(np.stack(batches[0]), stats)  # warm-up (cuDNN autotuning)
    x_dev = [pred_input(pred, b, stats) for b in batches]
    _sync(device)
    t0 = time.perf_counter()
    for x in x_dev:
        pred.forward(x)
    _sync(device)
    row["compute_mvox_s"] = voxels / (time.perf_counter() - t0) / 1e6
    del x_dev
    t0 = time.perf_counter()
    for b in batches:
        pred.batch(np.stack(b), stats)
    row["bare_loop_mvox_s"] = voxels / (time.perf_counter() - t0) / 1e6
    cfg = {"input": {"path": str(vol), "dataset": "raw"}, "output": {"path": str(tmp / f"{name}-run.zarr")},
           "model": {"checkpoint": str(ckpt), "device": "auto", "batch_size": args.batch},
           "blocks": {"write_shape": list(args.write), "blocks_per_task": args.blocks_per_task},
           "clustering": {"method": "connectivity"}}
    run = prepare(cfg)
    task = Task.of(run, Store(str(tmp / "unused"), "bench"))
    predict_blocks(task, blocks[: args.batch])  # warm-up of the cached predictor
    t0 = time.perf_counter()
    for i in range(0, len(blocks), args.blocks_per_task):
        predict_blocks(task, blocks[i:i + args.blocks_per_task])
    row["predict_stage_mvox_s"] = voxels / (time.perf_counter() - t0) / 1e6
    kind = _cluster_kind()
    t0 = time.perf_counter()
    segment({**cfg, "cluster": kind})
    row["pipeline_run_mvox_s"] = voxels / (time.perf_counter() - t0) / 1e6
    row["cluster"] = kind["kind"]
    row["predict_stage/bare_loop"] = row["predict_stage_mvox_s"] / row["bare_loop_mvox_s"]
    row["pipeline_run/bare_loop"] = row["pipeline_run_mvox_s"] / row["bare_loop_mvox_s"]
    return row


def pred_input(pred: Predictor, blocks: list[np.ndarray], stats: NormStats) -> torch.Tensor:
    from pipeline.network.predict import normalise

    return torch.from_numpy(normalise(np.stack(blocks), stats, pred.np_dtype)).to(pred.device)


def _cluster_kind() -> dict:
    try:
        import dask_cuda  # noqa: F401

        if torch.cuda.is_available():
            return {"kind": "local-cuda"}
    except Exception:  # noqa: BLE001 - dask-cuda fails in several ways without CUDA
        pass
    return {"kind": "local", "n_workers": 2}


def exactness(args: argparse.Namespace) -> list[dict]:
    """Blockwise (aligned tiles) vs one whole-volume pass, per precision, on this device."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    spec = ModelSpec(downsample=[[1, 2, 2], [2, 2, 2]], base_features=8)
    vol = np.random.default_rng(0).random((1, 24, 96, 96)).astype(np.float32)
    rows = []
    for precision in ("float64", "float32", "tf32", "bfloat16"):
        if device == "cpu" and precision == "tf32":
            continue
        pred = Predictor(init_model(spec, seed=1), device=device, precision=precision)
        whole = predict_whole(pred, vol, NormStats(0.0, 1.0))
        tiled = predict_tiled(pred, vol, NormStats(0.0, 1.0), (8, 32, 32))
        rows.append({"device": device, "precision": precision, "max_abs_diff": float(np.abs(whole - tiled).max())})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    gpu = torch.cuda.is_available()
    p.add_argument("--shape", type=int, nargs=3, default=[64, 512, 512] if gpu else [16, 64, 64])
    p.add_argument("--write", type=int, nargs=3, default=[32, 128, 128] if gpu else [8, 32, 32])
    p.add_argument("--batch", type=int, default=4 if gpu else 1)
    p.add_argument("--blocks-per-task", type=int, default=8 if gpu else 2)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine(), "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        image, _ = synthetic_volume(args.shape, seed=1)
        write_zarr(tmp / "in.zarr", image.astype(np.float32), chunks=args.write, name="raw")
        nuclei3d = init_model(ModelSpec(downsample=[[2, 2, 2]] * 3, embed_dim=16, base_features=16), seed=0)
        models = {"demo": open_checkpoint("demo").path, "nuclei3d": save_checkpoint(nuclei3d, tmp / "nuclei3d.pt")}
        result["rows"] = [measure(name, ckpt, tmp / "in.zarr", image, args, tmp) for name, ckpt in models.items()]
    result["exactness"] = exactness(args)
    (args.out / "gpu_throughput.json").write_text(json.dumps(result, indent=2))
    print(result["machine"])
    cols = ["compute_mvox_s", "bare_loop_mvox_s", "predict_stage_mvox_s", "pipeline_run_mvox_s",
            "predict_stage/bare_loop", "pipeline_run/bare_loop"]
    print(f"{'model':<10}" + "".join(f"{c:>24}" for c in cols))
    for r in result["rows"]:
        print(f"{r['model']:<10}" + "".join(f"{r[c]:>24.2f}" for c in cols) + f"   ({r['cluster']}, {r['blocks']} blocks)")
    for r in result["exactness"]:
        print(f"blockwise vs whole on {r['device']}, {r['precision']}: max |diff| {r['max_abs_diff']:.2e}")


if __name__ == "__main__":
    main()
