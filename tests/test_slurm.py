"""The SLURM path against a real SLURM (started by .ci/run with deploy/local-slurm/start.sh).

Skipped when no SLURM answers, unless PIPELINE_REQUIRE_SLURM=1 (set by CI), where it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from pipeline.run import segment
from pipeline.volume.io import open_array, write_zarr

from .helpers import passthrough_checkpoint


def _slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mixed", "allocated"))


@pytest.fixture(scope="module")
def slurm():
    if not _slurm_up():
        if os.environ.get("PIPELINE_REQUIRE_SLURM") == "1":
            pytest.fail("PIPELINE_REQUIRE_SLURM=1 but no SLURM answers (deploy/local-slurm/start.sh)")
        pytest.skip("no SLURM here (start one with deploy/local-slurm/start.sh)")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("slurm")
    rng = np.random.default_rng(4)
    fg = ndimage.gaussian_filter(rng.random((32, 96, 96)), 1.5) > 0.5
    vol = fg.astype(np.float32) * np.where(rng.random(fg.shape) > 0.5, 1.0, 0.8).astype(np.float32)
    vol = ndimage.maximum_filter(vol, 2) * fg  # patches of two intensity levels: merges and splits
    write_zarr(tmp / "in.zarr", vol.astype(np.float32), chunks=(16, 32, 32), name="raw")
    ckpt = passthrough_checkpoint(tmp / "pt.pt")
    return tmp, ckpt


def _config(tmp, ckpt, name, cluster):
    return {"input": {"path": str(tmp / "in.zarr"), "dataset": "raw"},
            "output": {"path": str(tmp / f"{name}.zarr")},
            "model": {"checkpoint": str(ckpt)}, "blocks": {"write_shape": [8, 16, 16]}, "cluster": cluster}


@pytest.fixture(scope="module")
def local_result(data, client2):
    tmp, ckpt = data
    out = segment(_config(tmp, ckpt, "local", {"kind": "local"}), client=client2)
    return open_array(out / "segmentation")[...]


def _slurm_cluster(tmp, name, **kw):
    return {"kind": "slurm", "n_workers": 2, "cores": 1, "memory": "3GiB", "walltime": "00:20:00",
            "log_directory": str(tmp / f"logs-{name}"), **kw}


def test_slurm_run_equals_local(slurm, data, local_result):
    tmp, ckpt = data
    out = segment(_config(tmp, ckpt, "slurm", _slurm_cluster(tmp, "plain")))
    seg = open_array(out / "segmentation")[...]
    assert local_result.max() > 10
    np.testing.assert_array_equal(seg, local_result)
    logs = list((tmp / "logs-plain").glob("*.err"))
    assert len(logs) >= 2, "expected 2 SLURM worker jobs"
    assert any("tls://" in p.read_text() for p in logs), "workers must talk TLS"
    time.sleep(1)
    mine = subprocess.run(["squeue", "-h", "-o", "%j"], capture_output=True, text=True).stdout
    assert "dask-worker" not in mine, "worker jobs must be cancelled on teardown"


def _once_blocks_done(out_dir, blocks: int, act) -> None:
    """Call ``act()`` (until it returns True, for 240 s at most) once ``blocks`` fragment chunks are written."""
    deadline = time.time() + 240
    while time.time() < deadline:
        frag = out_dir / "scratch" / "fragments" / "c"
        if (sum(1 for _ in frag.rglob("*")) if frag.exists() else 0) >= blocks and act():
            return
        time.sleep(0.2)


def test_slurm_worker_job_cancelled_mid_run(slurm, data, local_result):
    tmp, ckpt = data
    out_dir = tmp / "fault.zarr"
    cancelled: list[str] = []

    def kill_one() -> bool:
        jobs = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-n", "dask-worker", "-o", "%i"],
                              capture_output=True, text=True).stdout.split()
        if len(jobs) < 2:
            return False
        subprocess.run(["scancel", jobs[0]], check=True)
        cancelled.append(jobs[0])
        return True

    killer = threading.Thread(target=_once_blocks_done, args=(out_dir, 20, kill_one), daemon=True)
    killer.start()
    out = segment(_config(tmp, ckpt, "fault", _slurm_cluster(tmp, "fault", max_worker_restarts=2)))
    killer.join(timeout=5)
    assert cancelled, "the run finished before a worker job could be cancelled"
    np.testing.assert_array_equal(open_array(out / "segmentation")[...], local_result)


def _running_nodes() -> dict[str, str]:
    """Running worker jobs: job id -> the node it runs on."""
    out = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-n", "dask-worker", "-o", "%i %N"],
                         capture_output=True, text=True).stdout.split("\n")
    return dict(line.split() for line in out if len(line.split()) == 2)


def _nodes() -> list[str]:
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True).stdout.split()
    return sorted(set(out))


def test_worker_jobs_spread_over_nodes_equal_local(slurm, data, local_result):
    """Three worker jobs on a SLURM of several nodes (least loaded first): they land on different
    nodes, and the result is the local one."""
    if len(_nodes()) < 2:
        pytest.skip("a single-node SLURM (deploy/local-slurm/start.sh starts 3)")
    tmp, ckpt = data
    seen: set[str] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.2):
            seen.update(_running_nodes().values())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out = segment(_config(tmp, ckpt, "spread", _slurm_cluster(tmp, "spread", n_workers=3)))
    finally:
        stop.set()
        watcher.join(timeout=5)
    assert len(seen) >= 2, f"worker jobs ran on {sorted(seen)} only"
    np.testing.assert_array_equal(open_array(out / "segmentation")[...], local_result)


def _processes_on(node: str) -> list[int]:
    """Processes a job started on ``node`` (SLURM sets SLURMD_NODENAME in their environment)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if f"SLURMD_NODENAME={node}".encode() in env:
            found.append(int(pid))
    return found


