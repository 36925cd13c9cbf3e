"""The engine at a million blocks (issue 31 item 3): a plan of N blocks and a stage that does nothing per
block (but what every stage does: its tasks, its blocks' geometry, its done markers) on 2 workers, the
scheduler in a process of its own. Measured side by side for each N: time to the first finished task, wall time and the
per-block overhead, the scheduler's and the client's peak memory (RSS, sampled every 0.2 s), tasks and
marker files.

    python benchmarks/million_blocks.py --blocks 10000 1000000
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil

from pipeline.config import InputConfig
from pipeline.plan.blocks import Block, BlockPlan
from pipeline.plan.sizing import auto_blocks_per_task
from pipeline.runtime.engine import Engine
from pipeline.runtime.store import Store
from pipeline.stages.base import BlockStage, Task


class NoOp(BlockStage):
    """Marks its blocks done, nothing else."""

    name = "noop"

    def process(self, blocks: Sequence[Block], loaded: Any, *args: Any) -> Iterator[tuple[Block, None]]:
        for block in blocks:
            yield block, None


def _rss() -> int:
    return psutil.Process().memory_info().rss


class Peak:
    """Samples the scheduler's and this process's RSS in a thread."""

    def __init__(self, client: Any) -> None:
        self.client, self.scheduler, self.here, self.done = client, 0, 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(0.2):
            try:
                self.scheduler = max(self.scheduler, self.client.run_on_scheduler(_rss))
            except Exception:  # noqa: BLE001 - a sample missed while the scheduler is busy
                pass
            self.here = max(self.here, _rss())

    def stop(self) -> tuple[int, int]:
        self.done.set()
        self.thread.join()
        return self.scheduler, self.here


def plan_of(blocks: int) -> BlockPlan:
    """A 3D grid of about ``blocks`` blocks of 8**3 voxels."""
    side = round(blocks ** (1 / 3))
    grid = (max(1, blocks // (side * side)), side, side)
    return BlockPlan(tuple(8 * g for g in grid), (8, 8, 8), (0, 0, 0), (1, 1, 1))


def measure(client: Any, blocks: int, root: Path, workers: int) -> dict[str, Any]:
    plan = plan_of(blocks)
    store = Store(str(root / f"n{len(plan)}.zarr"), f"bench{len(plan)}")
    Path(store.path).mkdir(parents=True)
    task = Task(InputConfig(path=root / "none.zarr"), store, plan, None, "", "cpu", "float32", False, 1)  # type: ignore[arg-type]
    stage = NoOp(task)
    per = auto_blocks_per_task(len(plan), workers, 1)
    peak = Peak(client)
    t0 = time.perf_counter()
    first = None
    done = 0
    for _ in stage.run(Engine(client), per):
        done += 1
        if first is None:
            first = time.perf_counter() - t0
    wall = time.perf_counter() - t0
    scheduler, here = peak.stop()
    markers = sum(1 for _ in (Path(store.path) / "scratch").rglob("*.json")) if (Path(store.path) / "scratch").exists() else 0
    return {"blocks": len(plan), "done": done, "blocks_per_task": per, "tasks": math.ceil(len(plan) / per),
            "first_s": first, "wall_s": wall, "per_block_us": wall / len(plan) * 1e6, "scheduler_mib": scheduler / 2**20,
            "client_mib": here / 2**20, "markers": markers}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blocks", type=int, nargs="+", default=[10_000, 1_000_000])
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    from distributed import Client
    from distributed.deploy.subprocess import SubprocessCluster

    root = Path(tempfile.mkdtemp(prefix="million-"))
    print(f"load average {os.getloadavg()[0]:.1f}; {args.workers} workers x 1 thread, the scheduler in a process "
          "of its own (SubprocessCluster; a LocalCluster's runs in the client's)")
    with SubprocessCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        measure(client, 1000, root, args.workers)  # warm-up: the workers' imports
        print("| blocks | blocks per task | tasks | first task | wall | per block | scheduler peak RSS | "
              "client peak RSS | marker files |")
        print("|---|---|---|---|---|---|---|---|---|")
        for n in args.blocks:
            r = measure(client, n, root, args.workers)
            assert r["done"] == r["blocks"], r
            print(f"| {r['blocks']:,} | {r['blocks_per_task']:,} | {r['tasks']:,} | {r['first_s']:.2f} s | "
                  f"{r['wall_s']:.1f} s | {r['per_block_us']:.0f} us | {r['scheduler_mib']:.0f} MiB | "
                  f"{r['client_mib']:.0f} MiB | {r['markers']:,} |", flush=True)


if __name__ == "__main__":
    main()
