"""The guard of a job-queue cluster's worker jobs (:class:`JobGuard`): jobs that ended are replaced,
those lost to faults within ``max_worker_restarts``, and a run whose workers are all lost for good
stops with :class:`~pipeline.cluster.errors.WorkersLost`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..config import JobqueueClusterConfig
from .errors import WorkersLost
from .jobqueue import jobs, lifetime

logger = logging.getLogger(__name__)


class JobGuard:
    """Keeps the worker jobs of a dask-jobqueue cluster: a job that ended is replaced. A job that
    ended after its worker lifetime (retired before its walltime) is replaced freely; one lost to a
    fault (cancelled, failed, killed, refused by the queue) counts against ``max_worker_restarts``.
    When the budget is spent and no worker is left or coming, the guard records a
    :class:`WorkersLost` error in ``fatal`` and calls ``on_fatal`` (the engine stops waiting).

    A job has ended when SLURM no longer lists it (``squeue``), or, elsewhere, when the workers it had
    have been gone for ``grace`` seconds."""

    def __init__(self, cluster: Any, cfg: JobqueueClusterConfig, interval: float = 2.0, grace: float = 10.0,
                 on_fatal: Callable[[WorkersLost], None] | None = None) -> None:
        import threading

        self.cluster, self.cfg, self.interval, self.grace, self.on_fatal = cluster, cfg, interval, grace, on_fatal
        self.restarts = 0  # jobs lost to faults and replaced
        self.retired = 0  # jobs that ended at their worker lifetime, replaced
        self.lost = 0  # jobs lost to faults beyond the budget, not replaced
        self.fatal: WorkersLost | None = None
        self._seen: dict[str, float] = {}  # job -> when its workers connected, at the earliest
        self._last: float | None = None  # when the previous check began
        self._gone: dict[str, float] = {}  # job -> since when its workers are missing
        self._unopened: dict[str, float] = {}  # job spec without a job -> since when
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="job-guard", daemon=True)

    def __enter__(self) -> JobGuard:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception as exc:  # noqa: BLE001 - keep guarding; one line, no traceback
                logger.warning("worker job check failed: %s: %s", type(exc).__name__, exc)

    def _worker_names(self, job: str) -> set[str]:
        p = self.cfg.processes
        return {job} if p == 1 else {f"{job}-{i}" for i in range(p)}

    def _alive_slurm(self, ids: list[str]) -> set[str]:
        import subprocess

        out = subprocess.run(["squeue", "-h", "-o", "%i %T", "-j", ",".join(ids)],
                             capture_output=True, text=True, timeout=30)
        if out.returncode != 0 and not out.stdout.strip():
            raise RuntimeError(f"squeue failed: {out.stderr.strip()[:200]}")
        return {line.split()[0] for line in out.stdout.splitlines()
                if line.split()[1:] and line.split()[1] in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")}

    def ended(self, now: float) -> dict[str, tuple[bool, str]]:
        """Jobs that ended: name -> (retired at their lifetime, what happened)."""
        connected = {w.get("name") for w in self.cluster.scheduler_info.get("workers", {}).values()}
        jobs_now = dict(list(self.cluster.workers.items()))
        for name in jobs_now:
            if self._worker_names(name) & connected:
                # it connected after the previous check: from then, so that a slow check (squeue on a
                # loaded head node) never makes a worker retired at its lifetime look short-lived
                self._seen.setdefault(name, now if self._last is None else self._last)
                self._gone.pop(name, None)
            elif name in self._seen:
                self._gone.setdefault(name, now)
        self._last = now
        ids = [str(j.job_id) for j in jobs_now.values() if getattr(j, "job_id", None)]
        alive = self._alive_slurm(ids) if self.cfg.kind == "slurm" and ids else set()
        life = lifetime(self.cfg)
        out: dict[str, tuple[bool, str]] = {}
        for name, job in jobs_now.items():
            if getattr(job, "submit_error", None):
                out[name] = (False, f"submission failed: {job.submit_error}")
                continue
            if self.cfg.kind == "slurm":
                gone = bool(getattr(job, "job_id", None)) and str(job.job_id) not in alive
            else:
                gone = name in self._gone and now - self._gone[name] >= self.grace
            if not gone:
                continue
            ran = self._gone.get(name, now) - self._seen[name] if name in self._seen else 0.0
            retired = life is not None and ran >= life[0] - life[1] - self.interval - 2
            out[name] = (retired, f"job {getattr(job, 'job_id', None) or name} "
                         + (f"retired after {ran:.0f} s" if retired else "ended"))
        return out

    def check(self, now: float | None = None) -> None:
        import time

        if self.fatal is not None:
            return
        now = time.monotonic() if now is None else now
        ended = self.ended(now)
        for name in ended:
            # forget the job entirely: closing it would cancel a job the queue no longer knows
            self.cluster.worker_spec.pop(name, None)
            self.cluster.workers.pop(name, None)
            self._seen.pop(name, None)
            self._gone.pop(name, None)
        faults = [why for retired, why in ended.values() if not retired]
        retirees = len(ended) - len(faults)
        if retirees:
            self.retired += retirees
            logger.info("%d worker job(s) retired at their lifetime; submitting replacements", retirees)
        if faults:
            budget = max(0, self.cfg.max_worker_restarts - self.restarts)
            self.restarts += min(budget, len(faults))
            self.lost += len(faults) - min(budget, len(faults))
            logger.warning("lost worker job(s): %s; %s (%d/%d restarts used)", "; ".join(faults),
                           "replacing" if len(faults) <= budget else "restart budget spent",
                           self.restarts, self.cfg.max_worker_restarts)
        if ended and self.cfg.adaptive is None:
            self.cluster.scale(jobs=max(0, jobs(self.cfg) - self.lost))
        self.reopen(now)
        if self.lost and not self.cluster.workers and not self.cluster.scheduler_info.get("workers"):
            self.fatal = WorkersLost(
                f"cluster: every {self.cfg.kind} worker job is gone and cluster.max_worker_restarts "
                f"({self.cfg.max_worker_restarts}) is spent (last: {faults[-1] if faults else 'lost'}); see "
                f"{self.cfg.log_directory}, then rerun the same command to resume")
            logger.debug("guard: %s", self.fatal)
            self._stop.set()
            if self.on_fatal is not None:
                self.on_fatal(self.fatal)

    def reopen(self, now: float) -> None:
        """Submit again the jobs whose spec has had no job for ``grace`` seconds. dask's SpecCluster gives
        a replacement the name of the job it replaces, and closes the job of that name once the old
        worker has been gone ``distributed.deploy.lost-worker-timeout`` (15 s) if no worker of that name
        is connected by then: a replacement slow to start is cancelled, its spec kept, nothing submitted
        again, and the run would wait for workers forever."""
        if self.cfg.adaptive is not None:
            return
        missing = set(self.cluster.worker_spec) - set(self.cluster.workers)
        self._unopened = {name: self._unopened.get(name, now) for name in missing}
        late = [name for name, since in self._unopened.items() if now - since >= self.grace]
        if late:
            logger.info("%d worker job(s) closed by the cluster before their worker connected; submitting them "
                        "again", len(late))
            self._unopened.clear()
            self.cluster.scale(jobs=len(self.cluster.worker_spec))  # the same jobs: those missing are opened
