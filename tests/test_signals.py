"""SIGTERM and SIGINT (issue 28, item 3): a run stops submitting work, lets running tasks finish
within a grace period, prints one line (what was done, how to resume) and exits 128 + signal;
the rerun of the same command resumes to the result of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline.volume.io import open_group

from .helpers import KILL_CLIENT
from .test_faults import config, data, same_result  # noqa: F401 - data: the module's input and reference


def stopped(r: subprocess.CompletedProcess, code: int, name: str, stage: str) -> str:
    """The run exited ``code`` with one last line saying what stopped it, where, and how to resume."""
    assert r.returncode == code, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"stopped by {name} in {stage}"), last
    assert "rerun the same command to resume (pipeline -q run " in last, last
    assert not [line for line in r.stderr.splitlines() if "distributed." in line], r.stderr
    return last


def resume(cfg, out, ref) -> None:
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "-q", "run", str(cfg)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    same_result(out, ref)


@pytest.mark.parametrize("stage,after,sig,where", [
    ("fragments", 3, "SIGTERM", "fragments (3 of 16"), ("merge", 1, "SIGTERM", "relabel (0 of 16"),
    ("relabel", 2, "SIGTERM", "relabel (2 of 16"), ("objects", 1, "SIGTERM", ""), ("fragments", 5, "SIGINT", "fragments")])
def test_signal_in_every_stage(data, tmp_path, stage, after, sig, where):  # noqa: F811
    """The signal arrives once the stage has returned ``after`` results; the serial engine stops
    before its next batch (``where``: the merge's tree reduction returned, so the next stage): one
    line, exit 143 (SIGINT: 130), the output unfinished, and the rerun gives the uninterrupted result."""
    cfg = config(data, f"signal-{stage}-{sig}")
    (tmp_path / "kill.py").write_text(KILL_CLIENT)
    r = subprocess.run([sys.executable, str(tmp_path / "kill.py"), stage, str(after), "-q", "run", str(cfg)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "PIPELINE_TEST_SIGNAL": sig})
    out = data / f"signal-{stage}-{sig}.zarr"
    if stage == "objects" and r.returncode == 0:  # its last result: nothing was left to stop
        same_result(out, data / "reference.zarr")
        return
    stopped(r, 128 + getattr(signal, sig), sig, where)
    assert open_group(out).attrs["complete"] is False and not (out / "lock.json").exists()  # lock released
    resume(cfg, out, data / "reference.zarr")


def test_sigterm_from_outside_on_a_local_cluster(data, tmp_path):  # noqa: F811
    """SIGTERM sent by another process (what SLURM does at the time limit) to a run on a
    LocalCluster, while its tasks run: one line and exit 143 within the grace period, no
    traceback or worker noise, and the rerun resumes to the uninterrupted result."""
    cfg = config(data, "outside", cluster={"kind": "local", "n_workers": 2})
    (tmp_path / "kill.py").write_text(KILL_CLIENT)
    log = tmp_path / "stderr.txt"
    with log.open("w") as err:
        p = subprocess.Popen([sys.executable, str(tmp_path / "kill.py"), "none", "0", "-q", "run", str(cfg),
                              "--grace", "5"], stderr=err, stdout=subprocess.DEVNULL,
                             env={**os.environ, "PIPELINE_TEST_DELAY": "0.3"})
        deadline = time.monotonic() + 120
        while "Dask dashboard" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3)  # tasks are running
        p.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        code = p.wait(timeout=120)
    took = time.monotonic() - sent
    r = subprocess.CompletedProcess(p.args, code, "", log.read_text())
    last = stopped(r, 143, "SIGTERM", "")
    assert "tasks done" in last
    assert took < 60, took  # the grace period (5 s) and closing the cluster, not the rest of the run
    out = data / "outside.zarr"
    assert open_group(out).attrs["complete"] is False
    resume(cfg, out, data / "reference.zarr")