def test_node_lost_mid_run_finishes_identically(slurm, data, local_result):
    """One node dies mid-run (its slurmd and every process of its jobs killed): the run goes on on the
    other nodes (lost worker jobs replaced, their blocks rescheduled) and gives the local result; the
    node comes back afterwards."""
    nodes = _nodes()
    if len(nodes) < 2:
        pytest.skip("a single-node SLURM (deploy/local-slurm/start.sh starts 3)")
    tmp, ckpt = data
    out_dir = tmp / "node.zarr"
    killed: list[str] = []

    def kill_node() -> bool:
        running = _running_nodes()
        if len(set(running.values())) < 2:
            return False
        node = sorted(running.values())[0]
        subprocess.run(["pkill", "-9", "-f", f"slurmd -N {node}$"], check=False)
        for pid in _processes_on(node):
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        killed.append(node)
        return True

    killer = threading.Thread(target=_once_blocks_done, args=(out_dir, 20, kill_node), daemon=True)
    killer.start()
    try:
        out = segment(_config(tmp, ckpt, "node", _slurm_cluster(tmp, "node", n_workers=3, max_worker_restarts=4)))
    finally:
        killer.join(timeout=5)
        for node in killed:  # the node back for the other tests
            subprocess.run(["/usr/sbin/slurmd", "-N", node], check=False)
            subprocess.run(["scontrol", "update", f"NodeName={node}", "State=RESUME"], check=False)
    assert killed, "the run finished before a node could be killed"
    np.testing.assert_array_equal(open_array(out / "segmentation")[...], local_result)


