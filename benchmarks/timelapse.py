"""What a time-lapse costs beyond its time points (issue 32 item 4), measured side by side in one
process: T time points of one shape as a time-lapse run (one cluster, a run per time point, stacked by
hard links), the same T time points as T separate runs (each opening its own cluster, as a user's
loop over time points would), and the same voxels as one volume (the T frames side by side along z).
Also the stacking step alone (hard links) and the disk taken, against the time points' own files.

    python benchmarks/timelapse.py --timepoints 8 --shape 32 256 256 --write 32 128 128 --cluster local
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.run import segment
from pipeline.runtime.stack import put_timepoint
from pipeline.volume import synthetic
from pipeline.volume.io import open_array, write_zarr


def disk(root: Path, seen: set | None = None) -> dict[str, int]:
    """Bytes of the files under ``root`` by top-level entry, a hard-linked file once (as ``du`` counts
    them), none of the files in ``seen`` (inodes, filled in)."""
    seen = set() if seen is None else seen
    out: dict[str, int] = {}
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                key = p.relative_to(root).parts[0]
                out[key] = out.get(key, 0) + st.st_size
    return out


def timed(fn, *args, **kw):
    t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    c0k = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = fn(*args, **kw)
    c1, c1k = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime) + (c1k.ru_utime + c1k.ru_stime - c0k.ru_utime - c0k.ru_stime)
    return out, time.perf_counter() - t0, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--timepoints", type=int, default=8)
    ap.add_argument("--shape", type=int, nargs=3, default=[32, 256, 256])
    ap.add_argument("--write", type=int, nargs=3, default=[32, 128, 128])
    ap.add_argument("--cluster", choices=["serial", "local"], default="local")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="timelapse-"))
    n, shape = args.timepoints, tuple(args.shape)
    frames = np.stack([synthetic.generate(synthetic.appearance("demo", shape=shape), seed=20 + t)[0] for t in range(n)])
    write_zarr(tmp / "movie.zarr", frames, chunks=(1, *args.write), name="raw", dims="tzyx")
    write_zarr(tmp / "flat.zarr", frames.reshape(n * shape[0], *shape[1:]), chunks=args.write, name="raw")
    cluster = {"kind": "serial"} if args.cluster == "serial" else {"kind": "local", "n_workers": 2, "threads_per_worker": 1}
    mvox = frames.size / 1e6
    print(f"{n} time points of {shape} ({mvox:.1f} Mvox in all), blocks {tuple(args.write)}, cluster {args.cluster}; "
          f"load {os.getloadavg()[0]:.2f}")

    def cfg(inp: str, out: str, **extra) -> dict:
        return {"input": {"path": str(tmp / inp), "dataset": "raw", **extra}, "output": {"path": str(tmp / out)},
                "blocks": {"write_shape": list(args.write)}, "cluster": cluster}

    movie, wall_tl, cpu_tl = timed(segment, cfg("movie.zarr", "movie-out.zarr"))
    singles_wall = singles_cpu = 0.0
    for t in range(n):
        _, w, c = timed(segment, cfg("movie.zarr", f"single{t}.zarr", timepoint=t))
        singles_wall, singles_cpu = singles_wall + w, singles_cpu + c
    _, wall_flat, cpu_flat = timed(segment, cfg("flat.zarr", "flat-out.zarr"))
    seg = open_array(movie / "segmentation", mode="r")
    same = all(np.array_equal(seg[t], open_array(tmp / f"single{t}.zarr" / "segmentation", mode="r")[...]) for t in range(n))
    level = movie / "labels" / "segmentation" / "0"
    t0 = time.perf_counter()
    for t in range(n):
        put_timepoint(movie / "timepoints" / f"t{t:05d}" / "labels" / "segmentation" / "0", level, t)
    link = (time.perf_counter() - t0) / n
    seen: set = set()
    runs = sum(disk(movie / "timepoints", seen).values())
    extra = disk(movie, seen)
    print(f"time-lapse run            {wall_tl:7.1f} s wall {cpu_tl:7.1f} CPU-s ({mvox / wall_tl:.2f} Mvox/s)")
    print(f"{n} separate runs          {singles_wall:7.1f} s wall {singles_cpu:7.1f} CPU-s (ratio time-lapse / separate "
          f"{wall_tl / singles_wall:.2f})")
    print(f"one volume, same voxels   {wall_flat:7.1f} s wall {cpu_flat:7.1f} CPU-s (ratio time-lapse / one volume "
          f"{wall_tl / wall_flat:.2f}; {(wall_tl - wall_flat) / n:.2f} s more per time point)")
    print(f"stacking (hard links)     {link * 1000:7.1f} ms per time point ({sum(1 for _ in level.rglob('*'))} entries)")
    print(f"disk: the time points' runs {runs / 2**20:.2f} MiB; the time-lapse adds "
          + ", ".join(f"{k} {v / 2**10:.0f} KiB" for k, v in sorted(extra.items()))
          + " (labels: the stacks' metadata only, their chunks are the runs' files)")
    print(f"each time point == its separate run: {same}")
    print(f"peak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
