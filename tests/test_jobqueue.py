"""Batch schedulers through dask-jobqueue without a scheduler: one config shape mapped to SLURM, PBS,
SGE, LSF and HTCondor job scripts; worker lifetime inside the walltime; the job guard's bookkeeping
(retired jobs replaced freely, faults counted, a run stopped when no worker is left)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
import yaml

from pipeline.cli import main
from pipeline.cluster.errors import WorkersLost
from pipeline.cluster.guard import JobGuard
from pipeline.cluster.jobqueue import format_walltime, job_script, jobs, lifetime
from pipeline.config import ConfigError, validate_config

BASE = {"input": {"path": "x"}, "output": {"path": "y"}}
GPU_JOB = {"queue": "gpu", "account": "lab", "cores": 8, "memory": "48GiB", "walltime": "04:00:00", "gpus": 1,
           "job_script_prologue": ["module load cuda", "conda activate seg"], "n_workers": 2}

# per kind: the lines the GPU job above must produce (queue, account, cores, memory, walltime, GPUs)
EXPECTED = {
    "slurm": ["#SBATCH -p gpu", "#SBATCH -A lab", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=48G",
              "#SBATCH -t 04:00:00", "#SBATCH --gres=gpu:1"],
    "pbs": ["#PBS -q gpu", "#PBS -A lab", "#PBS -l select=1:ncpus=8:mem=48GB:ngpus=1", "#PBS -l walltime=04:00:00"],
    "sge": ["#$ -q gpu", "#$ -P lab", "#$ -l h_vmem=49152M", "#$ -l h_rt=04:00:00", "#$ -l gpu=1"],
    "lsf": ["#BSUB -q gpu", '#BSUB -P "lab"', "#BSUB -n 8", "#BSUB -M ", "#BSUB -W 4:00", '#BSUB -gpu "num=1"'],
    "htcondor": ["MY.DaskWorkerCores = 8", "MY.DaskWorkerMemory = 51539607552", "request_gpus = 1",
                 "accounting_group = lab"],
}


def cluster(**kw):
    return validate_config({**BASE, "cluster": kw}).cluster


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_job_script_per_scheduler(kind, tmp_path):
    section = {**GPU_JOB, "kind": kind, "log_directory": str(tmp_path / "logs")}
    if kind == "htcondor":
        section.pop("queue")
    script = job_script(cluster(**section))
    for line in [*EXPECTED[kind], "module load cuda", "conda activate seg", "--resources model=1",
                 "--nthreads 8", "--lifetime 14100s", "--lifetime-stagger 75s", "--protocol tls://"]:
        assert line in script, (kind, line, script)


@pytest.mark.parametrize("kind,line", [("slurm", "#SBATCH --gres=gpu:a100:2"), ("sge", "#$ -l gpu_card=2"),
                                       ("pbs", "#PBS -l ngpus=2"), ("htcondor", "request_gpus = 2")])
def test_raw_gpu_request_replaces_the_default(kind, line, tmp_path):
    raw = {"slurm": "--gres=gpu:a100:2", "sge": "-l gpu_card=2", "pbs": "-l ngpus=2",
           "htcondor": "request_gpus = 2"}[kind]
    script = job_script(cluster(kind=kind, gpus=1, gpu_request=raw, log_directory=str(tmp_path)))
    assert line in script and "gpu:1" not in script and "ngpus=1" not in script, script


def test_job_script_cli(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**BASE, "cluster": {"kind": "pbs", "walltime": "30:00:00"}}))
    assert main(["job-script", str(tmp_path / "c.yaml"), "--set", "cluster.kind=lsf",
                 "--set", f"cluster.log_directory={tmp_path / 'logs'}", "--set", "cluster.worker_lifetime=null"]) == 0
    out = capsys.readouterr().out
    assert "#BSUB -W 30:00" in out and "--lifetime" not in out, out
    assert main(["job-script", "--set", "input.path=x", "--set", "output.path=y"]) == 2
    assert "batch scheduler kind" in capsys.readouterr().err


def test_n_workers_and_renamed_keys():
    assert jobs(cluster(kind="slurm", n_workers=5, processes=2, cores=2)) == 3
    with pytest.raises(ConfigError, match=r"cluster\.jobs: use cluster\.n_workers \(Dask worker processes in all"):
        cluster(kind="slurm", jobs=2)
    with pytest.raises(ConfigError, match=r"cluster\.gres: use cluster\.gpu_request"):
        cluster(kind="slurm", gres="gpu:1")
    with pytest.raises(ConfigError, match=r"cluster.queue: HTCondor has no queues"):
        cluster(kind="htcondor", queue="q")
    with pytest.raises(ConfigError, match=r"for kind 'slurm' \(a key of kind local"):
        cluster(kind="slurm", memory_limit="4GiB")
    with pytest.raises(ConfigError, match=r"cluster.walltime: expected \[D-\]HH:MM:SS"):
        cluster(kind="pbs", walltime="4h")


def test_walltime_and_lifetime():
    assert format_walltime(36 * 3600, "slurm") == "1-12:00:00"
    assert format_walltime(36 * 3600, "pbs") == "36:00:00"
    assert format_walltime(3601, "lsf") == "1:01"
    assert lifetime(cluster(kind="slurm", walltime="00:01:00")) == (50.0, 2.5)  # at least 10 s margin
    assert lifetime(cluster(kind="slurm", walltime="01:00:00")) == (3300.0, 75.0)  # at most 5 min
    assert lifetime(cluster(kind="sge", walltime="00:10:00")) == (540.0, 15.0)  # 10%
    assert lifetime(cluster(kind="slurm", worker_lifetime="30s")) == (30.0, 1.5)
    assert lifetime(cluster(kind="slurm", worker_lifetime=None)) is None


class FakeCluster:
    """The parts of a JobQueueCluster the guard uses: job specs, jobs, connected workers, scale."""

    def __init__(self, n: int) -> None:
        self.count = 0
        self.worker_spec: dict[str, object] = {}
        self.workers: dict[str, SimpleNamespace] = {}
        self.scheduler_info: dict[str, dict] = {"workers": {}}
        self.scale(jobs=n)

    def scale(self, jobs: int) -> None:
        while len(self.workers) > jobs:
            self.workers.popitem()
        while len(self.workers) < jobs:
            name = f"job-{self.count}"
            self.count += 1
            self.worker_spec[name] = {}
            self.workers[name] = SimpleNamespace(job_id=None, submit_error=None)

    def connect(self, *names: str) -> None:
        self.scheduler_info["workers"] = {f"tls://{n}": {"name": n} for n in names}


def test_guard_replaces_retired_jobs_freely_and_counts_faults():
    fake = FakeCluster(2)
    cfg = cluster(kind="pbs", n_workers=2, worker_lifetime="60s", max_worker_restarts=1)
    fatal: list[WorkersLost] = []
    guard = JobGuard(fake, cfg, interval=1, grace=5, on_fatal=fatal.append)
    fake.connect("job-0", "job-1")
    guard.check(now=0)
    fake.connect("job-0")  # job-1 dies early: a fault, replaced (budget 1)
    guard.check(now=30)
    guard.check(now=36)
    assert guard.restarts == 1 and guard.retired == 0 and set(fake.workers) == {"job-0", "job-2"}
    fake.connect("job-0", "job-2")
    guard.check(now=37)
    fake.connect("job-2")  # job-0 retires after its lifetime (60 s, stagger 3 s): replaced freely
    guard.check(now=58)
    guard.check(now=63)
    assert guard.retired == 1 and guard.restarts == 1 and set(fake.workers) == {"job-2", "job-3"} and not fatal
    fake.workers["job-3"].submit_error = "qsub: queue disabled"  # the queue refuses: a fault, budget spent
    guard.check(now=64)
    assert guard.lost == 1 and set(fake.workers) == {"job-2"} and not fatal
    fake.connect()  # the last worker dies early: nothing left, nothing coming
    guard.check(now=70)
    guard.check(now=76)
    assert fatal and guard.fatal is fatal[0]
    assert "max_worker_restarts (1) is spent" in str(guard.fatal) and "resume" in str(guard.fatal)


def test_guard_counts_a_retirement_seen_late_as_a_retirement():
    """A check that comes late (squeue slow on a loaded head node) first sees a worker long after it
    connected: its lifetime is counted from the check before, so its retirement is not a fault (which,
    with max_worker_restarts 0, would leave the run without workers)."""
    fake = FakeCluster(1)
    cfg = cluster(kind="pbs", n_workers=1, worker_lifetime="20s", max_worker_restarts=0)  # stagger 1 s
    guard = JobGuard(fake, cfg, interval=1, grace=5)
    guard.check(now=0)  # not connected yet
    fake.connect("job-0")  # connects at about 1 s; the next check comes only at 8 s
    guard.check(now=8)
    fake.connect()  # retires at its lifetime (about 21 s)
    guard.check(now=22)
    guard.check(now=28)
    assert guard.retired == 1 and guard.restarts == 0 and guard.lost == 0, (guard.retired, guard.lost)
    assert set(fake.workers) == {"job-1"} and guard.fatal is None


def test_guard_submits_again_a_job_the_cluster_closed_before_it_connected():
    """dask's SpecCluster reuses a replaced job's name for its replacement and closes the job of that name
    15 s after the old worker left if no worker of that name is connected: the replacement, slow to
    start, is cancelled with its spec kept. The guard submits it again (the run would wait forever)."""
    fake = FakeCluster(1)
    cfg = cluster(kind="pbs", n_workers=1, worker_lifetime="20s", max_worker_restarts=0)
    guard = JobGuard(fake, cfg, interval=1, grace=5)
    guard.check(now=0)
    fake.workers.pop("job-0")  # closed by the cluster, its spec kept
    guard.check(now=1)
    guard.check(now=4)
    assert not fake.workers  # within the grace: maybe the cluster is still submitting it
    guard.check(now=7)
    assert len(fake.workers) == 1 and guard.restarts == 0 and guard.lost == 0 and guard.fatal is None


def test_engine_stops_when_the_guard_gives_up(client1):
    """A fatal guard error ends a wait on tasks that can never run (cancelled futures), within seconds."""
    from pipeline.cluster.deploy import cancel_all
    from pipeline.runtime.engine import Engine

    error = WorkersLost("cluster: every worker job is gone")
    state: dict[str, WorkersLost] = {}

    def abort() -> None:
        if "fatal" in state:
            raise state["fatal"]

    def give_up() -> None:
        state["fatal"] = error
        cancel_all(client1, str(error))

    engine = Engine(client1, abort=abort)
    threading.Timer(2, give_up).start()
    t0 = time.time()
    with pytest.raises(WorkersLost, match="every worker job is gone"):
        list(engine.map(_sleep, [[i] for i in range(4)], desc="t"))
    assert time.time() - t0 < 10


def _sleep(batch):
    time.sleep(12)
    return batch


def test_deploy_readme_job_scripts(tmp_path, monkeypatch, capsys):
    """Every `pipeline job-script` recipe of deploy/README.md prints the directives its text promises."""
    import re
    import shlex
    import shutil
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    shutil.copytree(repo / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    text = (repo / "deploy" / "README.md").read_text()
    recipes = re.findall(r"```bash\n(pipeline job-script [^\n]+)\n```\n\n(?:gives )?([^\n]*(?:\n[^\n]+)*)", text)
    assert len(recipes) >= 6, recipes
    for command, promise in recipes:
        assert main(shlex.split(command)[1:]) == 0, command
        script = capsys.readouterr().out
        promised = [p for p in re.findall(r"`([^`]+)`", promise) if p.startswith(("#", "request_gpus", "-"))]
        for directive in promised:
            assert directive.split(" ", 1)[-1].strip('"') in script or directive in script, (command, directive, script)


def test_worker_shutdown_errors_are_one_line():
    """The workers' preload: errors logged after a deliberate shutdown began become one INFO line
    without traceback; errors before it keep their level and traceback."""
    import io
    import logging

    from pipeline.cluster.workerlog import install

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger("distributed.test_workerlog")
    root = logging.getLogger("distributed")
    root.addHandler(handler)
    try:
        install([handler])
        try:
            raise RuntimeError("real problem")
        except RuntimeError:
            log.exception("task failed")
        log.warning("Closing worker gracefully: tls://x. Reason: worker-lifetime-reached")
        try:
            raise RuntimeError("ConnectionPool is closed")
        except RuntimeError:
            log.exception("ConnectionPool is closed")
    finally:
        root.removeHandler(handler)
    text = stream.getvalue()
    before, after = text.split("Closing worker gracefully")
    assert "ERROR task failed" in before and "Traceback" in before
    assert "INFO ConnectionPool is closed (during shutdown)" in after and "Traceback" not in after
    assert "--preload pipeline.cluster.workerlog" in job_script(cluster(kind="slurm"))


def test_worker_close_marks_the_shutdown():
    """The preload also learns of a shutdown from the server's close itself (its INFO lines may be
    hidden by DASK_LOGGING)."""
    import asyncio
    import logging

    from pipeline.cluster.workerlog import ShutdownNoise, mark_closing

    class Server:
        async def close(self, reason: str = "") -> str:
            return reason

    noise, server = ShutdownNoise(), Server()
    mark_closing(server, noise)
    record = logging.LogRecord("tornado.application", logging.ERROR, __file__, 1, "Exception in callback", None, None)
    assert noise.filter(record) and record.levelno == logging.ERROR  # not closing yet: untouched
    assert asyncio.run(server.close(reason="scheduler-close")) == "scheduler-close"
    record = logging.LogRecord("tornado.application", logging.ERROR, __file__, 1, "Exception in callback\nmore", None,
                               (ValueError, ValueError("x"), None))
    assert noise.filter(record) and record.levelno == logging.INFO and record.exc_info is None
    assert record.getMessage() == "Exception in callback (during shutdown)"


def test_fewer_cores_than_processes_is_refused(capsys):
    from pipeline.cli import main

    assert main(["job-script", "configs/slurm.yaml", "--set", "cluster.processes=2", "--set", "cluster.cores=1"]) == 2
    err = capsys.readouterr().err
    assert "cluster.cores 1 is less than cluster.processes 2" in err and "Traceback" not in err


def test_dashboard_link_names_where_it_listens():
    from pipeline.cluster.deploy import dashboard_link

    link = dashboard_link("http://192.0.2.2:42797/status", "127.0.0.1:0")
    assert link.startswith("http://127.0.0.1:42797/status") and "ssh -L 42797:127.0.0.1:42797" in link
    assert dashboard_link("http://192.0.2.2:42797/status", "0.0.0.0:8787") == "http://192.0.2.2:42797/status"
    assert dashboard_link("http://x:1/status", None) == "disabled"


def test_worker_entry_point_reports_a_failed_start_in_one_line(monkeypatch, capsys):
    """Batch jobs run `python -m pipeline.cluster.worker`: a dask-worker that fails to start (e.g. its job
    cancelled while the nanny starts) is one line and exit code 1, not a traceback."""
    from distributed.cli import dask_worker

    from pipeline.cluster import worker

    def fails() -> None:
        try:
            raise RuntimeError("Nanny failed to start worker process")
        except RuntimeError as exc:
            raise RuntimeError("Nanny failed to start.") from exc

    monkeypatch.setattr(dask_worker, "main", fails)
    with pytest.raises(SystemExit) as stop:
        worker.main()
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Nanny failed to start. (RuntimeError: Nanny failed to start worker process)" in err
    assert "-m pipeline.cluster.worker " in job_script(cluster(kind="slurm"))