def test_lost_worker_job_is_replaced(slurm, tmp_path):
    """A cancelled worker job is replaced by a new one (bounded by max_worker_restarts)."""
    from pipeline.cluster.deploy import open_client
    from pipeline.config import validate_config

    cfg = validate_config({"input": {"path": "x"}, "output": {"path": "y"},
                           "cluster": _slurm_cluster(tmp_path, "guard", n_workers=1, max_worker_restarts=1)})
    with open_client(cfg.cluster) as client:
        client.wait_for_workers(1, timeout=120)
        first = set(client.scheduler_info()["workers"])
        jobs = subprocess.run(["squeue", "-h", "-n", "dask-worker", "-o", "%i"], capture_output=True,
                              text=True).stdout.split()
        subprocess.run(["scancel", *jobs], check=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            now = set(client.scheduler_info()["workers"])
            if now and not now & first:
                break
            time.sleep(0.5)
        else:
            pytest.fail("no replacement worker arrived")
        assert client.submit(sum, [1, 2]).result() == 3
        # the restart budget (1) is spent: a second loss is not replaced
        jobs = subprocess.run(["squeue", "-h", "-n", "dask-worker", "-o", "%i"], capture_output=True,
                              text=True).stdout.split()
        subprocess.run(["scancel", *jobs], check=True)
        time.sleep(8)
        pending = subprocess.run(["squeue", "-h", "-n", "dask-worker", "-o", "%i"], capture_output=True,
                                 text=True).stdout.split()
        assert pending == []
    assert len(list((tmp_path / "logs-guard").glob("*.err"))) == 2


def test_gpu_job_script(tmp_path):
    """A GPU job: gres, explicit memory, one worker per GPU holding the `model` resource with the
    job's cores as threads (one predicts, the others cluster), one torch thread per task."""
    from dask_jobqueue import SLURMCluster

    from pipeline.cluster.deploy import torch_threads
    from pipeline.cluster.jobqueue import jobqueue_options
    from pipeline.config import validate_config

    cfg = validate_config({"input": {"path": "x"}, "output": {"path": "y"}, "cluster": {
        "kind": "slurm", "queue": "gpu", "cores": 8, "memory": "48GiB", "gpus": 1, "walltime": "04:00:00",
        "job_script_prologue": ["module load cuda"], "tls": False}}).cluster
    with SLURMCluster(**jobqueue_options(cfg, tmp_path, tmp_path)) as cluster:
        script = cluster.job_script()
    for line in ("#SBATCH -p gpu", "#SBATCH --gres=gpu:1", "#SBATCH --mem=", "#SBATCH -t 04:00:00",
                 "module load cuda", "--nthreads 8", "--resources model=1"):
        assert line in script, (line, script)
    assert torch_threads(cfg) == 1


def test_run_longer_than_the_walltime(slurm, data, client2):
    """One worker whose jobs have SLURM's shortest walltime (1 min) and a worker lifetime of 20 s: the
    worker retires before SLURM kills its job, the job is replaced without counting as a restart
    (max_worker_restarts 0), and the run, which outlives several lifetimes (55 to 100 s on the machines
    it ran on), gives the local result. The lifetime is explicit so that a fast machine still outlives it;
    the automatic lifetime (walltime less its margin) is tested in test_jobqueue."""
    tmp, ckpt = data
    rng = np.random.default_rng(5)
    fg = ndimage.gaussian_filter(rng.random((64, 224, 224)), 1.5) > 0.5
    write_zarr(tmp / "long-in.zarr", (fg * np.where(rng.random(fg.shape) > 0.5, 1.0, 0.8)).astype(np.float32),
               chunks=(16, 32, 32), name="raw")

    def config(name, cluster):
        cfg = _config(tmp, ckpt, name, cluster)
        cfg["blocks"]["blocks_per_task"] = 3  # more tasks: a longer run
        return {**cfg, "input": {"path": str(tmp / "long-in.zarr"), "dataset": "raw"},
                "clustering": {"method": "meanshift"}}  # slower per block than connectivity

    t0 = time.time()
    out = segment(config("long", _slurm_cluster(tmp, "long", n_workers=1, walltime="00:01:00",
                                                worker_lifetime="20s", max_worker_restarts=0)))
    seconds = time.time() - t0
    logs = list((tmp / "logs-long").glob("*.err"))
    print(f"SLURM run: {seconds:.0f} s, {len(logs)} jobs")
    assert len(logs) >= 2, f"the run ({seconds:.0f} s, {len(logs)} jobs) did not outlive a worker lifetime"
    retired = [p for p in logs if "worker-lifetime-reached" in p.read_text()]
    assert retired, "no worker retired at its lifetime"
    for p in logs:  # deliberate shutdowns (lifetime, end of run) leave no traceback in the job logs
        assert "Traceback" not in p.read_text(), p.read_text()
    ref = segment(config("long-local", {"kind": "local"}), client=client2)
    np.testing.assert_array_equal(open_array(out / "segmentation")[...], open_array(ref / "segmentation")[...])


def test_all_jobs_cancelled_stops_and_resumes(slurm, data, local_result, tmp_path):
    """Every worker job cancelled with max_worker_restarts 0: the CLI exits 2 within a minute with a
    one-line error and no traceback; rerunning the same command resumes and finishes."""
    import sys

    import yaml

    tmp, ckpt = data
    out_dir = tmp_path / "cancelled.zarr"
    cfg = _config(tmp, ckpt, "cancelled", _slurm_cluster(tmp_path, "cancelled", max_worker_restarts=0))
    cfg["output"]["path"] = str(out_dir)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    cancelled: list[float] = []

    def cancel_all_jobs() -> None:
        deadline = time.time() + 240
        while time.time() < deadline:
            frag = out_dir / "scratch" / "fragments" / "c"
            done = sum(1 for _ in frag.rglob("*")) if frag.exists() else 0
            if done >= 10:
                subprocess.run(["scancel", "-n", "dask-worker", "-u", str(os.getuid())], check=True)
                cancelled.append(time.time())
                return
            time.sleep(0.2)

    killer = threading.Thread(target=cancel_all_jobs, daemon=True)
    killer.start()
    cmd = [sys.executable, "-m", "pipeline.cli", "-q", "run", str(tmp_path / "c.yaml")]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    ended = time.time()
    killer.join(timeout=5)
    assert cancelled, "the run finished before its jobs could be cancelled"
    assert first.returncode == 2, first.stderr
    assert ended - cancelled[0] < 60, f"took {ended - cancelled[0]:.0f} s to stop"
    print(f"stopped {ended - cancelled[0]:.1f} s after every job was cancelled")
    last = first.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cluster: every slurm worker job is gone"), first.stderr
    assert "Traceback" not in first.stderr, first.stderr
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    import zarr

    assert zarr.open_group(str(out_dir), mode="r").attrs["resumed_blocks"] > 0
    for log in (tmp_path / "logs-cancelled").glob("*.err"):  # cancelled, or closed at the end: no traceback
        assert "Traceback" not in log.read_text(), log.read_text()
    np.testing.assert_array_equal(open_array(out_dir / "segmentation")[...], local_result)


def _driver_job(data, tmp_path, name: str) -> tuple[Any, dict[str, str], Any, str]:
    """The driver submitted as a job (deploy/run-pipeline.sbatch) on ``<name>.yaml``, once it has written
    10 fragment chunks: ``(script, env, output folder, job id)``."""
    import sys
    from pathlib import Path

    import yaml

    script = Path(__file__).resolve().parents[1] / "deploy" / "run-pipeline.sbatch"
    tmp, ckpt = data
    out_dir = tmp_path / f"{name}.zarr"
    cfg = _config(tmp, ckpt, name, _slurm_cluster(tmp_path, name))
    cfg["output"]["path"] = str(out_dir)
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PIPELINE_VENV": sys.prefix}
    job = subprocess.run(["sbatch", "--parsable", str(script), str(tmp_path / f"{name}.yaml")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True).stdout.strip().split(";")[0]
    deadline = time.time() + 240
    while time.time() < deadline:
        frag = out_dir / "scratch" / "fragments" / "c"
        if frag.exists() and sum(1 for _ in frag.rglob("*")) >= 10:
            return script, env, out_dir, job
        time.sleep(0.2)
    pytest.fail("the driver job made no progress in 240 s")


def _wait_gone(job: str, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline and job in subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True,
                                                           text=True).stdout.split():
        time.sleep(0.5)


def test_driver_job_told_to_stop_resumes(slurm, data, local_result, tmp_path):
    """The driver as a job (deploy/run-pipeline.sbatch, which asks SLURM for SIGTERM before the
    walltime): SIGTERM to its batch step mid-run (what `--signal=B:TERM@120` sends, here with
    `scancel --batch --signal=TERM`) ends it with the one line and exit 143, its worker jobs
    cancelled; resubmitting the same command resumes to the local result."""
    script, env, out_dir, job = _driver_job(data, tmp_path, "driver")
    assert "#SBATCH --signal=B:TERM@" in script.read_text()
    subprocess.run(["scancel", "--batch", "--signal=TERM", job], check=True)
    _wait_gone(job)
    log = (tmp_path / f"pipeline-driver-{job}.log").read_text()
    last = log.strip().splitlines()[-1]
    assert last.startswith("stopped by SIGTERM in fragments") and "rerun the same command to resume" in last, log
    assert "Traceback" not in log, log
    shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    if "ExitCode=" in shown:  # while SLURM still remembers the job
        assert "ExitCode=143:0" in shown or "ExitCode=0:15" in shown, shown
    time.sleep(2)
    workers = subprocess.run(["squeue", "-h", "-n", "dask-worker", "-u", str(os.getuid()), "-o", "%i"],
                             capture_output=True, text=True).stdout.split()
    assert not workers, f"worker jobs left running: {workers}"
    again = subprocess.run(["sbatch", "--wait", str(script), str(tmp_path / "driver.yaml")], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    import zarr

    assert zarr.open_group(str(out_dir), mode="r").attrs["resumed_blocks"] > 0
    np.testing.assert_array_equal(open_array(out_dir / "segmentation")[...], local_result)


def test_driver_job_killed_rerun_resumes(slurm, data, local_result, tmp_path):
    """The driver job killed outright mid-run (SIGKILL to every step: a node crash, `scancel
    --signal=KILL`), nothing said, its worker jobs orphaned: resubmitting the same command resumes
    to the local result."""
    script, env, out_dir, job = _driver_job(data, tmp_path, "killed")
    orphans = set(subprocess.run(["squeue", "-h", "-n", "dask-worker", "-o", "%i"], capture_output=True,
                                 text=True).stdout.split())
    subprocess.run(["scancel", "--signal=KILL", "--full", job], check=True)
    _wait_gone(job)
    try:
        again = subprocess.run(["sbatch", "--wait", str(script), str(tmp_path / "killed.yaml")], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=300)
    finally:
        if orphans:  # the killed driver's workers, if their scheduler's loss has not ended them yet
            subprocess.run(["scancel", *orphans], check=False)
    assert again.returncode == 0, again.stderr
    import zarr

    assert zarr.open_group(str(out_dir), mode="r").attrs["resumed_blocks"] > 0
    np.testing.assert_array_equal(open_array(out_dir / "segmentation")[...], local_result)
