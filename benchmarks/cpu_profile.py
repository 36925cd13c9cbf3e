"""Where the CPU side of a run goes, step by step (issue 29, item 1).

One serial ``pipeline.segment`` (demo model, its calibrated default clustering, synthetic nuclei,
GPU-sized blocks) under ``cProfile`` with the process's CPU time as its clock (torch's threads
count too): for each step, the CPU-seconds its functions took (cumulative, callees included) per
Mvox of the volume. Steps are named by the functions that do them; a step inside another (the
clustering's components inside its fragments) is shown indented and is part of its parent. The
network (``Predictor.forward``) is measured the same way, so "outside the network" is the rest.
cProfile adds its own overhead to every Python call (heavier for many small calls): the shares
matter more than the absolute numbers, which the serial total without the profiler gives.

    python benchmarks/cpu_profile.py [--shape 64 512 512] [--write 64 256 256] [--top 30]
"""

from __future__ import annotations

import argparse
import cProfile
import math
import pstats
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, synthetic_volume

# (label, depth, [(module path suffix, function name), ...]): cumulative CPU of the functions
STEPS = [
    ("network forward (torch)", 0, [("network/predict.py", "forward")]),
    ("read input (zarr, prefetch waits)", 0, [("stages/predict.py", "read_input")]),
    ("normalise", 0, [("network/predict.py", "normalise")]),
    ("clustering: fragments of a block", 0, [("clustering/base.py", "fragments"),
                                             ("clustering/agglomeration.py", "fragments")]),
    ("components under the embedding rule", 1, [("clustering/torch_kernels.py", "voxel_graph"),
                                                ("clustering/torch_kernels.py", "close"),
                                                ("clustering/torch_kernels.py", "roots"),
                                                ("clustering/torch_kernels.py", "number_roots"),
                                                ("clustering/kernels.py", "connectivity_fragments"),
                                                ("clustering/compiled_voxels.py", "_join"),
                                                ("clustering/compiled_voxels.py", "_number")]),
    ("region stats and graph", 1, [("clustering/torch_kernels.py", "region_stats"),
                                   ("clustering/torch_kernels.py", "region_adjacency"),
                                   ("clustering/kernels.py", "region_adjacency"),
                                   ("clustering/compiled_voxels.py", "_graph")]),
    ("merge order (heap over the region graph)", 1, [("clustering/agglomeration.py", "merge_regions")]),
    ("renumber", 1, [("clustering/agglomeration.py", "number_groups")]),
    ("growth", 1, [("clustering/torch_kernels.py", "grow"), ("clustering/kernels.py", "grow"),
                   ("clustering/compiled_voxels.py", "grow_labels")]),
    ("min size", 0, [("clustering/kernels.py", "remove_small")]),
    ("fragment ids", 0, [("stages/ids.py", "fragment_ids")]),
    ("faces (evidence + blob + file)", 0, [("clustering/base.py", "face_evidence"), ("runtime/faces.py", "face_blob"),
                                          ("runtime/store.py", "write_faces")]),
    ("fragments stage, whole", 0, [("stages/fragments.py", "summaries")]),
    ("merge stage", 0, [("stages/merge.py", "run")]),
    ("relabel stage", 0, [("stages/relabel.py", "process")]),
    ("object statistics (and the lookup, compiled)", 1, [("stages/ids.py", "object_stats"),
                                                        ("stages/relabel_kernel.py", "relabel_block")]),
    ("objects stage", 0, [("stages/objects.py", "run")]),
    ("label image stage", 0, [("stages/labels.py", "run")]),
    ("label mode of the coarser levels", 1, [("volume/ome.py", "downsample_labels")]),
]


def cumulative(stats: pstats.Stats, targets: list[tuple[str, str]]) -> float:
    total = 0.0
    for (path, _, name), (_, _, _, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
        if any(path.replace("\\", "/").endswith(suffix) and name == fn for suffix, fn in targets):
            total += ct
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=[64, 512, 512])
    ap.add_argument("--write", type=int, nargs=3, default=[64, 256, 256])
    ap.add_argument("--top", type=int, default=0, help="also list the N functions of most own CPU time")
    args = ap.parse_args()
    from pipeline.run import segment
    from pipeline.volume.io import write_zarr

    tmp = Path(tempfile.mkdtemp())
    image, _ = synthetic_volume(args.shape, seed=11)
    write_zarr(tmp / "in.zarr", image, chunks=(64, 128, 128), name="raw")
    mvox = math.prod(args.shape) / 1e6

    def run(name: str) -> None:
        segment({"input": {"path": str(tmp / "in.zarr"), "dataset": "raw"},
                 "output": {"path": str(tmp / f"{name}.zarr")}, "model": {"checkpoint": "demo", "device": "cpu"},
                 "blocks": {"write_shape": args.write}, "cluster": {"kind": "serial"}})

    run("warm")  # imports, the model's first load, allocator warm-up
    c0, t0 = time.process_time(), time.perf_counter()
    run("plain")
    plain_cpu, plain_wall = time.process_time() - c0, time.perf_counter() - t0
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    run("profiled")
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = stats.total_tt  # type: ignore[attr-defined]
    network = cumulative(stats, STEPS[0][2])
    print(f"machine: {machine()}")
    print(f"volume {args.shape} ({mvox:.1f} Mvox), blocks {args.write}, serial, demo model, default clustering")
    print(f"without the profiler: {plain_cpu:.1f} CPU-s ({plain_cpu / mvox:.3f} CPU-s/Mvox), wall {plain_wall:.1f} s")
    print(f"profiled: {total:.1f} CPU-s; network {network:.1f}; outside the network {total - network:.1f} "
          f"({(total - network) / mvox:.3f} CPU-s/Mvox, profiler overhead included)\n")
    print("| step | CPU-s | CPU-s per Mvox | share of outside the network |\n|---|---|---|---|")
    for label, depth, targets in STEPS:
        s = cumulative(stats, targets)
        share = "-" if label.startswith("network") else f"{100 * s / max(total - network, 1e-9):.0f}%"
        print(f"| {'&nbsp;&nbsp;' * depth}{label} | {s:.2f} | {s / mvox:.3f} | {share} |")
    if args.top:
        print()
        stats.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
