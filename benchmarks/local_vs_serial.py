"""`pipeline run` on a 2-worker LocalCluster vs serially, same volume, model and blocks, side by side.

The demo model on a synthetic volume; each run is a fresh subprocess (cluster start-up included,
as a user sees it), the two kinds alternating, medians of ``--repeats``. Speed ratio =
serial wall / local wall (1.0: the cluster costs nothing; 2.0: both cores used perfectly).

    python benchmarks/local_vs_serial.py [--shape 48 256 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, synthetic_volume

CHILD = r"""
import json, sys, time
from pipeline.run import segment
cfg = json.loads(sys.argv[1])
t0 = time.perf_counter()
segment(cfg)
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=3, default=[48, 256, 256])
    p.add_argument("--write", type=int, nargs=3, default=[16, 64, 64])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    from pipeline.volume.io import write_zarr

    tmp = Path(tempfile.mkdtemp(dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    img, _ = synthetic_volume(args.shape, seed=1)
    write_zarr(tmp / "in.zarr", img, chunks=args.write, name="raw")
    kinds = {"serial": {"kind": "serial"}, "local": {"kind": "local", "n_workers": 2, "threads_per_worker": 1}}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.repeats):
        for name, cluster in kinds.items():
            cfg = {"input": {"path": str(tmp / "in.zarr"), "dataset": "raw"},
                   "output": {"path": str(tmp / f"{name}.zarr"), "overwrite": True},
                   "blocks": {"write_shape": args.write}, "cluster": cluster}
            out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(out.stderr[-3000:])
            times[name].append(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])
    import zarr

    same = np.array_equal(zarr.open_array(str(tmp / "serial.zarr" / "segmentation"))[...],
                          zarr.open_array(str(tmp / "local.zarr" / "segmentation"))[...])
    s, loc = statistics.median(times["serial"]), statistics.median(times["local"])
    vox = float(np.prod(args.shape)) / 1e6
    print(f"machine: {machine()}; volume {args.shape} ({vox:.1f} Mvox), blocks {args.write}, demo model")
    print(f"serial: {s:.1f} s ({vox / s:.2f} Mvox/s); local 2 workers x 1 thread: {loc:.1f} s ({vox / loc:.2f} Mvox/s); "
          f"speed local/serial {s / loc:.2f} (medians of {args.repeats}: serial {[round(t, 1) for t in times['serial']]}, "
          f"local {[round(t, 1) for t in times['local']]}); identical segmentations: {same}")


if __name__ == "__main__":
    main()
