"""Default blocks chosen by cost (issue 22): calibrate the cost model, then compare the old
default block (64,64,64) with the one the planner now chooses.

calibrate  measures the coefficients of :data:`pipeline.plan.cost.CPU` on this machine, in CPU seconds
           of this process (one torch thread), which other jobs on a shared machine disturb far
           less than wall time:
           network     seconds per read-box voxel of the bundled model, and its growth with the
                       read box (forward passes of five read boxes, best of ``--repeats`` after a
                       warm-up; a line fit of seconds per voxel against voxels per read box)
           decompress  seconds per input voxel read from zarr chunks (the input's own reader,
                       chunk by chunk, float32, zarr's default compressor)
           block       seconds per block: serial ``pipeline run`` of one volume with a pass-through
                       model (next to no network) at several write shapes, minus the decompress
                       term, fitted as block x blocks + fixed
           Then it runs the bundled model at ``--writes`` and prints measured against predicted
           (a check, not part of the fit).
           It also measures the peak memory of one forward pass per read voxel (against
           ``block_bytes``' estimate), which sizes the CPU memory share in ``pipeline.plan.prepare``.
compare    ``pipeline predict`` and ``pipeline run`` of a synthetic volume with objects, old default
           (64,64,64) vs the planner's choice, each in a fresh process (peak RSS is its own:
           VmHWM; workers: the largest child's ru_maxrss, which includes what it inherited);
           ``--repeats`` alternating runs each, the median reported, with ratios.

    python benchmarks/blocks.py calibrate
    python benchmarks/blocks.py compare [--shape 64 384 384] [--cluster serial|local]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, synthetic_volume

ROOT = Path(__file__).resolve().parents[1]
OLD = (64, 64, 64)


def fit(x: list[float], y: list[float]) -> tuple[float, float]:
    """Least-squares slope and intercept."""
    slope, intercept = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
    return float(slope), float(intercept)


FORWARD = r"""
import json, math, resource, sys, time
import numpy as np, torch
from pipeline.network.checkpoint import load_checkpoint, open_checkpoint
from pipeline.network.predict import NormStats, Predictor
read, threads, repeats = tuple(json.loads(sys.argv[1])), int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
predictor = Predictor(load_checkpoint(open_checkpoint("demo").path)[0], "cpu", "float32", True)
stats = NormStats(0.0, 1.0)
predictor.batch(np.zeros((1, 1, 28, 48, 48), np.float32), stats)  # warm-up
x = np.random.default_rng(0).random((1, 1, *read), dtype=np.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
best, wall = math.inf, math.inf
for _ in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    predictor.batch(x, stats)
    best, wall = min(best, time.process_time() - c0), min(wall, time.perf_counter() - t0)
print(json.dumps([best, wall, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before]))
"""


def serial_run(cfg: dict, repeats: int) -> tuple[float, float]:
    """Best CPU seconds (this process) and best wall seconds of ``pipeline.segment(cfg)``."""
    from pipeline.run import segment

    best, wall = math.inf, math.inf
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        segment(cfg)
        best, wall = min(best, time.process_time() - c0), min(wall, time.perf_counter() - t0)
    return best, wall


def calibrate(args: argparse.Namespace) -> None:
    from pipeline.geometry import Box
    from pipeline.network.checkpoint import open_checkpoint, save_checkpoint
    from pipeline.network.model import passthrough_model
    from pipeline.plan import cost
    from pipeline.plan.prepare import as_config
    from pipeline.plan.sizing import block_bytes
    from pipeline.volume.io import open_input, write_zarr

    spec = open_checkpoint("demo").spec
    print(f"# {machine()}; torch threads {args.threads}; CPU seconds of this process, best of {args.repeats}")
    writes = [tuple(int(x) for x in w.split(",")) for w in args.writes]

    # network and growth: seconds per read voxel = network + growth x read box (each read box in a
    # fresh process, which also gives the peak memory of one forward pass per read voxel)
    boxes_, per_voxel = [], []
    for write in [(16, 64, 64), (32, 128, 128), (64, 128, 128), (64, 192, 192), (64, 256, 256)]:
        read = tuple(w + 2 * c for w, c in zip(write, spec.context, strict=True))
        proc = subprocess.run([sys.executable, "-c", FORWARD, json.dumps(read), str(args.threads), str(args.repeats)],
                              capture_output=True, text=True, cwd=ROOT, check=True)
        best, wall, peak = json.loads(proc.stdout.strip().splitlines()[-1])
        boxes_.append(math.prod(read))
        per_voxel.append(best / math.prod(read))
        print(f"forward write {write} read {read}: {best:.2f} CPU s ({wall:.2f} s wall), "
              f"{best / math.prod(read) * 1e6:.3f} us/voxel; "
              f"peak +{peak / 2**20:.0f} MiB = {peak / math.prod(read):.0f} B/read voxel "
              f"(block_bytes: {block_bytes(spec, write) / math.prod(read):.0f})", flush=True)
    growth, network = fit(boxes_, per_voxel)
    print(f"network: {network * 1e6:.3f} us per read voxel + growth {growth * 1e12:.3f} us per read voxel "
          "and Mvox of its read box", flush=True)

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        shape = tuple(args.shape)
        image, _ = synthetic_volume(shape, seed=3)
        write_zarr(tmp / "in.zarr", image.astype(np.float32), chunks=args.chunks, name="raw")
        write_zarr(tmp / "in.zarr", (image / image.max()).astype(np.float32), chunks=args.chunks, name="unit")
        base = {"input": {"path": str(tmp / "in.zarr"), "dataset": "raw"},
                "output": {"path": str(tmp / "out.zarr"), "overwrite": True},
                "cluster": {"kind": "serial", "torch_threads": args.threads}}

        # decompress: seconds per input voxel, chunk by chunk through the input's reader
        vol = open_input(as_config(base).input)
        grid = [-(-s // c) for s, c in zip(shape, args.chunks, strict=True)]
        boxes = [Box(tuple(i * c for i, c in zip(idx, args.chunks, strict=True)),
                     tuple(min(c, s - i * c) for i, c, s in zip(idx, args.chunks, shape, strict=True)))
                 for idx in np.ndindex(*grid)]
        best = math.inf
        for _ in range(args.repeats + 1):
            c0 = time.process_time()
            for b in boxes:
                vol.read(b)
            best = min(best, time.process_time() - c0)
        decompress = best / math.prod(shape)
        print(f"decompress: {decompress * 1e9:.1f} ns per input voxel ({len(boxes)} chunks {args.chunks}, "
              f"{best:.2f} CPU s)", flush=True)

        # block: a pass-through model (next to no network) at several write shapes: CPU seconds
        # against blocks, after the decompress term
        ckpt = save_checkpoint(passthrough_model(3), tmp / "pass.pt", extra={"delta_v": 0.5, "delta_d": 1.5})
        pspec = open_checkpoint(str(ckpt)).spec
        ns, rest = [], []
        for write in [(8, 32, 32), (16, 64, 64), (48, 96, 96), (48, 192, 192)]:
            t = cost.terms(shape, write, pspec.context, args.chunks)
            best, wall = serial_run({**base, "input": {**base["input"], "dataset": "unit"},
                                     "model": {"checkpoint": str(ckpt)}, "blocks": {"write_shape": list(write)}},
                                    args.repeats)
            ns.append(t.blocks)
            rest.append(best - decompress * t.voxels_decompressed)
            print(f"pass-through run write {write}: {t.blocks} blocks: {best:.2f} CPU s ({wall:.2f} s wall)", flush=True)
        block, fixed = fit(ns, rest)
        print(f"block: {block * 1e3:.1f} ms per block (+{fixed:.2f} s per run)", flush=True)

        # check: the bundled model's serial runs against the fitted coefficients (not used to fit)
        fitted = cost.Coefficients(network, growth, decompress, block)
        for write in writes:
            t = cost.terms(shape, write, spec.context, args.chunks)
            best, wall = serial_run({**base, "blocks": {"write_shape": list(write)}}, args.repeats)
            print(f"run write {write}: {t.blocks} blocks, redundancy {t.redundancy:.2f}, over-read {t.over_read:.2f}: "
                  f"{best:.2f} CPU s ({wall:.2f} s wall); predicted {t.cost(fitted):.2f} s with the fitted "
                  f"coefficients, {t.cost(cost.CPU):.2f} s with pipeline.plan.cost.CPU", flush=True)
    print(json.dumps({"network": network, "growth": growth, "decompress": decompress, "block": block,
                      "fixed": fixed, "in_use": cost.CPU.__dict__}))


CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from pipeline.run import predict, segment
cfg = json.loads(sys.argv[1])
fn = predict if sys.argv[2] == "predict" else segment
t0 = time.perf_counter()
out = fn(cfg)
seconds = time.perf_counter() - t0
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
# VmHWM, not ru_maxrss: Linux keeps ru_maxrss across execve, so it would report the parent's peak
hwm = [int(x.split()[1]) for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM")][0]
result = {"seconds": seconds, "peak_mib": hwm / 1024, "children_peak_mib": kids.ru_maxrss / 1024,
          "cpu": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime}
if sys.argv[2] == "run":
    import numpy as np
    from pipeline.volume.io import open_array
    from pipeline.qc.metrics import contingency, scores
    s = scores(contingency(open_array(Path(out) / "segmentation", mode="r"), open_array(sys.argv[3], mode="r")))
    result.update(objects=s.n_pred, ap50=s.at(0.5)["ap"])
print("RESULT " + json.dumps(result))
"""


def compare(args: argparse.Namespace) -> None:
    from pipeline.plan.prepare import prepare
    from pipeline.plan.summary import cost_table, plan_summary
    from pipeline.volume.io import write_zarr

    shape = tuple(args.shape)
    print(f"# {machine()}")
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        image, labels = synthetic_volume(shape, seed=5)
        write_zarr(tmp / "in.zarr", image, chunks=args.chunks, name="raw")
        write_zarr(tmp / "in.zarr", labels, chunks=args.chunks, name="labels")
        cluster = {"kind": "serial"} if args.cluster == "serial" else {"kind": "local", "n_workers": 2,
                                                                       "threads_per_worker": 1}
        base = {"input": {"path": str(tmp / "in.zarr"), "dataset": "raw"}, "cluster": cluster}
        run = prepare({**base, "output": {"path": str(tmp / "x.zarr")}})
        new = run.plan.write_shape
        summary = plan_summary(run)
        print(f"volume {list(shape)} ({math.prod(shape) / 1e6:.1f} Mvox), input chunks {list(args.chunks)}, "
              f"{args.cluster}; chosen {list(new)} ({summary['blocks_sized_for']})")
        for line in cost_table(run, rows=6):
            print("  " + line)
        shapes = {"old": OLD, "new": new}
        results: dict[tuple[str, str], list[dict]] = {}
        for _ in range(args.repeats):
            for what in args.what:
                for name, write in shapes.items():
                    cfg = {**base, "output": {"path": str(tmp / f"{name}-{what}.zarr"), "overwrite": True},
                           "blocks": {"write_shape": list(write)}}
                    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg), what, str(tmp / "in.zarr" / "labels")],
                                          capture_output=True, text=True, cwd=ROOT)
                    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                    if proc.returncode or not line:
                        raise SystemExit(f"{name} {what} failed:\n{proc.stderr[-3000:]}")
                    r = json.loads(line[0][7:])
                    results.setdefault((what, name), []).append(r)
                    print(f"  {what} {name} {list(write)}: {r['seconds']:.1f} s ({r['cpu']:.1f} CPU s), "
                          f"peak {r['peak_mib']:.0f} MiB"
                          + (f", workers peak {r['children_peak_mib']:.0f} MiB" if args.cluster == "local" else "")
                          + (f", {r['objects']} objects, AP@0.5 {r['ap50']:.3f}" if what == "run" else ""), flush=True)
        print("| stage | write shape | blocks | redundancy | wall (median; runs) | CPU s (median) | peak RSS | "
              "new/old wall | new/old CPU |")
        print("|---|---|---|---|---|---|---|---|---|")
        for what in args.what:
            old_s = statistics.median(r["seconds"] for r in results[(what, "old")])
            old_c = statistics.median(r["cpu"] for r in results[(what, "old")])
            for name, write in shapes.items():
                rs = results[(what, name)]
                sec = statistics.median(r["seconds"] for r in rs)
                cpu = statistics.median(r["cpu"] for r in rs)
                peak = max(max(r["peak_mib"], r["children_peak_mib"]) for r in rs)
                from pipeline.plan.cost import terms

                t = terms(shape, write, run.spec.context, args.chunks)
                runs = ", ".join(f"{r['seconds']:.1f}" for r in rs)
                print(f"| {what} | {list(write)} | {t.blocks} | {t.redundancy:.2f} | {sec:.1f} s ({runs}) | {cpu:.1f} | "
                      f"{peak:.0f} MiB | {'' if name == 'old' else f'{sec / old_s:.2f}'} | "
                      f"{'' if name == 'old' else f'{cpu / old_c:.2f}'} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("calibrate")
    c.add_argument("--shape", type=int, nargs=3, default=[48, 192, 192])
    c.add_argument("--chunks", type=int, nargs=3, default=[16, 64, 64])
    c.add_argument("--writes", nargs="+", default=["16,64,64", "48,64,64", "48,96,96", "48,192,192"],
                   help="write shapes of the serial runs, e.g. 16,64,64")
    c.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time is the work, spin-free)")
    c.add_argument("--repeats", type=int, default=2)
    c.add_argument("--tmp", default=None)
    m = sub.add_parser("compare")
    m.add_argument("--shape", type=int, nargs=3, default=[64, 384, 384])
    m.add_argument("--chunks", type=int, nargs=3, default=[16, 64, 64])
    m.add_argument("--cluster", choices=["serial", "local"], default="serial")
    m.add_argument("--what", nargs="+", choices=["predict", "run"], default=["predict", "run"])
    m.add_argument("--repeats", type=int, default=1)
    m.add_argument("--tmp", default=None)
    args = ap.parse_args()
    calibrate(args) if args.cmd == "calibrate" else compare(args)


if __name__ == "__main__":
    main()
