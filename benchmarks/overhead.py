"""Demo time and per-block overhead of this checkout vs another one, side by side in one run.

Each measurement runs in a fresh subprocess whose ``PYTHONPATH`` points at one source tree
(this checkout, or ``--baseline DIR``, e.g. a ``git worktree`` of an older commit), the two
trees alternating, ``--repeats`` times each; the median of each is reported (single runs
vary by +-15% on a shared 2-core VM). Data and outputs live on tmpfs (/dev/shm) when there
is one, so disk latency does not blur the orchestration cost.

* demo: ``pipeline demo`` (synthetic (48,128,128) volume, demo model, local cluster of 2 workers)
* per-block overhead: ``pipeline run`` with a pass-through model (no real compute) over
  many tiny blocks; wall time / blocks, serially (pure orchestration cost) and on a 2-worker
  LocalCluster.

    git worktree add --detach /tmp/base <commit>
    python benchmarks/overhead.py --baseline /tmp/base
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
from pathlib import Path
import numpy as np
import pipeline
tmp, what = Path(sys.argv[1]), sys.argv[2]
if what == "demo":
    from pipeline.demo import run_demo
    t0 = time.perf_counter()
    r = run_demo(tmp / "demo", overwrite=True)
    print(json.dumps({"seconds": time.perf_counter() - t0, "ap50": r["ap50"], "objects": r["objects"],
                      "pipeline": pipeline.__file__}))
else:
    from pipeline.volume.io import write_zarr
    from pipeline.network.model import passthrough_model
    try:
        from pipeline.network.checkpoint import save_checkpoint
    except ImportError:  # older trees
        from pipeline.network.model import save_checkpoint
    from pipeline.run import segment
    from scipy import ndimage
    shape = tuple(json.loads(sys.argv[3]))
    write = json.loads(sys.argv[4])
    rng = np.random.default_rng(0)
    fg = (ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.5).astype(np.float32)
    write_zarr(tmp / "in.zarr", fg, chunks=write, name="raw")
    ckpt = save_checkpoint(passthrough_model(3), tmp / "pt.pt", extra={"delta_v": 0.5, "delta_d": 1.5})
    kind = {"kind": "serial"} if what == "serial" else {"kind": "local", "n_workers": 2}
    cfg = {"input": {"path": str(tmp / "in.zarr"), "dataset": "raw"},
           "output": {"path": str(tmp / "out.zarr"), "overwrite": True},
           "model": {"checkpoint": str(ckpt)}, "blocks": {"write_shape": write}, "cluster": kind,
           "clustering": {"method": "connectivity"}}
    t0 = time.perf_counter()
    segment(cfg)
    blocks = int(np.prod([-(-s // w) for s, w in zip(shape, write)]))
    print(json.dumps({"seconds": time.perf_counter() - t0, "blocks": blocks, "pipeline": pipeline.__file__}))
"""


def measure(src: Path, what: str, args: argparse.Namespace) -> dict:
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None) as tmp:
        cmd = [sys.executable, "-c", CHILD, tmp, what, json.dumps(args.shape), json.dumps(args.write)]
        # cwd=tmp: `python -c` puts the working directory first on sys.path, ahead of PYTHONPATH
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, env={
            "PYTHONPATH": str(src), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": tmp})
        if out.returncode:
            raise SystemExit(f"{src} {what} failed:\n{out.stderr[-3000:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        if Path(result["pipeline"]).resolve() != (src / "pipeline" / "__init__.py").resolve():
            raise SystemExit(f"{what}: imported {result['pipeline']}, not the tree {src}")
        return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", type=Path, required=True, help="source tree to compare with")
    p.add_argument("--shape", type=int, nargs=3, default=[16, 64, 128])
    p.add_argument("--write", type=int, nargs=3, default=[4, 8, 8])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    trees = {"baseline": args.baseline.resolve(), "this": ROOT}
    print(f"machine: {machine()}")
    rows = []
    for what in ("demo", "serial", "local"):
        runs: dict[str, list[dict]] = {name: [] for name in trees}
        for _ in range(args.repeats):
            for name, src in trees.items():
                runs[name].append(measure(src, what, args))
        rows.append((what, {name: sorted(r, key=lambda x: x["seconds"])[len(r) // 2] for name, r in runs.items()}))
    print(f"medians of {args.repeats} runs each, alternating")
    print(f"{'measurement':<34} {'baseline':>10} {'this':>10} {'this/baseline':>14}")
    for what, best in rows:  # best: the median run of each tree
        if what == "demo":
            label = "demo wall time (s)"
            b, t = best["baseline"]["seconds"], best["this"]["seconds"]
            print(f"{label:<34} {b:>10.2f} {t:>10.2f} {t / b:>14.3f}   AP@0.5 {best['baseline']['ap50']:.3f} vs "
                  f"{best['this']['ap50']:.3f}")
        else:
            n = best["this"]["blocks"]
            b, t = (best[k]["seconds"] / n * 1000 for k in ("baseline", "this"))
            print(f"{f'per block, {what}, {n} blocks (ms)':<34} {b:>10.2f} {t:>10.2f} {t / b:>14.3f}")


if __name__ == "__main__":
    main()
