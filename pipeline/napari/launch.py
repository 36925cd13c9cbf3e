"""A whole-volume run launched from the viewer: the YAML it runs, a detached ``pipeline run``,
its run record and its progress lines. No Qt here.

The config is a YAML file the user keeps: ``pipeline run <that file>`` runs the same. The run is
``python -m pipeline.napari.detach <record> <config>``, which calls the CLI's ``main(["-q", "run", config])``
in a new session (it outlives the viewer), its output in a log file next to the result, and
writes its exit code into the record when it ends. The record (``<output>.run.json``, also
listed in :func:`runs_folder`) lets a reopened widget find the run, follow its progress lines
(``-q``: a line every 30 s and one at the end of each stage) and show its error, the one line
the CLI prints (``error: ...``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import Config, validate_config

PROGRESS = re.compile(r"pipeline\.progress: (?P<desc>[^:]+): (?P<done>\d+)/(?P<total>\d+) ")
TAIL_BYTES = 1 << 16  # of the log, read to find the latest progress line and the error


def runs_folder() -> Path:
    """Where run records are listed for the widget to find: ``$PIPELINE_RUNS``, else
    ``$XDG_STATE_HOME/pipeline/runs`` (``~/.local/state/pipeline/runs``)."""
    if os.environ.get("PIPELINE_RUNS"):
        return Path(os.environ["PIPELINE_RUNS"])
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "pipeline" / "runs"


def write_config(data: Mapping[str, Any], path: Path) -> Config:
    """Validate ``data`` (a one-line error when it is not a valid config) and write it as YAML."""
    config = validate_config(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# written by the napari plugin; run it again with: pipeline run " + path.name + "\n"
                    + yaml.safe_dump(json.loads(json.dumps(dict(data))), sort_keys=False))
    return config


@dataclass(frozen=True)
class Run:
    """A launched run: its record file and what it says."""

    record: Path
    pid: int
    config: Path
    output: Path
    log: Path
    started: float
    create_time: float | None = None  # of the process, to tell it from a later one with the same pid
    exit_code: int | None = None

    @classmethod
    def load(cls, record: Path) -> Run:
        data = json.loads(record.read_text())
        return cls(record, int(data["pid"]), Path(data["config"]), Path(data["output"]), Path(data["log"]),
                   float(data["started"]), data.get("create_time"), data.get("exit_code"))

    def save(self, **extra: Any) -> None:
        data = {"pid": self.pid, "config": str(self.config), "output": str(self.output), "log": str(self.log),
                "started": self.started, "create_time": self.create_time, "exit_code": self.exit_code, **extra}
        tmp = self.record.with_name(f".{self.record.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.record)

    def alive(self) -> bool:
        """Whether the run's process is still running (not a zombie, not another process since)."""
        import psutil

        try:
            proc = psutil.Process(self.pid)
            if self.create_time is not None and abs(proc.create_time() - self.create_time) > 1.0:
                return False
            return proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def status(self) -> Status:
        """What the run is doing now, from its process, its record and the tail of its log."""
        record = Run.load(self.record) if self.record.exists() else self
        tail = read_tail(self.log)
        progress = last_progress(tail)
        error = error_line(tail)
        if record.alive():
            return Status("running", progress, None)
        if record.exit_code == 0 or (record.exit_code is None and complete(self.output)):
            return Status("done", progress, None)
        if record.exit_code is None:
            return Status("stopped", progress, error or "the run stopped without an exit code (killed?); run the "
                          "config again to resume")
        return Status("failed", progress, error or f"the run failed with exit code {record.exit_code}; see {self.log}")

    def stop(self) -> None:
        """End the run's process group (its Dask workers with it); rerunning the config resumes."""
        import signal

        if self.alive():
            os.killpg(self.pid, signal.SIGTERM)


@dataclass(frozen=True)
class Status:
    state: str  # running | done | failed | stopped
    progress: tuple[str, int, int] | None  # the latest progress line: stage, done, total
    error: str | None  # the CLI's one line, for failed and stopped runs

    def describe(self) -> str:
        if self.error:
            return self.error
        if self.progress:
            desc, done, total = self.progress
            return f"{self.state}: {desc} {done}/{total}"
        return self.state


def read_tail(path: Path, size: int = TAIL_BYTES) -> str:
    if not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - size))
        return f.read().decode(errors="replace")


def last_progress(text: str) -> tuple[str, int, int] | None:
    """The latest progress line's stage, done and total (see :mod:`pipeline.runtime.progress`)."""
    found = list(PROGRESS.finditer(text))
    if not found:
        return None
    m = found[-1]
    return m["desc"], int(m["done"]), int(m["total"])


def error_line(text: str) -> str | None:
    """The CLI's one error line (``error: ...``), the last one in ``text``."""
    lines = [line.strip() for line in text.splitlines() if line.startswith("error: ")]
    return lines[-1] if lines else None


def complete(output: Path) -> bool:
    """Whether ``output`` is a finished run's output group."""
    from .result import group_attrs

    return bool((group_attrs(output) or {}).get("complete"))


def record_path(output: Path) -> Path:
    return output.with_name(output.name + ".run.json")


def launch(config_path: Path, output: Path) -> Run:
    """Start ``pipeline run config_path`` detached (new session, output to ``<output>.log``)."""
    import psutil

    log = output.with_name(output.name + ".log")
    record = record_path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.napari.detach", str(record.resolve()),
                                 str(config_path.resolve())],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=str(config_path.parent))
    try:
        created: float | None = psutil.Process(proc.pid).create_time()
    except psutil.Error:
        created = None
    run = Run(record, proc.pid, config_path.resolve(), output.resolve(), log.resolve(), time.time(), created)
    run.save()
    folder = runs_folder()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{proc.pid}-{int(run.started)}.json").write_text(json.dumps({"record": str(record.resolve())}))
    _children.append(proc)  # reaped by poll() while the viewer lives (no zombie)
    return run


_children: list[subprocess.Popen[bytes]] = []


def reap() -> None:
    """Collect the exit status of runs this process started that have ended."""
    for proc in list(_children):
        if proc.poll() is not None:
            _children.remove(proc)


def known_runs() -> list[Run]:
    """Runs listed in :func:`runs_folder` whose record still exists, newest first."""
    reap()
    out = []
    folder = runs_folder()
    for entry in sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True) if folder.is_dir() else []:
        try:
            record = Path(json.loads(entry.read_text())["record"])
            out.append(Run.load(record))
        except (OSError, ValueError, KeyError):
            continue
    return out


def running() -> list[Run]:
    """The known runs that are still going."""
    return [r for r in known_runs() if r.alive()]
