"""Clustering and merging throughput, and where end-to-end time goes.

1. Clustering throughput per method (voxels/s) on the demo model's embeddings of a synthetic
   volume, block by block, plus each method's AP@0.5 against the ground truth.
2. Each method through the full pipeline, blockwise and as one block: AP against the ground
   truth, and the agreement of the blockwise run with the single-block run (connectivity is
   identical by construction and tested; agglomeration and meanshift are not).
3. Label a binary volume: pipeline (pass-through model, connectivity) against
   dask_image.ndmeasure.label, same chunking, same LocalCluster, zarr in and out.
4. Share of end-to-end `pipeline run` time spent outside the model.

    python benchmarks/clustering.py [--shape 48 192 192] [--binary-shape 128 512 512]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, peak_rss_mib, synthetic_volume

from pipeline.clustering import METHODS, fragments
from pipeline.network.checkpoint import load_checkpoint, save_checkpoint
from pipeline.network.model import passthrough_model
from pipeline.network.predict import Predictor, predict_whole
from pipeline.qc.metrics import evaluate
from pipeline.run import as_config, clustering_params, prepare, segment
from pipeline.volume.io import open_array, open_group, write_zarr


def _cfg(tmp, name, write, ckpt="demo", **extra):
    return as_config({"input": {"path": str(tmp / "in.zarr"), "dataset": "raw"},
                      "output": {"path": str(tmp / f"{name}.zarr"), "overwrite": True},
                      "model": {"checkpoint": str(ckpt)}, "blocks": {"write_shape": list(write)}, **extra})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", type=int, nargs=3, default=[48, 192, 192])
    ap.add_argument("--write", type=int, nargs=3, default=[16, 64, 64])
    ap.add_argument("--binary-shape", type=int, nargs=3, default=[128, 512, 512])
    ap.add_argument("--binary-write", type=int, nargs=3, default=[64, 128, 128])
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(cores)
    print(f"machine: {machine()}")
    tmp = Path(tempfile.mkdtemp())
    image, gt = synthetic_volume(args.shape, seed=11)
    write_zarr(tmp / "in.zarr", image, chunks=args.write, name="raw")
    cfg = _cfg(tmp, "x", args.write, cluster={"kind": "serial"})
    s = prepare(cfg)
    model, extra = load_checkpoint("demo")
    params = {m: clustering_params(_cfg(tmp, "x", args.write, clustering={"method": m}), extra) for m in METHODS}
    for m, p in params.items():
        print(f"clustering parameters {m}: {p.as_dict()}")
    out = predict_whole(Predictor(model), image[None], s.stats)
    emb, fg = out[:-1], out[-1]
    voxels = fg.size

    # 1. clustering throughput, blockwise (fragments only, no merge)
    print(f"\n[1] clustering throughput on {tuple(fg.shape)} in blocks of {tuple(args.write)}")
    for method, p in params.items():
        t0 = time.perf_counter()
        for b in s.plan:
            sl = b.valid.to_slices()
            fragments(emb[(slice(None), *sl)], fg[sl], p)
        dt = time.perf_counter() - t0
        print(f"  {method:12s}: {voxels / dt / 1e6:7.3f} Mvox/s ({dt:.2f} s)")

    # 2. quality and blockwise agreement of both methods through the full pipeline
    print("\n[2] pipeline run (serial), blockwise vs single block, vs ground truth")
    single = [-(-v // st) * st for v, st in zip(args.shape, s.plan.step)]
    for method in METHODS:
        segs = {}
        for name, write in (("blockwise", args.write), ("single", single)):
            c = _cfg(tmp, f"{method}-{name}", write, cluster={"kind": "serial"}, clustering={"method": method})
            t0 = time.perf_counter()
            segment(c)
            segs[name] = open_array(tmp / f"{method}-{name}.zarr" / "segmentation")[...]
            t = time.perf_counter() - t0
            sc = evaluate(segs[name], gt).summary()
            print(f"  {method:12s} {name:9s}: {t:6.1f} s  vs GT AP@0.5 {sc['ap50']:.3f} avAP {sc['avap']:.3f} "
                  f"(pred {sc['n_pred']}, gt {sc['n_gt']}, splits {sc['false_splits']}, merges {sc['false_merges']})")
        agree = evaluate(segs["blockwise"], segs["single"]).summary()
        same = np.array_equal(segs["blockwise"] > 0, segs["single"] > 0)
        print(f"  {method:12s} blockwise vs single block: AP@0.5 {agree['ap50']:.4f} avAP {agree['avap']:.4f} "
              f"(same foreground: {same})")

    # 3. labelling a binary volume: pipeline vs dask-image
    import dask.array as da
    from dask_image.ndmeasure import label as dask_label
    from distributed import Client, LocalCluster
    from scipy import ndimage

    print(f"\n[3] binary volume {tuple(args.binary_shape)}, chunks {tuple(args.binary_write)}, "
          f"LocalCluster {args.workers} workers")
    rng = np.random.default_rng(0)
    binary = ndimage.gaussian_filter(rng.random(args.binary_shape, dtype=np.float32), 2.0) > 0.5
    write_zarr(tmp / "in.zarr", binary.astype(np.float32), chunks=args.binary_write, name="raw")
    ckpt = save_checkpoint(passthrough_model(3), tmp / "pass.pt", extra={"delta_v": 0.5, "delta_d": 1.5})
    n_ref = ndimage.label(binary)[1]
    del binary
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                      host="127.0.0.1", resources={"model": 1}) as cluster, Client(cluster) as client:
        c = _cfg(tmp, "bin", args.binary_write, ckpt=ckpt, cluster={"kind": "local", "n_workers": args.workers})
        segment(c, client=client)  # warm-up
        t0 = time.perf_counter()
        segment(c, client=client)
        ours = time.perf_counter() - t0
        timing = open_group(tmp / "bin.zarr").attrs["pipeline"]["timing_s"]
        n_ours = int(open_array(tmp / "bin.zarr" / "segmentation").attrs.get("n", 0)) or open_group(tmp / "bin.zarr").attrs["pipeline"]["objects"]
        src = da.from_zarr(str(tmp / "in.zarr" / "raw")) > 0.5
        t0 = time.perf_counter()
        labels, n = dask_label(src)
        labels.to_zarr(str(tmp / "dask_image.zarr"), overwrite=True)
        n_di = int(n.compute())
        theirs = time.perf_counter() - t0
    mr = timing["merge"] + timing["relabel"]
    vox = int(np.prod(args.binary_shape))
    print(f"  objects: pipeline {n_ours}, dask-image {n_di}, scipy {n_ref}")
    print(f"  pipeline end-to-end (read, pass-through net, cluster, merge, relabel, write): {ours:.2f} s "
          f"({vox / ours / 1e6:.2f} Mvox/s); stages {json.dumps(timing)}")
    print(f"  pipeline merge+relabel: {mr:.2f} s ({vox / mr / 1e6:.2f} Mvox/s)")
    print(f"  dask-image label + to_zarr: {theirs:.2f} s ({vox / theirs / 1e6:.2f} Mvox/s)")
    print(f"  ratio dask-image / pipeline merge+relabel: {theirs / mr:.1f}x; end-to-end: {theirs / ours:.2f}x")

    # 4. share of end-to-end time outside the model
    print(f"\n[4] end-to-end `pipeline run` (serial, demo model) on {tuple(args.shape)}")
    write_zarr(tmp / "in.zarr", image, chunks=args.write, name="raw")
    c = _cfg(tmp, "e2e", args.write, cluster={"kind": "serial", "torch_threads": cores})
    s = prepare(c)
    pred = Predictor(load_checkpoint("demo")[0])
    blocks = [s.volume.read(b.read) for b in s.plan]
    t0 = time.perf_counter()
    for b in blocks:
        pred(b, s.stats)
    model_t = time.perf_counter() - t0
    t0 = time.perf_counter()
    segment(c)
    total = time.perf_counter() - t0
    print(f"  model alone {model_t:.2f} s, pipeline run {total:.2f} s -> outside the model {1 - model_t / total:.1%}")
    print(f"\npeak RSS (this process): {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
