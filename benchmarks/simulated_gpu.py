"""Simulated accelerator: is a fast device kept busy by one Dask worker's threads?

A GPU worker predicts in one thread while its other threads cluster, all in one process, so
the GIL, the threads per worker and the task window decide whether the device waits. This
benchmark measures that without a GPU: the network's forward pass is replaced by a device model
and everything else is the real ``pipeline.segment`` (zarr reading with prefetch, normalising,
batching, clustering, faces, merge, relabel, writing) on a one-worker ``LocalCluster`` holding
the ``model`` resource, like one ``local-cuda`` worker per GPU.

The device model (:class:`SimulatedPredictor`, put in place of ``get_predictor`` on the worker
by a worker plugin): a forward pass of a batch sleeps ``voxels / speed`` seconds (``time.sleep``
releases the GIL, like a kernel launch plus synchronize) and records the interval under a lock;
its output is the demo model's real output for that block, computed once for the volume before
the runs and replayed (a block is recognised by a sample of its input values), so clustering
does its real work on real embeddings. The host side of the forward pass stays: the input is
normalised as on the GPU path, and the output is copied out of the cache as from a pinned buffer.

For every device speed and threads per worker: the device's busy fraction (busy time over its
active span, first forward start to last forward end), the fragments stage's and the whole run's
Mvox/s, and the worker process's CPU seconds (the cores it used). The CPU side's cost, Mvox per
CPU second of the worker, does not depend on the device or on other jobs' load (wall-clock rates
do); the cores per GPU a device speed needs follow from it: speed / cost (x 0.9 for 90% busy).
First, the GPU task alone (``predict_blocks`` in this process, no clustering): how fast one
predicting thread feeds the device.

    python benchmarks/simulated_gpu.py [--shape 64 256 256] [--write 16 64 64]
        [--speeds 0.5 10 50 200 1000] [--threads 1 2 4 8] [--quick] [--feed-only]
        [--blocks-per-task N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, synthetic_volume

SAMPLES = 97  # input values that identify a block (its read box differs from every other block's)


def block_key(data: np.ndarray) -> bytes:
    """A block's identity: a fixed sample of its raw input values."""
    flat = data.reshape(-1)
    return flat[np.linspace(0, flat.size - 1, SAMPLES).astype(np.int64)].tobytes()


class SimulatedPredictor:
    """A :class:`pipeline.network.predict.Predictor` stand-in: real host work, a device that sleeps.

    ``batch`` normalises the raw stack (host work of the real path), runs the device for
    ``blocks * write voxels / speed`` seconds without the GIL, and returns the cached outputs
    ``(B, E + 1, *write)`` of the blocks. ``intervals`` holds the device's busy ``(start, end)``
    (``time.monotonic``, shared by the processes of the machine)."""

    def __init__(self, cache: str, speed: float) -> None:
        import torch

        from pipeline.network.checkpoint import load_checkpoint

        z = np.load(cache)
        self.outputs = z["outputs"]
        self.index = {bytes(k): i for i, k in enumerate(z["keys"])}
        self.write_voxels = math.prod(self.outputs.shape[2:])
        self.speed = speed  # output voxels per second
        self.model, _ = load_checkpoint("demo")  # its spec only; the network never runs
        self.device = torch.device("cpu")
        self.np_dtype = np.float32
        self.intervals: list[tuple[float, float]] = []
        self._lock = threading.Lock()

    @property
    def spec(self):
        return self.model.spec

    def batch(self, data: np.ndarray, stats) -> np.ndarray:
        from pipeline.network.predict import normalise

        normalise(data, stats, self.np_dtype)  # what the host does before a transfer
        rows = [self.index[block_key(d)] for d in data]
        t0 = time.monotonic()
        time.sleep(len(data) * self.write_voxels / self.speed)  # the device; the GIL is free
        t1 = time.monotonic()
        with self._lock:
            self.intervals.append((t0, t1))
        return self.outputs[rows]  # fancy indexing copies, as the copy out of a pinned buffer

    def stream(self, blocks, stats, batch_size: int = 1):
        from pipeline.network.streaming import stream_cpu

        return stream_cpu(self, blocks, stats, batch_size)  # type: ignore[arg-type]

    def take(self) -> list[tuple[float, float]]:
        with self._lock:
            out, self.intervals = self.intervals, []
        return out


class Simulate(WorkerPlugin):
    """Worker plugin: this worker's ``get_predictor`` returns a :class:`SimulatedPredictor`."""

    name = "simulated-gpu"

    def __init__(self, cache: str, speed: float) -> None:
        self.cache, self.speed = cache, speed

    def setup(self, worker) -> None:
        import pipeline.stages.predict as stage

        sim = SimulatedPredictor(self.cache, self.speed)
        worker.simulated_gpu = sim
        stage.get_predictor = lambda *args, **kwargs: sim


