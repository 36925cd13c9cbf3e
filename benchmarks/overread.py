"""Input bytes decoded per output voxel: the chunk cache and the block order, before vs after (issue 22, item 5).

Reads every block of a plan (halo included, through the pipeline's own read path: the
prefetch thread, reflection, digest and stamp) in the batches a run forms, serially and on a
2-worker LocalCluster, and counts the bytes of input chunks decoded (``pipeline.volume.cache``'s
counter, summed over the processes). Nothing is predicted: this isolates the input side.

    before   no chunk cache (input.chunk_cache_mib: 0), batches in C order over the grid
    after    the chunk cache at its automatic bound, batches in blocks.sweep_axes order, each
             worker a contiguous span of them (Engine.map spans)
    slab     the cache bounded to blocks.sweep_chunks (what the claim needs), sweep order, spans
    C+slab   the same bound, C order, no spans (what the order buys)
    nospans  the same bound, sweep order, no spans (what spans buy on a cluster)

Each row runs in a fresh process (and a fresh cluster), so peak memory is its own.

    python benchmarks/overread.py [--shape 128 1024 1024] [--chunks 64 256 256] [--write 64 64 64]
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine

MODES = ("before", "after", "slab", "C+slab", "nospans")


def make_volume(path: Path, shape: tuple[int, ...], chunks: tuple[int, ...], seed: int = 0) -> None:
    """uint16 blobs on noise, written chunk by chunk (zarr v3, default zstd compression)."""
    import zarr
    from scipy import ndimage

    arr = zarr.create_array(str(path), shape=shape, chunks=chunks, dtype="uint16", fill_value=0)
    rng = np.random.default_rng(seed)
    for off in itertools.product(*(range(0, s, c) for s, c in zip(shape, chunks, strict=True))):
        sl = tuple(slice(o, min(o + c, s)) for o, c, s in zip(off, chunks, shape, strict=True))
        size = [s.stop - s.start for s in sl]
        blobs = ndimage.gaussian_filter(rng.random(size, dtype=np.float32), 3.0) > 0.5
        arr[sl] = (blobs * 800 + rng.integers(0, 200, size)).astype(np.uint16)


def read_batch(linears, cfg, plan) -> int:
    """A task: read its blocks as a predict task does (prefetched); the voxels read."""
    from pipeline.stages.predict import prefetched

    return sum(int(data.size) for _, data, _ in prefetched(cfg, [plan.block_at(i) for i in linears]))


def counters() -> dict:
    import resource

    from pipeline.volume.cache import _cache, decoded

    return {**decoded(), "cached_bytes": _cache().nbytes, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10}


def child(args: argparse.Namespace) -> None:
    from pipeline.config import InputConfig
    from pipeline.network.checkpoint import open_checkpoint
    from pipeline.plan.blocks import BlockPlan, in_sweep, sweep_axes, sweep_chunks
    from pipeline.plan.sizing import auto_blocks_per_task
    from pipeline.runtime.engine import Engine
    from pipeline.runtime.tasks import batched

    spec = open_checkpoint("demo").spec
    shape, chunks = tuple(args.shape), tuple(args.chunks)
    plan = BlockPlan(shape, tuple(args.write), spec.context, spec.step)
    slab_mib = -(-sweep_chunks(plan, chunks) * int(np.prod(chunks)) * 2 // (1 << 20))
    cache = {"before": 0, "after": None}.get(args.mode, slab_mib)
    spans = args.mode in ("after", "slab")
    cfg = InputConfig(path=Path(args.dir) / "in.zarr", chunk_cache_mib=cache)
    workers = 1 if args.cluster == "serial" else 2
    per = auto_blocks_per_task(len(plan), workers, 4 * (spec.embed_dim + 1) * int(np.prod(plan.write_shape)))
    order = in_sweep(range(len(plan)), plan.grid, None if args.mode in ("before", "C+slab") else sweep_axes(plan, chunks))
    batches = batched(order, per)
    t0 = time.perf_counter()
    if args.cluster == "serial":
        voxels = sum(Engine().map(read_batch, batches, cfg, plan, desc="read"))
        found = [counters()]
    else:
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit="8GiB",
                          dashboard_address=":0", host="127.0.0.1") as lc, Client(lc) as client:
            t0 = time.perf_counter()
            voxels = sum(Engine(client).map(read_batch, batches, cfg, plan, desc="read", spans=spans))
            found = list(client.run(counters).values())
    seconds = time.perf_counter() - t0
    out_bytes = plan.voxels_written * 2
    print(json.dumps({
        "mode": args.mode, "cluster": args.cluster, "blocks": len(plan), "per_task": per, "tasks": len(batches),
        "cache_mib": "auto" if cache is None else cache, "slab_mib": slab_mib, "spans": spans,
        "axes": "zyx" if args.mode in ("before", "C+slab") else "".join("zyx"[a] for a in sweep_axes(plan, chunks)),
        "decoded_per_output": sum(f["bytes"] for f in found) / out_bytes, "read_per_output": voxels / plan.voxels_written,
        "hits": sum(f["hits"] for f in found), "misses": sum(f["misses"] for f in found), "seconds": seconds,
        "peak_rss_mib": max(f["peak_rss"] for f in found) / 2**20,
        "cached_mib": max(f["cached_bytes"] for f in found) / 2**20}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[128, 1024, 1024])
    ap.add_argument("--chunks", type=int, nargs=3, default=[64, 256, 256])
    ap.add_argument("--write", type=int, nargs=3, default=[64, 64, 64])
    ap.add_argument("--clusters", nargs="+", default=["serial", "local"])
    ap.add_argument("--modes", nargs="+", default=list(MODES))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--cluster", help=argparse.SUPPRESS)
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        make_volume(Path(tmp) / "in.zarr", tuple(args.shape), tuple(args.chunks))
        print(f"input {args.shape} uint16, chunks {args.chunks}, written in {time.perf_counter() - t0:.0f} s; "
              f"blocks {args.write}, demo model's context")
        rows = []
        for cluster in args.clusters:
            for mode in args.modes:
                if cluster == "serial" and mode == "nospans":  # spans are for clusters
                    continue
                cmd = [sys.executable, __file__, "--child", "--mode", mode, "--cluster", cluster, "--dir", tmp,
                       "--shape", *map(str, args.shape), "--chunks", *map(str, args.chunks),
                       "--write", *map(str, args.write)]
                res = subprocess.run(cmd, capture_output=True, text=True, check=True)
                rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
                r = rows[-1]
                print(f"{cluster:7s} {mode:7s} cache {r['cache_mib']!s:>5} MiB  order {r['axes']}{' spans' if r['spans'] else '      '}  "
                      f"decoded/output {r['decoded_per_output']:6.2f}x  (read boxes {r['read_per_output']:.2f}x)  "
                      f"hits {r['hits']:6d} misses {r['misses']:5d}  {r['seconds']:6.1f} s  "
                      f"peak {r['peak_rss_mib']:6.0f} MiB (cache held {r['cached_mib']:.0f})", flush=True)
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
