"""One run per output: a lock file in the output group, without ``flock``.

``<output>/lock.json`` names its holder (host, pid and the pid's start time, run id, command,
start time). It is made atomically: written to a temporary file of a unique name, then
hard-linked to ``lock.json`` (``link`` fails when the name exists, also on NFS), so a reader
never sees half a lock. While the run lasts a thread refreshes the file's modification time
every :data:`REFRESH_S` seconds (``utime``: no data written, so a full disk cannot stop it).

A second run on the output refuses with one line naming the holder. A lock is taken over, with
a warning, when its run is gone: on the same host its process no longer exists (or the pid now
belongs to a process started at another time), on any host it has not been refreshed for
:data:`STALE_S` seconds. Two runs that find the same stale lock both try to claim it
(``lock.json.<its run id>.claim``, made by ``link`` too): one wins and takes it over, the
other then finds the winner's lock. A run whose lock was taken over stops at its next check
(:meth:`RunLock.check`) instead of writing beside the new holder.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from ..volume.errors import OutputError

logger = logging.getLogger(__name__)

LOCK = "lock.json"
REFRESH_S = 30.0  # how often a running run touches its lock
STALE_S = 300.0  # a lock untouched this long belongs to a run that is gone


class LockError(OutputError):
    """The output is in use by another run, or this run's lock was taken over."""


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from ``/proc``); None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_alive(pid: int, start: str | None) -> bool:
    """Whether process ``pid`` of this host exists and, when ``start`` is known, is the one that
    started then (not a later process that got the same pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    now = process_start(pid)
    return start is None or now is None or now == start


def describe(info: dict[str, Any], age: float | None = None) -> str:
    """The holder in words: host, pid, start time, run id (and how long ago it refreshed)."""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info.get("started", 0))))
    text = f"host {info.get('host')}, pid {info.get('pid')}, since {since}, run {str(info.get('run_id'))[:12]}"
    return text + (f", last refreshed {age:.0f} s ago" if age is not None else "")


def read_lock(path: Path) -> tuple[dict[str, Any], float] | None:
    """A lock's content and its age in seconds (since its last refresh); None when there is none."""
    try:
        st = path.stat()
        info = json.loads(path.read_text() or "{}")
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # unreadable or not ours: a lock nobody refreshes
        return {"host": "?", "pid": -1, "run_id": "?"}, STALE_S + 1
    return info, max(0.0, time.time() - st.st_mtime)


def gone(info: dict[str, Any], age: float) -> str | None:
    """Why the lock's run is gone (None: it may be running)."""
    if age > STALE_S:
        return f"not refreshed for {age:.0f} s"
    if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int) \
            and not process_alive(info["pid"], info.get("pid_start")):
        return f"its process {info['pid']} is gone"
    return None


def refused(folder: Path, info: dict[str, Any], age: float) -> LockError:
    """The one-line refusal of a run that finds ``folder`` locked by the run ``info``."""
    return LockError(
        f"output.path '{folder}' is in use by another run ({describe(info, age)}); wait for it to end or stop it, "
        f"then rerun to resume; the lock of a run that was killed is taken over once its process is gone (same "
        f"host) or after {STALE_S:.0f} s without refresh (or delete '{folder / LOCK}' if no run uses it)")


def check_free(folder: Path) -> None:
    """Raise :class:`LockError` when a run that may still be running holds ``folder``'s lock."""
    found = read_lock(folder / LOCK)
    if found is not None and gone(*found) is None:
        raise refused(folder, *found)


class RunLock:
    """This run's lock on an output folder: :meth:`acquire`, :meth:`check`, :meth:`release`."""

    def __init__(self, folder: str | Path, run_id: str) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK
        self.run_id = run_id
        self.info = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": process_start(os.getpid()),
                     "run_id": run_id, "started": time.time(), "command": " ".join(sys.argv[:4])}
        self.held = False
        self.lost: str | None = None  # who took the lock over, once that is seen
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write_temp(self) -> Path:
        tmp = self.folder / f".{LOCK}.{uuid.uuid4().hex}"
        tmp.write_text(json.dumps(self.info))
        return tmp

    def acquire(self) -> None:
        """Take the lock (the folder exists), or raise :class:`LockError` naming its holder."""
        tmp = self._write_temp()
        try:
            for _ in range(50):
                try:
                    os.link(tmp, self.path)
                    break
                except FileExistsError:
                    pass
                found = read_lock(self.path)
                if found is None:
                    continue  # released meanwhile: try again
                info, age = found
                why = gone(info, age)
                if why is None:
                    raise refused(self.folder, info, age)
                if self._take_over(tmp, info, why):
                    break
                time.sleep(0.1)
            else:
                raise LockError(f"output.path '{self.folder}': could not take its lock '{self.path}' (other runs keep "
                                "taking it); rerun when only one run starts on this output")
        finally:
            tmp.unlink(missing_ok=True)
        self.held = True
        self._thread = threading.Thread(target=self._refresh, name="pipeline-lock", daemon=True)
        self._thread.start()

    def _take_over(self, tmp: Path, info: dict[str, Any], why: str) -> bool:
        """Replace the stale lock of run ``info`` by ours, if this run wins the claim to it."""
        claim = self.folder / f"{LOCK}.{info.get('run_id')}.claim"
        try:
            os.link(tmp, claim)
        except FileExistsError:
            old = read_lock(claim)
            if old is not None and old[1] > STALE_S:  # a claimant that died before it took over
                claim.unlink(missing_ok=True)
            return False
        try:
            now = read_lock(self.path)
            if now is None or now[0].get("run_id") != info.get("run_id"):
                return False  # it changed meanwhile: look again
            os.replace(tmp, self.path)
            logger.warning("output '%s': taking over the lock of an earlier run (%s): %s", self.folder,
                           describe(info), why)
            return True
        finally:
            claim.unlink(missing_ok=True)

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH_S):
            found = read_lock(self.path)
            if found is None:  # deleted by hand: this run still holds the output
                self._recreate()
                continue
            if found[0].get("run_id") != self.run_id:
                self.lost = describe(found[0])
                return
            try:
                os.utime(self.path)
            except OSError as exc:  # e.g. the filesystem went away: the run's own writes will say so
                logger.debug("could not refresh the lock %s: %s", self.path, exc)

    def _recreate(self) -> None:
        tmp = None
        try:
            tmp = self._write_temp()
            os.link(tmp, self.path)
        except OSError:  # another run's lock is there now (seen at the next refresh), or no space
            pass
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)

    def check(self) -> None:
        """Raise :class:`LockError` when another run has taken this run's lock over."""
        if self.lost is not None:
            raise LockError(f"output.path '{self.folder}': this run's lock was taken over by another run "
                            f"({self.lost}) after this run did not refresh it for {STALE_S:.0f} s; this run stops "
                            "and leaves the output to it")

    def release(self) -> None:
        """Stop refreshing and remove the lock, if it is still this run's."""
        self._stop.set()
        if not self.held:
            return
        self.held = False
        found = read_lock(self.path)
        if found is not None and found[0].get("run_id") == self.run_id:
            self.path.unlink(missing_ok=True)
