"""Prediction throughput of the pipeline against a bare torch loop over the same blocks.

Both run on this machine in one process tree, one after the other:
  bare      : all read blocks pre-loaded in memory, `model(block)` in a loop (torch threads = all cores)
  serial    : pipeline.predict with cluster.kind=serial (reads zarr, writes zarr, same process)
  dask      : pipeline.predict on a LocalCluster (1 worker, all cores as torch threads), cluster
              started before timing
Also the CPU network's settings (issue 29, item 5): float32 vs channels_last vs bf16 autocast vs oneDNN
off vs ``torch.compile`` (inductor; ``--compile``: minutes of compilation per shape), each with its bare
loop time and its blockwise-vs-whole exactness.

    python benchmarks/predict_efficiency.py [--shape 48 192 192] [--write 16 64 64] [--no-bf16] [--compile]
        [--variants-only]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_of, machine, peak_rss_mib, synthetic_volume

from pipeline.network.checkpoint import load_checkpoint
from pipeline.network.predict import Predictor, predict_tiled, predict_whole
from pipeline.run import as_config, predict, prepare
from pipeline.volume.io import open_array, write_zarr


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", type=int, nargs=3, default=[48, 192, 192])
    ap.add_argument("--write", type=int, nargs=3, default=[16, 64, 64])
    ap.add_argument("--checkpoint", default="demo")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-bf16", action="store_true", help="skip bf16 autocast (very slow on CPUs without bf16 units)")
    ap.add_argument("--compile", action="store_true", help="also torch.compile (inductor)")
    ap.add_argument("--variants-only", action="store_true", help="the bare-loop variants only, not the pipeline runs")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    print(f"machine: {machine()}")
    tmp = Path(tempfile.mkdtemp())
    image, _ = synthetic_volume(args.shape)
    write_zarr(tmp / "in.zarr", image, chunks=args.write, name="raw")
    cfg = as_config({"input": {"path": str(tmp / "in.zarr"), "dataset": "raw"},
                     "output": {"path": str(tmp / "out.zarr"), "overwrite": True},
                     "model": {"checkpoint": args.checkpoint},
                     "blocks": {"write_shape": args.write}, "cluster": {"kind": "serial", "torch_threads": cores}})
    s = prepare(cfg)
    plan = s.plan
    print(f"volume {plan.volume}, write {plan.write_shape}, read {plan.read_shape}, blocks {len(plan)}, "
          f"redundant compute (voxels read / written) {plan.redundancy:.2f}")
    model = load_checkpoint(args.checkpoint)[0]
    blocks = [s.volume.read(b.read) for b in plan]
    voxels = int(np.prod(plan.volume))

    def bare(pred: Predictor) -> None:
        for b in blocks:
            pred(b, s.stats)

    results = {}
    variants: dict[str, dict] = {"float32": {}, "channels_last": {"channels_last": True},
                                 "bf16 autocast": {"precision": "bfloat16"}, "oneDNN off": {}}
    if args.no_bf16:
        del variants["bf16 autocast"]
    if args.compile:
        variants["torch.compile"] = {}
    ref64 = predict_whole(Predictor(load_checkpoint(args.checkpoint)[0], precision="float64"), image[None], s.stats)
    for name, kw in variants.items():
        pred = Predictor(load_checkpoint(args.checkpoint)[0], **kw)
        if name == "torch.compile":
            pred.model = torch.compile(pred.model)
        with torch.backends.mkldnn.flags(enabled=name != "oneDNN off"):
            bare(pred)  # warm-up (and compilation)
            t = best_of(lambda pred=pred: bare(pred), args.repeats)
            tiled = predict_tiled(pred, image[None], s.stats, plan.write_shape)
            whole = predict_whole(pred, image[None], s.stats)
        results[name] = t
        print(f"bare loop {name:14s}: {t:7.2f} s  {voxels / t / 1e6:6.3f} Mvox/s   blockwise-vs-whole max|diff| "
              f"{np.abs(tiled - whole).max():.2e}   vs float64 {np.abs(tiled - ref64).max():.2e}", flush=True)
    del model
    if args.variants_only:
        return

    t_serial = best_of(lambda: predict(cfg), args.repeats)
    print(f"pipeline serial        : {t_serial:7.2f} s  {voxels / t_serial / 1e6:6.3f} Mvox/s  "
          f"ratio to bare float32 {results['float32'] / t_serial:.3f}")

    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0",
                      host="127.0.0.1", resources={"model": 1}) as cluster, Client(cluster) as client:
        predict(cfg, client=client)  # warm-up: model load in the worker
        t_dask = best_of(lambda: predict(cfg, client=client), args.repeats)
        cfg4 = cfg.model_copy(update={"blocks": cfg.blocks.model_copy(update={"blocks_per_task": 4})})
        t_dask4 = best_of(lambda: predict(cfg4, client=client), args.repeats)
        worker_rss = max(client.run(lambda: __import__("psutil").Process().memory_info().rss).values()) / 2**20
    print(f"pipeline dask (1 worker): {t_dask:7.2f} s  {voxels / t_dask / 1e6:6.3f} Mvox/s  "
          f"ratio to bare float32 {results['float32'] / t_dask:.3f}")
    print(f"  same, 4 blocks/task (input prefetched during compute): {t_dask4:7.2f} s  "
          f"ratio to bare float32 {results['float32'] / t_dask4:.3f}")
    emb = open_array(tmp / "out.zarr" / "embeddings")[...]
    print(f"pipeline output vs whole-volume float32 max|diff| {np.abs(emb - predict_whole(Predictor(load_checkpoint(args.checkpoint)[0]), image[None], s.stats)[:-1]).max():.2e}")
    print(f"peak RSS: client {peak_rss_mib():.0f} MiB, worker {worker_rss:.0f} MiB")


if __name__ == "__main__":
    main()
