"""Peak memory of `pipeline run` for two volume sizes 8x apart, same block size.

Each measured run is a fresh subprocess (so the client's peak RSS is its own) with a fresh
LocalCluster; worker peaks are each worker process's lifetime maximum RSS. A cheap pass-through
model keeps the run short; the volume is written block by block, never held in memory.

    python benchmarks/memory.py [--base 32 256 256] [--write 32 128 128]
    python benchmarks/memory.py --big 2.5   # also: a volume of 2.5x the workers' total memory limit
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine


def make_volume(path: Path, shape: tuple[int, ...], chunks: tuple[int, ...], seed: int = 0,
                dtype: str = "float32") -> None:
    """Blobs written chunk by chunk (bounded memory)."""
    import zarr
    from scipy import ndimage

    arr = zarr.create_array(str(path), shape=shape, chunks=chunks, dtype=dtype, fill_value=0)
    rng = np.random.default_rng(seed)
    grid = [range(0, s, c) for s, c in zip(shape, chunks)]
    import itertools

    for off in itertools.product(*grid):
        sl = tuple(slice(o, min(o + c, s)) for o, c, s in zip(off, chunks, shape))
        block = ndimage.gaussian_filter(rng.random([s.stop - s.start for s in sl], dtype=np.float32), 2.0) > 0.5
        arr[sl] = block.astype(dtype)


def child(args: argparse.Namespace) -> None:
    import resource
    import time

    from distributed import Client, LocalCluster

    from pipeline.network.checkpoint import save_checkpoint
    from pipeline.network.model import passthrough_model
    from pipeline.run import segment

    tmp = Path(args.dir)
    ckpt = save_checkpoint(passthrough_model(3), tmp / "pass.pt", extra={"delta_v": 0.5, "delta_d": 1.5})
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit=args.memory_limit,
                      dashboard_address=":0", host="127.0.0.1", resources={"model": 1}) as cluster, \
            Client(cluster) as client:
        t0 = time.perf_counter()
        out = segment({"input": {"path": str(tmp / "in.zarr")}, "output": {"path": str(tmp / "out.zarr"), "overwrite": True},
                       "model": {"checkpoint": str(ckpt)}, "blocks": {"write_shape": args.write},
                       "cluster": {"kind": "local", "n_workers": 2}}, client=client)
        seconds = time.perf_counter() - t0
        workers = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        client_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the check below
    import zarr

    from pipeline.volume.io import open_group

    n = open_group(out).attrs["pipeline"]["objects"]
    seg = zarr.open_array(str(out / "segmentation"), mode="r")
    check = None
    if args.check:
        from scipy import ndimage

        src = zarr.open_array(str(tmp / "in.zarr"), mode="r")[...] > 0.5
        check = int(ndimage.label(src)[1]) == n
    print(json.dumps({"client_mib": client_mib,
                      "worker_mib": sorted(workers.values()), "seconds": seconds, "objects": n,
                      "shape": list(seg.shape), "matches_scipy": check}))


def run_size(shape, write, memory_limit, check=False, dtype="float32"):
    tmp = Path(tempfile.mkdtemp())
    make_volume(tmp / "in.zarr", tuple(shape), tuple(write), dtype=dtype)
    cmd = [sys.executable, __file__, "--child", "--dir", str(tmp), "--write", *map(str, write),
           "--memory-limit", memory_limit] + (["--check"] if check else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--dir")
    ap.add_argument("--base", type=int, nargs=3, default=[32, 256, 256])
    ap.add_argument("--write", type=int, nargs=3, default=[32, 128, 128])
    ap.add_argument("--memory-limit", default="1GiB")
    ap.add_argument("--big", type=float, default=0.0, help="also run a volume this many times the workers' total memory")
    ap.add_argument("--big-shape", type=int, nargs=3, help="explicit shape for the --big run")
    ap.add_argument("--skip-scaling", action="store_true", help="only the --big run")
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    print(f"machine: {machine()}")
    small = args.base
    large = [small[0] * 2, small[1] * 2, small[2] * 2]  # 8x the voxels
    pairs = [] if args.skip_scaling else [(small, run_size(small, args.write, args.memory_limit, check=True)),
                                          (large, run_size(large, args.write, args.memory_limit, check=True))]
    for shape, r in pairs:
        print(f"volume {shape} ({np.prod(shape) / 1e6:.0f} Mvox): client {r['client_mib']:.0f} MiB, workers "
              f"{', '.join(f'{w:.0f}' for w in r['worker_mib'])} MiB, {r['seconds']:.1f} s, {r['objects']} objects "
              f"(== scipy.ndimage.label: {r['matches_scipy']})")
    if pairs:
        r1, r2 = pairs[0][1], pairs[1][1]
        print(f"ratio large/small (8x voxels): client {r2['client_mib'] / r1['client_mib']:.2f}, worker "
              f"{max(r2['worker_mib']) / max(r1['worker_mib']):.2f}")
    if args.big:
        # float64 input: the most bytes per voxel, so the fewest voxels to exceed the workers' memory
        limit_gib = float(args.memory_limit.removesuffix("GiB"))
        voxels = args.big * 2 * limit_gib * 2**30 / 8
        side = round((voxels / 0.25) ** (1 / 3))  # z is a quarter of y and x
        shape = args.big_shape or [max(args.write[0], (side // 4) // args.write[0] * args.write[0]),
                                   side // args.write[1] * args.write[1], side // args.write[2] * args.write[2]]
        r = run_size(shape, args.write, args.memory_limit, check=True, dtype="float64")
        gib = np.prod(shape) * 8 / 2**30
        print(f"big volume {shape}: {gib:.2f} GiB float64 input vs 2 workers x {args.memory_limit} = "
              f"{2 * limit_gib:.0f} GiB: client {r['client_mib']:.0f} MiB, workers "
              f"{', '.join(f'{w:.0f}' for w in r['worker_mib'])} MiB, {r['seconds']:.0f} s, {r['objects']} objects, "
              f"equals scipy.ndimage.label: {r['matches_scipy']}")


if __name__ == "__main__":
    main()
