"""One worker's peak memory as objects and blocks grow 8x (issue 28, item 5).

The lattice of `scale.py` (2x2x2 cubes every 4 voxels: one object per 64 voxels), pass-through
model, connectivity clustering, blocks (16,64,64), ONE worker (1 thread, 4 GiB limit): a small run
and one with 8x the voxels, blocks and objects (default 128 blocks / 131,072 objects against 1,024
blocks / 1,048,576 objects). Each run is a fresh process with a fresh LocalCluster; a thread in the
worker samples its RSS every 50 ms and names the task running, so the table shows each stage's
peak besides the worker's lifetime peak (``ru_maxrss``).

    python benchmarks/worker_memory.py [--small 32 512 512] [--write 16 64 64]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine

STAGES = {"load_batch": "fragments", "run_batch": "fragments", "pairs": "merge", "select_tables": "merge",
          "audit_summary": "relabel", "run_unloaded": "relabel", "reduce_parts": "objects", "write": "labels"}


def start_sampler(dask_worker) -> None:  # type: ignore[no-untyped-def]
    """In the worker: RSS every 50 ms with the stage of the task running."""
    import threading
    import time

    import psutil

    proc, log = psutil.Process(), {}
    dask_worker.rss_by_stage = log

    def loop() -> None:
        while True:
            keys = [str(ts.key) for ts in dask_worker.state.executing]
            stage = STAGES.get(keys[0].split("-")[0], "other") if keys else "idle"
            log[stage] = max(log.get(stage, 0.0), proc.memory_info().rss / 2**20)
            time.sleep(0.05)

    threading.Thread(target=loop, daemon=True, name="rss-sampler").start()


def report(dask_worker) -> dict:  # type: ignore[no-untyped-def]
    import resource

    return {"stages": dict(dask_worker.rss_by_stage),
            "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child(tmp: Path, write: list[int]) -> None:
    import time

    from distributed import Client, LocalCluster

    from pipeline.network.checkpoint import save_checkpoint
    from pipeline.network.model import passthrough_model
    from pipeline.run import segment
    from pipeline.volume.io import open_group

    ckpt = save_checkpoint(passthrough_model(3), tmp / "pass.pt", extra={"delta_v": 0.5, "delta_d": 1.5})
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, memory_limit="4GiB", dashboard_address=":0",
                      host="127.0.0.1", resources={"model": 1}) as cluster, Client(cluster) as client:
        client.run(start_sampler)
        t0 = time.perf_counter()
        out = segment({"input": {"path": str(tmp / "in.zarr")}, "output": {"path": str(tmp / "out.zarr")},
                       "model": {"checkpoint": str(ckpt)}, "blocks": {"write_shape": write},
                       "clustering": {"method": "connectivity"}, "cluster": {"kind": "local", "n_workers": 1}},
                      client=client)
        wall = time.perf_counter() - t0
        (worker,) = client.run(report).values()
    meta = open_group(out).attrs["pipeline"]
    print(json.dumps({**worker, "wall": wall, "objects": meta["objects"], "timing": meta["timing_s"]}))


def measure(shape: list[int], write: list[int]) -> dict:
    from scale import make_lattice

    tmp = Path(tempfile.mkdtemp())
    make_lattice(tmp / "in.zarr", tuple(shape), tuple(write))
    out = subprocess.run([sys.executable, __file__, "--child", str(tmp), "--write", *map(str, write)],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child")
    ap.add_argument("--small", type=int, nargs=3, default=[32, 512, 512])
    ap.add_argument("--write", type=int, nargs=3, default=[16, 64, 64])
    args = ap.parse_args()
    if args.child:
        child(Path(args.child), args.write)
        return
    print(f"machine: {machine()}")
    large = [args.small[0] * 2, args.small[1] * 2, args.small[2] * 2]
    rows = []
    for shape in (args.small, large):
        r = measure(shape, args.write)
        blocks = math.prod(-(-s // w) for s, w in zip(shape, args.write, strict=True))
        rows.append(r)
        stages = ", ".join(f"{k} {r['stages'][k]:.0f}" for k in ("fragments", "merge", "relabel", "objects", "labels")
                           if k in r["stages"])
        timing = ", ".join(f"{k} {v:.1f}" for k, v in r["timing"].items())
        print(f"| {shape} | {blocks} | {r['objects']:,} | {r['wall']:.0f} s ({timing}) | {r['peak']:.0f} MiB | {stages} |")
    print(f"worker peak RSS ratio (8x objects and blocks): {rows[1]['peak'] / rows[0]['peak']:.2f}")


if __name__ == "__main__":
    main()
