"""Faults (issue 21): the fault matrix, the cost of the input checks on a large volume, the
output sizes behind `pipeline plan`'s estimate.

    python benchmarks/faults.py matrix  [--shape 48 192 192]   # each fault, the demo model, a 2-worker LocalCluster
    python benchmarks/faults.py checks  [--shape 256 1024 1024]  # per block: read, digest, stamp vs compute
    python benchmarks/faults.py space                          # bytes per voxel of each output part
    python benchmarks/faults.py vouch   [--shape 64 512 512]   # what the done markers' file lists cost

``matrix`` runs every fault of the issue's table and a client SIGKILL in every stage through the
CLI (subprocesses, as a user would), on the issue's (48, 192, 192) volume: exit code, the error
line, whether stderr holds a traceback (a LocalCluster's workers log to it), and whether the final
segmentation equals an uninterrupted run's. ``checks`` measures, block by block on one core, what
recording a block's input costs (digest, file stamp) and what checking finished blocks on resume
costs (``output.resume_check: metadata``: stamps; ``content``: re-read and digest), against the
block's compute (read, predict, cluster) with the demo model: ratios from one run, side by side.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
from common import machine, synthetic_volume

from pipeline.runtime.markers import marked_blocks
from tests.helpers import KILL_CLIENT

# ---------------------------------------------------------------- the matrix



def traceback_of(stderr: str) -> str | None:
    """The first traceback in ``stderr``: the line before it, and its last line (None: none)."""
    lines = stderr.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Traceback"):
            end = next((j for j in range(i + 1, len(lines)) if lines[j] and not lines[j].startswith(" ")), i)
            return " | ".join(x.strip() for x in (lines[i - 1] if i else "", lines[end]))
    return None


class Matrix:
    def __init__(self, tmp: Path, shape: tuple[int, ...]) -> None:
        from pipeline.volume.io import write_zarr

        self.tmp = tmp
        image, _ = synthetic_volume(shape, seed=3)
        write_zarr(tmp / "in.zarr", image, chunks=(16, 64, 64), name="raw")
        write_zarr(tmp / "other.zarr", image[..., ::-1].copy(), chunks=(16, 64, 64), name="raw")  # same statistics
        (tmp / "kill.py").write_text(KILL_CLIENT)
        self.rows: list[dict] = []
        self.refs = {src: self.run(self.config(f"ref-{src}", src))[0] for src in ("in.zarr", "other.zarr")}

    def config(self, name: str, src: str = "in.zarr", out: Path | None = None, **over: dict) -> Path:
        cfg = {"input": {"path": str(self.tmp / src), "dataset": "raw"},
               "output": {"path": str(out or self.tmp / f"{name}-out.zarr"), "overwrite": False},
               "cluster": {"kind": "local", "n_workers": 2, "threads_per_worker": 1}}
        for key, value in over.items():
            cfg[key] = {**cfg.get(key, {}), **value}
        path = self.tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    def run(self, cfg: Path, *extra: str, script: list[str] | None = None, wait: bool = True):
        cmd = [sys.executable, *(script or ["-m", "pipeline"]), "-q", "run", str(cfg), *extra]
        if not wait:
            return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        return r, time.perf_counter() - t0

    def output(self, cfg: Path) -> Path:
        return Path(yaml.safe_load(cfg.read_text())["output"]["path"])

    def equal(self, cfg: Path, src: str = "in.zarr") -> bool:
        from pipeline.volume.io import open_array

        ref = self.output(self.config(f"ref-{src}", src))
        out = self.output(cfg)
        return bool(np.array_equal(open_array(out / "segmentation")[...], open_array(ref / "segmentation")[...]))

    def add(self, fault: str, steps: list[tuple[str, subprocess.CompletedProcess, float]], result: str) -> None:
        cells = []
        for what, r, seconds in steps:
            errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
            cells.append({"step": what, "exit": r.returncode, "seconds": round(seconds, 1),
                          "error": errors[-1][:400] if errors else "", "error_lines": len(errors),
                          "traceback": traceback_of(r.stderr)})
        self.rows.append({"fault": fault, "steps": cells, "result": result})
        print(json.dumps(self.rows[-1]), flush=True)

    def wait_markers(self, out: Path, n: int, proc: subprocess.Popen) -> None:
        folder = out / "scratch" / "done_fragments"
        while marked_blocks(folder) < n:
            if proc.poll() is not None:
                raise RuntimeError("the run ended first")
            time.sleep(0.05)

    def worker_killed(self) -> None:
        cfg = self.config("worker-killed")
        proc = self.run(cfg, wait=False)
        t0 = time.perf_counter()
        self.wait_markers(self.output(cfg), 4, proc)
        import psutil

        workers = [c for c in psutil.Process(proc.pid).children(recursive=True) if "spawn_main" in " ".join(c.cmdline())]
        victim = max(workers, key=lambda c: c.memory_info().rss)
        victim.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
        r = subprocess.CompletedProcess(proc.args, proc.returncode, "", err)
        self.add("a worker process killed (SIGKILL) mid-run", [("run", r, time.perf_counter() - t0)],
                 f"equal: {self.equal(cfg)}")

    def input_replaced(self) -> None:
        shutil.copytree(self.tmp / "in.zarr", self.tmp / "replaced.zarr")
        cfg = self.config("replaced", "replaced.zarr")
        proc = self.run(cfg, script=[str(self.tmp / "kill.py"), "fragments", "3"], wait=False)
        proc.wait()
        shutil.rmtree(self.tmp / "replaced.zarr")
        shutil.copytree(self.tmp / "other.zarr", self.tmp / "replaced.zarr")
        refused, t1 = self.run(cfg)
        again, t2 = self.run(cfg, "--recompute-changed")
        self.add("run killed, input replaced by a volume with the same statistics at the same path, rerun",
                 [("rerun", refused, t1), ("rerun --recompute-changed", again, t2)],
                 f"equal to the new input's uninterrupted run: {self.equal(cfg, 'other.zarr')}")

    def truncated_chunk(self) -> None:
        shutil.copytree(self.tmp / "in.zarr", self.tmp / "truncated.zarr")
        chunk = self.tmp / "truncated.zarr" / "raw" / "c" / "1" / "1" / "1"
        chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
        cfg = self.config("truncated", "truncated.zarr")
        refused, t1 = self.run(cfg)
        empty, t2 = self.run(cfg, "--set", "input.unreadable=empty")
        import zarr

        meta = dict(zarr.open_group(str(self.output(cfg)), mode="r").attrs).get("pipeline", {})
        self.add("one input chunk truncated", [("run", refused, t1), ("rerun, input.unreadable: empty", empty, t2)],
                 f"recorded: {meta.get('unreadable_input', {}).get('first')}")

    def full_disk(self) -> None:
        mnt = self.tmp / "disk"
        mnt.mkdir()
        size = 2  # MiB: clearly less than the run needs
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}m", "tmpfs", str(mnt)]).returncode:
            self.rows.append({"fault": "output on a full disk", "steps": [], "result": "skipped: cannot mount tmpfs"})
            return
        try:
            cfg = self.config("full", out=mnt / "out.zarr")
            refused, t1 = self.run(cfg)
            forced, t2 = self.run(cfg, "--set", "output.check_space=false")
            subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
            again, t3 = self.run(cfg, "--set", "output.check_space=false")
            self.add(f"output on a full disk ({size} MiB tmpfs, then grown to 64 MiB)",
                     [("run", refused, t1), ("run, output.check_space: false", forced, t2), ("rerun", again, t3)],
                     f"equal: {self.equal(cfg)}")
        finally:
            subprocess.run(["umount", "-l", str(mnt)])

    def twice(self) -> None:
        cfg = self.config("twice")
        first = self.run(cfg, wait=False)
        t0 = time.perf_counter()
        self.wait_markers(self.output(cfg), 2, first)
        second, t1 = self.run(cfg)
        _, err = first.communicate()
        r = subprocess.CompletedProcess(first.args, first.returncode, "", err)
        self.add("the same command started twice on one output",
                 [("second run", second, t1), ("first run", r, time.perf_counter() - t0)], f"equal: {self.equal(cfg)}")

    def nan(self) -> None:
        from pipeline.volume.io import open_array, write_zarr

        image = np.asarray(open_array(self.tmp / "in.zarr" / "raw")[...], np.float32)
        image[20, 100, 150] = np.nan
        write_zarr(self.tmp / "nan.zarr", image, chunks=(16, 64, 64), name="raw")
        refused, t1 = self.run(self.config("nan", "nan.zarr"))
        self.add("NaN input", [("run", refused, t1)], "")

    def client_killed(self, stage: str, after: int) -> None:
        cfg = self.config(f"killed-{stage}-{len(self.rows)}")
        killed, t1 = self.run(cfg, script=[str(self.tmp / "kill.py"), stage, str(after)])
        again, t2 = self.run(cfg)
        import zarr

        resumed = dict(zarr.open_group(str(self.output(cfg)), mode="r").attrs).get("resumed_blocks")
        self.add(f"client SIGKILL in {stage}", [("run (killed)", killed, t1), ("rerun", again, t2)],
                 f"equal: {self.equal(cfg)}, resumed blocks {resumed}")

    def sigterm(self) -> None:
        """SIGTERM to the CLI while its tasks run (what a batch scheduler sends at the time limit)."""
        cfg = self.config("sigterm")
        proc = self.run(cfg, wait=False)
        t0 = time.perf_counter()
        self.wait_markers(self.output(cfg), 1, proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate()
        stopped = subprocess.CompletedProcess(proc.args, proc.returncode, "", err)
        t1 = time.perf_counter() - t0
        again, t2 = self.run(cfg)
        self.add("SIGTERM to the client mid-run, rerun", [("run (SIGTERM)", stopped, t1), ("rerun", again, t2)],
                 f"last line: {err.strip().splitlines()[-1][:200]!r}; equal: {self.equal(cfg)}")

    def torn(self, stage: str, after: int, files: int = 3) -> None:
        """The client killed, then the newest files of the output cut in half (a node crash)."""
        cfg = self.config(f"torn-{stage}-{len(self.rows)}", blocks={"write_shape": [16, 64, 64]})  # 27 blocks
        killed, t1 = self.run(cfg, script=[str(self.tmp / "kill.py"), stage, str(after)])
        out = self.output(cfg)
        newest = sorted((p for p in out.rglob("*") if p.is_file() and p.name != "lock.json"),
                        key=lambda p: p.stat().st_mtime_ns)[-files:]
        for p in newest:
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        again, t2 = self.run(cfg)
        said = [line.split(": ", 2)[-1] for line in again.stderr.splitlines() if "missing or damaged" in line]
        ref = self.config("torn-ref", blocks={"write_shape": [16, 64, 64]})  # uninterrupted, the same blocks
        if not self.output(ref).exists():
            self.run(ref)
        from pipeline.volume.io import open_array

        equal = np.array_equal(open_array(out / "segmentation")[...], open_array(self.output(ref) / "segmentation")[...])
        self.add(f"client SIGKILL in {stage}, then its {files} newest files cut in half",
                 [("run (killed)", killed, t1), ("rerun", again, t2)],
                 f"torn: {[str(p.relative_to(out)) for p in newest]}; said: {said}; equal: {equal}")

    def lost_chunk(self) -> None:
        """A finished output loses a segmentation chunk: verify --integrity, then run --repair."""
        cfg = self.config("lost")
        done, t0 = self.run(cfg)
        out = self.output(cfg)
        chunks = sorted(p for p in (out / "labels" / "segmentation" / "0" / "c").rglob("*") if p.is_file())
        chunks[len(chunks) // 2].unlink()
        verify = subprocess.run([sys.executable, "-m", "pipeline", "-q", "verify", str(cfg), "--integrity"],
                                capture_output=True, text=True)
        repaired, t2 = self.run(cfg, "--repair")
        again = subprocess.run([sys.executable, "-m", "pipeline", "-q", "verify", str(cfg), "--integrity"],
                               capture_output=True, text=True)
        self.add("a segmentation chunk of a finished output deleted",
                 [("run", done, t0), ("run --repair", repaired, t2)],
                 f"verify --integrity: exit {verify.returncode} {verify.stdout.strip().splitlines()[1:2]}; after "
                 f"repair: exit {again.returncode}; equal: {self.equal(cfg)}")


def matrix(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        m = Matrix(Path(tmp), tuple(args.shape))
        faults = [m.worker_killed, m.input_replaced, m.truncated_chunk, m.full_disk, m.twice, m.nan,
                  *(lambda s=stage, a=after: m.client_killed(s, a)
                    for stage, after in (("fragments", 3), ("merge", 1), ("relabel", 3), ("objects", 1), ("labels", 1))),
                  m.sigterm, *(lambda s=stage, a=after: m.torn(s, a) for stage, after in (("fragments", 3), ("relabel", 3))),
                  m.lost_chunk]
        for fault in [faults[i] for i in args.only] if args.only else faults:
            for _ in range(args.repeat):
                fault()
        print(json.dumps({"machine": machine(), "shape": args.shape, "rows": m.rows}))


# ---------------------------------------------------------------- the cost of the checks


def checks(args: argparse.Namespace) -> None:
    """Per block of the demo model's plan on a large volume: the read, what recording its input
    costs, what checking it on resume costs; against predicting and clustering it."""
    import zarr

    from pipeline.config import InputConfig
    from pipeline.plan.prepare import prepare
    from pipeline.run import clustering_method
    from pipeline.runtime.store import Store
    from pipeline.stages.base import Task
    from pipeline.stages.predict import predict_blocks
    from pipeline.volume.errors import collect_unreadable
    from pipeline.volume.input_volume import digest, stamp
    from pipeline.volume.io import open_input

    tmp = Path(args.tmp) / "faults-checks"
    src = tmp / ("large-" + "x".join(map(str, args.shape)) + ".zarr")
    shape = tuple(args.shape)
    if not src.exists():
        tile, _ = synthetic_volume((64, 256, 256), seed=5)
        arr = zarr.create_array(str(src / "raw"), shape=shape, chunks=(64, 64, 64), dtype=tile.dtype)
        for z in range(0, shape[0], 64):
            for y in range(0, shape[1], 256):
                for x in range(0, shape[2], 256):
                    arr[z:z + 64, y:y + 256, x:x + 256] = np.roll(tile, (z + y + x) // 64, axis=2)
        zarr.open_group(str(src), mode="a")
    cfg = {"input": {"path": str(src), "dataset": "raw"}, "output": {"path": str(tmp / "out.zarr")},
           "cluster": {"kind": "serial", "torch_threads": 1}}
    run = prepare(cfg)
    vol = open_input(InputConfig(path=src, dataset="raw"))
    plan = run.plan
    blocks = list(plan)
    t: dict[str, float] = {"read": 0.0, "digest": 0.0, "stamp": 0.0}
    nbytes = 0
    for b in blocks:
        t0 = time.perf_counter()
        with collect_unreadable():
            data = vol.read(b.read)
        t1 = time.perf_counter()
        digest(data)
        t2 = time.perf_counter()
        stamp(vol.files(b.read))
        t3 = time.perf_counter()
        t["read"] += t1 - t0
        t["digest"] += t2 - t1
        t["stamp"] += t3 - t2
        nbytes += data.nbytes
    n = len(blocks)
    # compute: predict + cluster a sample of blocks on one core (as one worker thread does)
    import torch

    torch.set_num_threads(1)
    store = Store(str(tmp / "unused"), "bench")
    task = Task.of(run, store)
    method = clustering_method(run)
    sample = blocks[n // 2: n // 2 + args.sample]
    t0 = time.perf_counter()
    out = predict_blocks(task, sample)
    t1 = time.perf_counter()
    for (pred, _), _b in zip(out, sample, strict=True):
        emb, fg = pred
        method.fragments(emb, fg)
    t2 = time.perf_counter()
    per = {"read_ms": 1e3 * t["read"] / n, "digest_ms": 1e3 * t["digest"] / n, "stamp_ms": 1e3 * t["stamp"] / n,
           "read_predict_ms": 1e3 * (t1 - t0) / len(sample), "cluster_ms": 1e3 * (t2 - t1) / len(sample)}
    compute = per["read_predict_ms"] + per["cluster_ms"]
    files = len(vol.files(blocks[n // 2].read) or [])
    result = {
        "machine": machine(), "volume": list(shape), "input_bytes": int(np.prod(shape) * vol.dtype.itemsize),
        "on_disk_bytes": sum(f.stat().st_size for f in src.rglob("*") if f.is_file()),
        "blocks": n, "write_shape": list(plan.write_shape), "read_shape": list(plan.read_shape),
        "files_per_block": files, "read_mb_per_block": nbytes / n / 1e6, "per_block": per,
        "record_overhead": (per["digest_ms"] + per["stamp_ms"]) / compute,
        "check_metadata_vs_compute": per["stamp_ms"] / compute,
        "check_content_vs_compute": (per["read_ms"] + per["digest_ms"]) / compute,
        "whole_volume_s": {"stamp_all": t["stamp"], "read_and_digest_all": t["read"] + t["digest"],
                           "compute_all_estimated": compute * n / 1e3},
    }
    print(json.dumps(result, indent=1))


# ---------------------------------------------------------------- output sizes


def space(args: argparse.Namespace) -> None:
    """Bytes per voxel of each part of a run's output at three object densities (the scratch
    measured just before it is removed), and `pipeline plan`'s estimate next to them."""
    import zarr

    import pipeline.runtime.store as st
    from pipeline.plan.labels import label_target
    from pipeline.plan.prepare import prepare
    from pipeline.plan.space import estimate
    from pipeline.run import segment
    from pipeline.volume.io import write_zarr
    from pipeline.volume.synthetic import SyntheticSpec, generate

    def du(p: Path) -> int:
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else (p.stat().st_size if p.exists() else 0)

    sizes: dict[str, int] = {}
    finish = st.Store.finish

    def measured(self, attrs):
        root = Path(self.path)
        sizes.update({k: du(root / k) for k in ("segmentation", "scratch/fragments", "scratch/faces", "scratch/stats",
                                               "labels", "objects", "objects.csv", "qc")})
        sizes["peak"] = du(root)
        finish(self, attrs)

    st.Store.finish = measured
    tmp = Path(args.tmp) / "faults-space"
    tmp.mkdir(parents=True, exist_ok=True)
    shape = (48, 192, 192)
    for density in (0.1, 0.25, 0.4):
        src = tmp / f"d{density}.zarr"
        if not src.exists():
            image, _ = generate(SyntheticSpec(shape=shape, radius=(5.0, 10.0), anisotropy=2.0, density=density,
                                              overlap=0.0), seed=3)
            write_zarr(src, image, chunks=(16, 64, 64), name="raw")
        cfg = {"input": {"path": str(src), "dataset": "raw"}, "output": {"path": str(tmp / "out.zarr"), "overwrite": True},
               "cluster": {"kind": "local", "n_workers": 2}, "blocks": {"write_shape": [24, 48, 48]}}
        segment(cfg)
        run = prepare(cfg)
        est = estimate(run, label_target(run))
        objects = dict(zarr.open_group(str(tmp / "out.zarr"), mode="r").attrs)["pipeline"]["objects"]
        voxels = int(np.prod(shape))
        print(json.dumps({"density": density, "objects": objects, "bytes_per_voxel": {k: round(v / voxels, 4) for k, v in sizes.items()},
                          "measured_peak": sizes["peak"], "estimated_peak": est.peak, "estimate": est.parts}), flush=True)


