"""Growth table: how wall time, time per voxel and peak memory grow with objects and blocks.

Every measured run is a fresh subprocess (its client peak RSS is its own) with a fresh
2-worker LocalCluster (1 thread each, resource ``model``; the scheduler lives in the client
process). Inputs are generated chunk by chunk (never held in memory) on disk:

* objects: a lattice of 2x2x2 cubes every 4 voxels (one object per 64 voxels), pass-through
  model, connectivity clustering, blocks (32,128,128): 10^5, 10^6, (10^7) objects.
* blocks: the same lattice in a fixed volume with ever smaller blocks: 10^3, 10^4, (10^5) blocks;
  per-block non-compute time = (2 workers x wall - model and clustering seconds) / blocks.
* empty: the demo model on synthetic nuclei, filled vs 90% empty (nuclei only in the first
  tenth along x: 8 of 80 blocks); the 90%-empty run also without skipping, to check the labels
  are the same.
* void: an input of which no chunk is stored (default (512, 4096, 4096) uint16, 8.6 Gvox),
  bundled model, default config: what nothing costs, per stage, and the files a run leaves.
* sparse: a (2048, 16384, 16384) uint16 input (1.1 TB, 2.1 M default blocks) of which only
  ``--filled`` chunks hold synthetic nuclei, bundled model, default config; each filled region's
  labels are checked against a run on a small volume holding the same chunk at the same
  alignment (same partition).
* labels: the lattice (pass-through model), its segmentation written once as the label image's
  level 0 (linked) against the layout before issue 22 (two copies): bytes and files left, the
  labels stage's wall.

Columns: wall, ns per voxel, client and worker peak RSS, scheduler share (CPU seconds of the
client process, scheduler included, over all processes' CPU seconds), and merge+relabel
against dask-image ``label`` + ``to_zarr`` of the same mask on the same chunks and cluster.

    python benchmarks/scale.py objects --sizes 1e5 1e6 [1e7]
    python benchmarks/scale.py blocks --sizes 1e3 1e4 [1e5]
    python benchmarks/scale.py empty [--width 2560] [--check]
    python benchmarks/scale.py void [--shape 512 4096 4096]
    python benchmarks/scale.py sparse [--shape 2048 16384 16384] [--filled 4]
    python benchmarks/scale.py labels [--shape 64 1024 1024]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, synthetic_volume

WRITE = (32, 128, 128)


SHAPES = {1e5: (32, 512, 512), 1e6: (64, 1024, 1024), 1e7: (160, 2048, 2048)}  # 131,072 / 1,048,576 / 10,485,760


def lattice_shape(objects: float) -> tuple[int, int, int]:
    """A volume (z = y/8 = x/8 rounded to blocks) holding about ``objects`` lattice cubes."""
    if objects in SHAPES:
        return SHAPES[objects]
    side = (objects * 64 * 64) ** (1 / 3)  # z * y * x = 64 * objects with y = x = 8 z
    z = max(WRITE[0], round(side / 8 / WRITE[0]) * WRITE[0])
    yx = max(WRITE[1], round(math.sqrt(objects * 64 / z) / WRITE[1]) * WRITE[1])
    return z, yx, yx


def make_lattice(path: Path, shape: tuple[int, ...], chunks: tuple[int, ...]) -> None:
    import zarr

    arr = zarr.create_array(str(path), shape=shape, chunks=chunks, dtype="uint8", fill_value=0)
    for off in itertools.product(*(range(0, s, c) for s, c in zip(shape, chunks, strict=True))):
        sl = tuple(slice(o, min(o + c, s)) for o, c, s in zip(off, chunks, shape, strict=True))
        z, y, x = (np.arange(s.start, s.stop) % 4 < 2 for s in sl)
        arr[sl] = (z[:, None, None] & y[None, :, None] & x[None, None, :]).astype(np.uint8)


def make_nuclei(path: Path, shape: tuple[int, ...], chunks: tuple[int, ...], keep_x: int | None) -> None:
    """Synthetic nuclei (the demo's generator) chunk by chunk; zero beyond ``keep_x`` in x."""
    import zarr

    arr = zarr.create_array(str(path), shape=shape, chunks=chunks, dtype="uint16", fill_value=0)
    for k, off in enumerate(itertools.product(*(range(0, s, c) for s, c in zip(shape, chunks, strict=True)))):
        if keep_x is not None and off[2] >= keep_x:
            continue
        sl = tuple(slice(o, min(o + c, s)) for o, c, s in zip(off, chunks, shape, strict=True))
        img, _ = synthetic_volume(tuple(s.stop - s.start for s in sl), seed=k)
        if keep_x is not None and off[2] + chunks[2] > keep_x:
            img[..., keep_x - off[2]:] = 0
        arr[sl] = img


TABLES = r"""
import json, resource, sys, time
import numpy as np
from pipeline.stages.ids import components, global_tables
n, per_block = int(float(sys.argv[1])), 1000
rng = np.random.default_rng(0)
blocks, stride = n // per_block, 2**24
counts = np.full(blocks, per_block, np.int64)
# a third of the fragments join one in the next block (objects cut by a face)
a = rng.choice(n, n // 3, replace=False)
b_block = np.minimum(a // per_block + 1, blocks - 1)
ids = lambda blk, loc: blk.astype(np.uint64) * np.uint64(stride) + loc.astype(np.uint64) + np.uint64(1)
edges = np.stack([ids(a // per_block, a % per_block), ids(b_block, rng.integers(0, per_block, len(a)))], 1)
sizes = rng.integers(1, 200, n)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
mapping = components([edges])
t1 = time.perf_counter()
peak_uf = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
del edges
final, starts, objects = global_tables(counts, stride, mapping, sizes, 50)
t2 = time.perf_counter()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"fragments": n, "merged": len(mapping), "objects": objects, "union_find_s": t1 - t0,
                  "tables_s": t2 - t1, "union_find_mib": (peak_uf - base) / 1024, "peak_mib": (peak - base) / 1024}))
"""


CHILD = r"""
import json, os, resource, sys, time
from pathlib import Path
import psutil
from distributed import Client, LocalCluster
from pipeline.volume.io import open_group
from pipeline.run import segment
cfg = json.loads(sys.argv[1])
if os.environ.get("SCALE_NO_LINK"):  # the layout before issue 22: segmentation and label level 0 both written
    import pipeline.plan.labels
    pipeline.plan.labels.can_link = lambda folder: False
from pipeline.runtime.store import Store
scratch_files = {}
finish = Store.finish
def counted_finish(self, attrs):  # the scratch files at their most, just before they are removed
    for folder in (Path(self.path) / "scratch").iterdir():
        scratch_files[folder.name] = sum(len(f) for _, _, f in os.walk(folder))
    return finish(self, attrs)
Store.finish = counted_finish
with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit="4GiB", dashboard_address=":0",
                  host="127.0.0.1", resources={"model": 1}) as cluster, Client(cluster) as client:
    me = psutil.Process()
    cpu0 = me.cpu_times()
    wcpu0 = sum(client.run(lambda: sum(__import__("psutil").Process().cpu_times()[:2])).values())
    t0 = time.perf_counter()
    out = segment(cfg, client=client)
    wall = time.perf_counter() - t0
    cpu1 = me.cpu_times()
    wcpu = sum(client.run(lambda: sum(__import__("psutil").Process().cpu_times()[:2])).values()) - wcpu0
    ccpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    workers = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    client_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    meta = open_group(out).attrs["pipeline"]
    import numpy as np
    rec = np.load(out / "qc" / "blocks.npz")
    compute = float(np.nansum(rec["predict_s"]) + np.nansum(rec["cluster_s"])) if "predict_s" in rec else 0.0
    result = {"wall": wall, "client_mib": client_mib, "worker_mib": max(workers.values()), "objects": meta["objects"],
              "timing": meta["timing_s"], "scheduler_share": ccpu / max(ccpu + wcpu, 1e-9),
              "empty": meta["empty_blocks"], "compute_s": compute,
              "scratch_files": scratch_files,
              "bytes": sum(os.path.getsize(os.path.join(d, n)) for d, _, f in os.walk(out) for n in f),
              "files": sum(len(f) for _, _, f in os.walk(out)) + sum(len(f) for _, _, f in os.walk(meta["label_image"] or out)
                                                                    if meta["label_image"] and not str(meta["label_image"]).startswith(str(out)))}
print(json.dumps(result))
"""


DASK_IMAGE = r"""
import json, sys, time
import dask.array as da
from dask_image.ndmeasure import label
from distributed import Client, LocalCluster
src, out = sys.argv[1], sys.argv[2]
with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit="4GiB", dashboard_address=":0",
                  host="127.0.0.1") as cluster, Client(cluster):
    t0 = time.perf_counter()
    lab, n = label(da.from_zarr(src) > 0)
    n = int(n.compute())
    da.to_zarr(lab.astype("uint32"), out, overwrite=True)
    print(json.dumps({"seconds": time.perf_counter() - t0, "objects": n}))
"""


def run(cfg: dict, dask_image: float = 0, link: bool = True) -> dict:
    """Our run; then, with ``dask_image`` seconds allowed, dask-image's on the same mask and chunks.
    ``link``: False writes the segmentation and the label image's level 0 as two arrays."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **({} if link else {"SCALE_NO_LINK": "1"})}
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if dask_image:
        target = str(Path(cfg["output"]["path"]).with_suffix(".dask.zarr"))
        try:
            d = subprocess.run([sys.executable, "-c", DASK_IMAGE, cfg["input"]["path"], target], capture_output=True,
                               text=True, env=env, timeout=dask_image, check=True)
            result["dask_image"] = json.loads(d.stdout.strip().splitlines()[-1])["seconds"]
        except subprocess.TimeoutExpired:
            result["dask_image"] = None  # did not finish in the time allowed
    return result


def lattice_cfg(tmp: Path, shape: tuple[int, ...], write: tuple[int, ...], ckpt: Path) -> dict:
    make_lattice(tmp / "in.zarr", shape, write)
    return {"input": {"path": str(tmp / "in.zarr")}, "output": {"path": str(tmp / "out.zarr")},
            "model": {"checkpoint": str(ckpt)}, "blocks": {"write_shape": list(write)},
            "clustering": {"method": "connectivity"}, "cluster": {"kind": "local", "n_workers": 2}}


def row(label: str, shape, r: dict, blocks: int) -> str:
    vox = math.prod(shape)
    t = r["timing"]
    ours = t.get("merge", 0) + t.get("relabel", 0)
    vs = "-"
    if "dask_image" in r:
        d = r["dask_image"]
        vs = f"{d / ours:.1f}x ({ours:.1f} vs {d:.1f} s)" if d is not None else f"> {r['dask_image_cap'] / ours:.0f}x ({ours:.1f} s vs > {r['dask_image_cap']:.0f} s)"
    return (f"| {label} | {list(shape)} {vox / 1e6:.0f} Mvox | {blocks} | {r['objects']:,} | {r['wall']:.1f} s | "
            f"{r['wall'] / vox * 1e9:.0f} | {r['client_mib']:.0f} | {r['worker_mib']:.0f} | "
            f"{100 * r['scheduler_share']:.0f}% | {vs} |")


HEADER = ("| series | volume | blocks | objects | wall | ns/voxel | client MiB | worker MiB | scheduler share | "
          "dask-image / (merge+relabel) |\n|---|---|---|---|---|---|---|---|---|---|")


def filled_chunks(shape: tuple[int, ...], chunks: tuple[int, ...], n: int) -> list[tuple[int, ...]]:
    """``n`` chunk positions spread through the volume, at least 2 chunks from its faces and
    from each other."""
    grid = [s // c for s, c in zip(shape, chunks, strict=True)]
    rng = np.random.default_rng(0)
    spots: list[tuple[int, ...]] = []
    while len(spots) < n:
        spot = tuple(int(rng.integers(2, g - 2)) for g in grid)
        if all(max(abs(a - b) for a, b in zip(spot, o, strict=True)) > 2 for o in spots):
            spots.append(spot)
    return spots


def check_regions(base: Path, spots: list[tuple[int, ...]], chunks: tuple[int, ...], data: np.ndarray) -> bool:
    """Each filled chunk's labels in the big result against a run on a small volume cut from the big
    one around the chunk, at an origin that is a multiple of both the big run's write shape and the
    chunks (the same block alignment), with the big run's write shape: the same partition. The small
    volume reaches a block and a halo beyond the chunk, so its border sees only fill, as the big one."""
    import math

    import zarr

    big_in = zarr.open_array(str(base / "in.zarr"), mode="r")
    big = zarr.open_array(str(base / "out.zarr" / "segmentation"), mode="r")
    write = zarr.open_group(str(base / "out.zarr"), mode="r").attrs["pipeline"]["plan"]["write_shape"]
    context = zarr.open_group(str(base / "out.zarr"), mode="r").attrs["pipeline"]["plan"]["context"]
    ok = True
    for k, spot in enumerate(spots):
        lo = [j * c for j, c in zip(spot, chunks, strict=True)]
        unit = [w * c // math.gcd(w, c) for w, c in zip(write, chunks, strict=True)]
        start = [max(0, (x - w - 2 * q) // u * u) for x, w, q, u in zip(lo, write, context, unit, strict=True)]
        stop = [min(n, x + c + w + 2 * q) for x, c, w, q, n in zip(lo, chunks, write, context, big_in.shape, strict=True)]
        box = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
        small = base / f"small-{k}.zarr"
        arr = zarr.create_array(str(small), shape=tuple(b - a for a, b in zip(start, stop, strict=True)), chunks=chunks,
                                dtype="uint16", fill_value=0)
        arr[...] = big_in[box]
        run({"input": {"path": str(small)}, "output": {"path": str(base / f"small-{k}-out.zarr")},
             "blocks": {"write_shape": list(write)}})
        ref = zarr.open_array(str(base / f"small-{k}-out.zarr" / "segmentation"), mode="r")
        inner = tuple(slice(x - a, x - a + c) for x, a, c in zip(lo, start, chunks, strict=True))
        got = big[tuple(slice(x, x + c) for x, c in zip(lo, chunks, strict=True))]
        want = ref[inner]
        pairs = np.unique(np.stack([want.ravel(), got.ravel()]), axis=1)
        ok &= len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1] and bool(((pairs[0] == 0) == (pairs[1] == 0)).all())
        ok &= int(want.max()) > 0
    return bool(ok)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("series", choices=["objects", "blocks", "empty", "tables", "void", "sparse", "labels"])
    p.add_argument("--shape", type=int, nargs=3, default=None, help="void, sparse: the input's shape")
    p.add_argument("--filled", type=int, default=4, help="sparse: chunks holding nuclei")
    p.add_argument("--sizes", type=float, nargs="*", default=None)
    p.add_argument("--dask-image-up-to", type=float, default=2e6, help="compare with dask-image up to this many objects")
    p.add_argument("--width", type=int, default=1280, help="empty: volume width in x (blocks are 128 wide)")
    p.add_argument("--check", action="store_true", help="empty: also run without skipping and compare the labels")
    p.add_argument("--dask-image-cap", type=float, default=600, help="seconds dask-image may take before it is stopped")
    args = p.parse_args()
    from pipeline.network.checkpoint import save_checkpoint
    from pipeline.network.model import passthrough_model

    print(f"machine: {machine()}")
    if args.series == "tables":  # the merge's union-find and global tables alone, in a fresh process each
        print("| fragments | merged fragments | objects | union-find | tables | peak RSS above start |\n|---|---|---|---|---|---|")
        for n in args.sizes or [1e6, 1e7]:
            out = subprocess.run([sys.executable, "-c", TABLES, str(n)], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout)
            print(f"| {r['fragments']:,} | {r['merged']:,} | {r['objects']:,} | {r['union_find_s']:.1f} s, "
                  f"{r['union_find_mib']:.0f} MiB | {r['tables_s']:.1f} s | {r['peak_mib']:.0f} MiB "
                  f"({r['peak_mib'] * 2**20 / r['fragments']:.0f} B per fragment) |", flush=True)
        return
    base = Path(tempfile.mkdtemp(prefix="scale-"))
    ckpt = save_checkpoint(passthrough_model(3), base / "pass.pt", extra={"delta_v": 0.5, "delta_d": 1.5})
    print(HEADER)
    if args.series == "objects":
        for n in args.sizes or [1e5, 1e6]:
            tmp = Path(tempfile.mkdtemp(dir=base))
            shape = lattice_shape(n)
            r = run(lattice_cfg(tmp, shape, WRITE, ckpt), dask_image=args.dask_image_cap if n <= args.dask_image_up_to else 0)
            r["dask_image_cap"] = args.dask_image_cap
            blocks = math.prod(-(-s // w) for s, w in zip(shape, WRITE, strict=True))
            print(row(f"objects 10^{round(math.log10(n))}", shape, r, blocks), flush=True)
    elif args.series == "blocks":
        shape = (64, 512, 512)
        for n in args.sizes or [1e3, 1e4]:
            side = round((math.prod(shape) / n / 16) ** (1 / 3))  # write (side, 4 side, 4 side)... rounded to steps
            write = (max(4, side // 4 * 4), max(4, 4 * side // 4 * 4), max(4, 4 * side // 4 * 4))
            tmp = Path(tempfile.mkdtemp(dir=base))
            r = run(lattice_cfg(tmp, shape, write, ckpt))
            blocks = math.prod(-(-s // w) for s, w in zip(shape, write, strict=True))
            t = r["timing"]
            overhead = (2 * r["wall"] - r["compute_s"]) / blocks  # 2 workers' time not spent in model or clustering
            print(row(f"blocks {list(write)}", shape, r, blocks) + f" {1000 * r['wall'] / blocks:.1f} ms wall/block, "
                  f"{1000 * overhead:.1f} ms non-compute worker time/block (stages {t}); scratch files before "
                  f"removal {sum(r['scratch_files'].values())} {r['scratch_files']}", flush=True)
    elif args.series == "labels":  # one copy of the labels vs two (the label image's level 0 a copy)
        shape = tuple(args.shape or (64, 1024, 1024))
        tmp = Path(tempfile.mkdtemp(dir=base))
        cfg = lattice_cfg(tmp, shape, WRITE, ckpt)
        blocks = math.prod(-(-s // w) for s, w in zip(shape, WRITE, strict=True))
        found = {}
        for name, link in (("two copies (before)", False), ("one copy, linked", True)):
            r = found[name] = run({**cfg, "output": {"path": str(tmp / f"out-{link}.zarr")}}, link=link)
            t = r["timing"]
            print(row(name, shape, r, blocks) + f" relabel {t['relabel']:.1f} s, labels {t['labels']:.1f} s, "
                  f"{r['bytes'] / 2**20:.1f} MiB in {r['files']} files", flush=True)
        a, b = found["two copies (before)"], found["one copy, linked"]
        print(f"one copy / two: bytes {b['bytes'] / a['bytes']:.2f}, files {b['files'] / a['files']:.2f}, "
              f"labels stage {b['timing']['labels'] / a['timing']['labels']:.2f}, wall {b['wall'] / a['wall']:.2f}")
    elif args.series in ("void", "sparse"):
        import zarr

        shape = tuple(args.shape or ((512, 4096, 4096) if args.series == "void" else (2048, 16384, 16384)))
        chunks = (64, 256, 256)
        arr = zarr.create_array(str(base / "in.zarr"), shape=shape, chunks=chunks, dtype="uint16", fill_value=0)
        spots = filled_chunks(shape, chunks, args.filled if args.series == "sparse" else 0)
        chunk_data, _ = synthetic_volume(chunks, seed=3)
        for spot in spots:
            arr[tuple(slice(j * c, (j + 1) * c) for j, c in zip(spot, chunks, strict=True))] = chunk_data
        cfg = {"input": {"path": str(base / "in.zarr")}, "output": {"path": str(base / "out.zarr")}}
        r = run(cfg)
        blocks = r["empty"]["of"]
        print(row(f"{args.series}, {len(spots)} filled chunks", shape, r, blocks)
              + f" skipped {r['empty']['skipped']}, files left {r['files']}, stages {r['timing']}", flush=True)
        if spots:
            print(f"filled regions equal to a small run of the same chunk: {check_regions(base, spots, chunks, chunk_data)}")
    else:
        shape, chunks = (64, 512, args.width), (32, 128, 128)  # nuclei in the first tenth along x
        results = {}
        runs = [("filled", None, True), ("90% empty", shape[2] // 10, True)]
        runs += [("90% empty, no skipping", shape[2] // 10, False)] if args.check else []
        for name, keep, skip in runs:
            tmp = Path(tempfile.mkdtemp(dir=base))
            if not (tmp.parent / f"in-{keep}.zarr").exists():
                make_nuclei(tmp.parent / f"in-{keep}.zarr", shape, chunks, keep)
            cfg = {"input": {"path": str(tmp.parent / f"in-{keep}.zarr")}, "output": {"path": str(tmp / "out.zarr")},
                   "blocks": {"write_shape": list(chunks)}, "empty": {"skip": skip},
                   "cluster": {"kind": "local", "n_workers": 2}}
            results[name] = (run(cfg), tmp / "out.zarr")
            print(row(name, shape, results[name][0], math.prod(-(-s // c) for s, c in zip(shape, chunks, strict=True)))
                  + f" skipped {results[name][0]['empty']['skipped']}", flush=True)
        import zarr

        print(f"filled / 90% empty wall: {results['filled'][0]['wall'] / results['90% empty'][0]['wall']:.1f}x")
        if args.check:
            a = zarr.open_array(str(results["90% empty"][1] / "segmentation"), mode="r")[...]
            b = zarr.open_array(str(results["90% empty, no skipping"][1] / "segmentation"), mode="r")[...]
            print(f"labels with and without skipping identical: {bool(np.array_equal(a, b))}")


if __name__ == "__main__":
    main()