def _cpu() -> float:
    return time.process_time()


def _usage() -> tuple[float, float, int]:
    """The process's user and system CPU seconds and minor page faults so far."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime, r.ru_minflt


def _take(dask_worker) -> list[tuple[float, float]]:
    return dask_worker.simulated_gpu.take()


def busy(intervals: list[tuple[float, float]]) -> tuple[float, float]:
    """Busy seconds and the active span (first start to last end) of the device."""
    if not intervals:
        return 0.0, 0.0
    return sum(b - a for a, b in intervals), max(b for _, b in intervals) - min(a for a, _ in intervals)


def prepare_cache(tmp: Path, cfg: dict, image: np.ndarray) -> tuple[Path, int, int]:
    """The demo model's output of every block's write box (zero outside the volume), keyed by
    :func:`block_key` of the block's raw input as the stage reads it. Returns the cache's path,
    the voxels of the volume and the blocks."""
    from pipeline.network.checkpoint import load_checkpoint
    from pipeline.network.predict import Predictor, predict_whole
    from pipeline.run import prepare
    from pipeline.stages.predict import read_input

    run = prepare(cfg)
    model, _ = load_checkpoint("demo")
    whole = predict_whole(Predictor(model, device="cpu"), image[None], run.stats).astype(np.float32)
    outputs = np.zeros((len(run.plan), whole.shape[0], *run.plan.write_shape), np.float32)
    keys = []
    for i, block in enumerate(run.plan):
        data, _ = read_input(run.config.input, block.read)
        keys.append(np.frombuffer(block_key(data), np.uint8))
        outputs[(i, slice(None), *block.valid.to_slices(relative_to=block.write))] = whole[
            (slice(None), *block.valid.to_slices())]
    keys_arr = np.stack(keys)
    if len({k.tobytes() for k in keys_arr}) != len(keys_arr):
        raise RuntimeError("two blocks share an input sample; use another seed or shape")
    path = tmp / "cache.npz"
    np.savez(path, keys=keys_arr, outputs=outputs)
    return path, math.prod(run.plan.volume), len(run.plan)


PER_TASK: int | None = None  # blocks.blocks_per_task (None: automatic), set by --blocks-per-task
OVERRIDES: list[str] = []  # config overrides (--set KEY=VALUE), as the CLI's --set


def config(tmp: Path, name: str, write: list[int], threads: int) -> dict:
    from pipeline.config import apply_overrides

    return apply_overrides({
        "input": {"path": str(tmp / "in.zarr"), "dataset": "raw"},
        "output": {"path": str(tmp / f"{name}.zarr"), "overwrite": True},
        "model": {"checkpoint": "demo", "device": "cpu"},
        "blocks": {"write_shape": list(write), "blocks_per_task": PER_TASK},
        "cluster": {"kind": "local", "n_workers": 1, "threads_per_worker": threads, "torch_threads": 1}}, OVERRIDES)


def measure(client, tmp: Path, cache: Path, write: list[int], threads: int, speed: float, voxels: int) -> dict:
    from pipeline.run import segment
    from pipeline.volume.io import open_array, open_group

    client.register_plugin(Simulate(str(cache), speed * 1e6))
    cpu0 = sum(client.run(_cpu).values())
    use0 = np.sum(list(client.run(_usage).values()), axis=0)
    t0 = time.perf_counter()
    out = segment(config(tmp, f"t{threads}_s{speed:g}", write, threads), client=client)
    wall = time.perf_counter() - t0
    cpu_s = sum(client.run(_cpu).values()) - cpu0  # the worker process's CPU seconds, all its threads
    user_s, sys_s, faults = np.sum(list(client.run(_usage).values()), axis=0) - use0
    intervals = [iv for ivs in client.run(_take).values() for iv in ivs]
    busy_s, span = busy(intervals)
    attrs = open_group(out, mode="r").attrs["pipeline"]
    cluster_s = float(np.nansum(np.load(out / "qc" / "blocks.npz")["cluster_s"]))
    labels = open_array(out / "segmentation")[...]
    return {"speed": speed, "threads": threads, "busy": busy_s / span if span else 0.0, "device_busy_s": busy_s,
            "device_span_s": span, "wall_s": wall, "fragments_s": attrs["timing_s"]["fragments"],
            "mvox_s": voxels / wall / 1e6, "fragments_mvox_s": voxels / attrs["timing_s"]["fragments"] / 1e6,
            "objects": int(attrs["objects"]),
            "cluster_mvox_s": voxels / cluster_s / 1e6, "worker_cpu_s": cpu_s, "cores_used": cpu_s / wall,
            "mvox_per_cpu_s": voxels / cpu_s / 1e6, "user_s": float(user_s), "system_s": float(sys_s),
            "page_faults": int(faults), "labels": labels}


def feed(tmp: Path, cache: Path, write: list[int], speed: float, voxels: int) -> dict:
    """The GPU task alone, in this process: :func:`pipeline.stages.predict.predict_blocks` over
    every block (tasks of ``blocks_per_task`` blocks: reading with prefetch, normalising, the
    device), no clustering: how fast one predicting thread can feed the device."""
    import pipeline.stages.predict as stage
    from pipeline.run import prepare
    from pipeline.runtime.tasks import batched
    from pipeline.stages.base import Task

    sim = SimulatedPredictor(str(cache), speed * 1e6)
    real, stage.get_predictor = stage.get_predictor, lambda *args, **kwargs: sim
    try:
        run = prepare(config(tmp, "feed", write, 1))
        task = Task.of(run, None)  # type: ignore[arg-type] - predict_blocks writes nothing
        t0, cpu0 = time.perf_counter(), time.process_time()
        for linears in batched(list(range(len(run.plan))), run.blocks_per_task):
            stage.predict_blocks(task, [run.plan.block_at(i) for i in linears], skip_empty=True)
        wall, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        stage.get_predictor = real
    busy_s, _ = busy(sim.take())
    return {"speed": speed, "busy": busy_s / wall, "mvox_s": voxels / wall / 1e6, "blocks_per_task": run.blocks_per_task,
            "mvox_per_cpu_s": voxels / cpu_s / 1e6, "load": os.getloadavg()[0]}


def serial(tmp: Path, cache: Path, write: list[int], speed: float, voxels: int) -> dict:
    """The same run in this process, no Dask (``cluster.kind: serial``), the same device model:
    what the CPU side costs without a worker's threads, event loop and transfers."""
    import pipeline.stages.predict as stage
    from pipeline.run import segment

    sim = SimulatedPredictor(str(cache), speed * 1e6)
    real, stage.get_predictor = stage.get_predictor, lambda *args, **kwargs: sim
    try:
        cfg = {**config(tmp, "serial", write, 1), "cluster": {"kind": "serial", "torch_threads": 1}}
        segment(cfg)  # warm-up
        t0, cpu0, use0 = time.perf_counter(), time.process_time(), _usage()
        segment(cfg)
        wall, cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
        user_s, sys_s, faults = (b - a for a, b in zip(use0, _usage(), strict=True))
    finally:
        stage.get_predictor = real
    return {"wall_s": wall, "cpu_s": cpu_s, "mvox_per_cpu_s": voxels / cpu_s / 1e6, "user_s": user_s,
            "system_s": sys_s, "page_faults": faults}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[64, 256, 256])
    ap.add_argument("--write", type=int, nargs=3, default=[16, 64, 64])
    ap.add_argument("--speeds", type=float, nargs="+", default=[0.5, 10, 50, 200, 1000],
                    help="device Mvox/s (0.5: one the CPU side of 2 cores can keep up with)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4, 8], help="threads of the GPU worker")
    ap.add_argument("--quick", action="store_true", help="a small volume, two speeds, 1 and 2 threads")
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--feed-only", action="store_true", help="only the GPU task alone")
    ap.add_argument("--blocks-per-task", type=int, help="default: automatic")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override as the CLI's --set, e.g. objects.intensity=false (repeatable)")
    args = ap.parse_args()
    global PER_TASK
    PER_TASK = args.blocks_per_task
    OVERRIDES[:] = args.set
    if args.quick:
        args.shape, args.speeds, args.threads = [32, 128, 128], [1, 1000], [1, 2]
    import cloudpickle
    from distributed import Client, LocalCluster

    from pipeline.volume.io import write_zarr

    if __name__ != "__main__":  # imported (e.g. by a test): the plugin travels by value
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    print(f"machine: {machine()}; CPUs available: {len(os.sched_getaffinity(0))}")
    tmp = Path(tempfile.mkdtemp(prefix="simgpu-"))
    image, _ = synthetic_volume(args.shape, seed=11)
    write_zarr(tmp / "in.zarr", image, chunks=args.write, name="raw")
    t0 = time.perf_counter()
    cache, voxels, blocks = prepare_cache(tmp, config(tmp, "prep", args.write, 1), image)
    print(f"volume {tuple(args.shape)} ({voxels / 1e6:.2f} Mvox), {blocks} blocks of {tuple(args.write)}; "
          f"demo model output cached in {time.perf_counter() - t0:.1f} s")
    print("\nthe GPU task alone (read with prefetch, normalise, device; no clustering), one thread:")
    feeding = []
    for speed in args.speeds:
        row = feed(tmp, cache, args.write, speed, voxels)
        feeding.append(row)
        print(f"  speed {speed:g} Mvox/s: busy {row['busy']:.1%}, {row['mvox_s']:.2f} Mvox/s "
              f"({row['blocks_per_task']} blocks per task); {row['mvox_per_cpu_s']:.2f} Mvox per CPU second; "
              f"load average {row['load']:.1f}", flush=True)
    if args.feed_only:
        return
    rows = []
    reference = None
    for threads in args.threads:
        with LocalCluster(n_workers=1, threads_per_worker=threads, processes=True, resources={"model": 1},
                          memory_limit="6GiB", dashboard_address=":0", host="127.0.0.1") as cluster, \
                Client(cluster) as client:
            measure(client, tmp, cache, args.write, threads, max(args.speeds), voxels)  # warm-up: imports, caches
            for speed in args.speeds:
                row = measure(client, tmp, cache, args.write, threads, speed, voxels)
                labels = row.pop("labels")
                if reference is None:
                    reference = labels
                row["same_labels"] = bool(np.array_equal(labels, reference))
                rows.append(row)
                print(f"  threads {threads} speed {speed:g} Mvox/s: busy {row['busy']:.1%}, "
                      f"fragments {row['fragments_mvox_s']:.2f} Mvox/s, end to end {row['mvox_s']:.2f} Mvox/s "
                      f"({row['wall_s']:.1f} s), clustering alone {row['cluster_mvox_s']:.2f} Mvox/s per thread, "
                      f"worker {row['mvox_per_cpu_s']:.2f} Mvox per CPU second, {row['cores_used']:.2f} cores used, "
                      f"{row['objects']} objects (user {row['user_s']:.2f} + system {row['system_s']:.2f} CPU-s, "
                      f"{row['page_faults']} page faults), load average {os.getloadavg()[0]:.1f}", flush=True)
    alone = serial(tmp, cache, args.write, max(args.speeds), voxels)
    report(rows, args)
    worker = float(np.median([r["mvox_per_cpu_s"] for r in rows]))
    print(f"the same run serial, in one process without Dask: {alone['mvox_per_cpu_s']:.2f} Mvox per CPU second "
          f"({alone['cpu_s']:.2f} CPU-s: user {alone['user_s']:.2f} + system {alone['system_s']:.2f}, "
          f"{alone['page_faults']} page faults; {alone['wall_s']:.1f} s); the Dask worker pays "
          f"{alone['mvox_per_cpu_s'] / worker:.2f}x its CPU time")
    if args.json:
        args.json.write_text(json.dumps({"feeding": feeding, "runs": rows, "serial": alone}, indent=1))


def report(rows: list[dict], args: argparse.Namespace) -> None:
    """The table (device speed x threads), the CPU side's rate per thread and the rule."""
    print("\ndevice busy fraction | fragments Mvox/s | end-to-end Mvox/s")
    print("| device Mvox/s | " + " | ".join(f"{t} thread{'s' * (t > 1)}" for t in args.threads) + " |")
    print("|---|" + "---|" * len(args.threads))
    by = {(r["speed"], r["threads"]): r for r in rows}
    for s in args.speeds:
        cells = [f"{by[s, t]['busy']:.0%} / {by[s, t]['fragments_mvox_s']:.2f} / {by[s, t]['mvox_s']:.2f}"
                 for t in args.threads]
        print(f"| {s:g} | " + " | ".join(cells) + " |")
    fastest = max(args.speeds)
    print(f"\nCPU side with a negligible device ({fastest:g} Mvox/s), per worker thread count: "
          + ", ".join(f"{t}: {by[fastest, t]['fragments_mvox_s']:.2f} Mvox/s on {by[fastest, t]['cores_used']:.2f} "
                      f"cores" for t in args.threads))
    rate = float(np.median([r["mvox_per_cpu_s"] for r in rows]))  # CPU seconds do not depend on the device's speed
    print(f"the CPU side's cost: {rate:.2f} Mvox per CPU second, median of all runs (reading, normalising, clustering, faces, merge, "
          "relabel, writing: the worker process's CPU time over the whole run)")
    for s in sorted({*args.speeds, 50.0}):
        print(f"  {s:g} Mvox/s device: {math.ceil(0.9 * s / rate)} cores per GPU for 90% busy, {math.ceil(s / rate)} "
              "to keep up (threads of the GPU worker: as many, one of them predicting)")
    print("labels identical in every run:", all(r["same_labels"] for r in rows))


if __name__ == "__main__":
    main()