def vouch_cost(args: argparse.Namespace) -> None:
    """What vouching costs (issue 28): a serial run of the demo model, the seconds spent making
    the markers' file lists (size and CRC-32 of what each batch wrote) against the run's wall;
    then, on the unfinished output, what checking every finished marker costs (sizes; CRC-32)."""
    import pipeline.runtime.store as store_module
    from pipeline.run import segment
    from pipeline.runtime.integrity import check_marker
    from pipeline.volume.io import write_zarr

    spent = [0.0, 0]
    original = store_module.vouch

    def timed(root, paths):
        t0 = time.perf_counter()
        out = original(root, paths)
        spent[0] += time.perf_counter() - t0
        spent[1] += len(out)
        return out

    store_module.vouch = timed
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        image, _ = synthetic_volume(tuple(args.shape), seed=3)
        write_zarr(Path(tmp) / "in.zarr", image, chunks=(16, 64, 64), name="raw")
        cfg = {"input": {"path": f"{tmp}/in.zarr", "dataset": "raw"}, "output": {"path": f"{tmp}/out.zarr"},
               "cluster": {"kind": "serial"}, "blocks": {"write_shape": [16, 64, 64]}}
        kept = store_module.Store.finish
        store_module.Store.finish = lambda self, attrs: None  # keep the scratch (markers) to time the checks
        t0 = time.perf_counter()
        segment(cfg)
        wall = time.perf_counter() - t0
        store_module.Store.finish = kept
        root = Path(tmp) / "out.zarr"
        checks = {}
        for content in (False, True):
            t1, n = time.perf_counter(), 0
            for folder in (root / "scratch").glob("done_*"):
                for f in folder.glob("*.json"):
                    assert check_marker(folder, f.name, root, content) is None
                    n += 1
            checks["crc32" if content else "sizes"] = round(time.perf_counter() - t1, 3)
        print(json.dumps({"machine": machine(), "shape": args.shape, "run_wall_s": round(wall, 2),
                          "vouch_s": round(spent[0], 3), "files_vouched": spent[1],
                          "vouch_share": round(spent[0] / wall, 4), "markers": n, "check_all_markers_s": checks}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["matrix", "checks", "space", "vouch"])
    parser.add_argument("--shape", type=int, nargs=3)
    parser.add_argument("--sample", type=int, default=4, help="checks: blocks predicted to measure compute")
    parser.add_argument("--tmp", default=tempfile.gettempdir())
    parser.add_argument("--only", type=lambda v: [int(i) for i in v.split(",")], help="matrix: only these rows "
                        "(0-based, e.g. 6,7,8)")
    parser.add_argument("--repeat", type=int, default=1, help="matrix: run each row this often")
    args = parser.parse_args()
    if args.shape is None:
        args.shape = [256, 1024, 1024] if args.what == "checks" else [64, 512, 512] if args.what == "vouch" \
            else [48, 192, 192]
    {"matrix": matrix, "checks": checks, "space": space, "vouch": vouch_cost}[args.what](args)


if __name__ == "__main__":
    main()
