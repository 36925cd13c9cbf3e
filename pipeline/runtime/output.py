"""The output group before a run writes: whether it may be created or replaced, whether an
unfinished run's output is there to resume (its resume key), and whether its folder is writable.
Checked before a cluster starts; :meth:`pipeline.runtime.store.Store.open` creates it."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import zarr

from ..volume.errors import OutputError
from ..volume.io import open_group
from .integrity import METADATA, copy_whole
from .lock import LOCK, RunLock, check_free

logger = logging.getLogger(__name__)


GROUP_COPY = "scratch/group.json"  # the output group's metadata as last written, while a run is unfinished
FINISHED_COPY = f"{METADATA}/zarr.json"  # ... and once it finished


def keep_group_copy(path: Path) -> None:
    """Copy the group's ``zarr.json`` to :data:`GROUP_COPY` (whole, renamed into place)."""
    src = path / "zarr.json"
    if src.exists():
        copy_whole(src.read_bytes(), path / GROUP_COPY)


def restore_group(path: Path) -> bool:
    """An output whose ``zarr.json`` a crash cut short: put back the copy kept in scratch (an
    unfinished run's, see :func:`keep_group_copy`) or in ``qc/metadata`` (a finished one's). Whether it did."""
    meta = path / "zarr.json"
    try:
        json.loads(meta.read_text())
        return False
    except (OSError, ValueError):
        pass
    for copy in (path / GROUP_COPY, path / FINISHED_COPY):
        try:
            saved = copy.read_bytes()
            json.loads(saved)
        except (OSError, ValueError):
            continue
        copy_whole(saved, meta)
        logger.warning("output '%s': its group metadata (zarr.json) was unreadable; put back the copy kept in %s",
                       path, copy.relative_to(path))
        return True
    return False


def unfinished_key(path: Path) -> str | None:
    """The resume key of the unfinished run at ``path``, or None (finished, or not ours)."""
    if path.is_dir():
        restore_group(path)
    try:
        attrs = dict(open_group(path, mode="r").attrs)
    except Exception:  # noqa: BLE001 - not a zarr group: prepare_output says so
        return None
    return str(attrs["resume_key"]) if attrs.get("complete") is False and "resume_key" in attrs else None


def check_output(path: str | Path, overwrite: bool) -> None:
    """Fail early (before a cluster starts) on an output that :meth:`Store.open` would refuse
    to replace, or that another run is writing; writes nothing."""
    p = Path(path)
    if p.exists() and not overwrite and unfinished_key(p) is None:
        prepare_output(p, overwrite)  # raises: exists
    if p.is_dir():
        check_free(p)
    if not p.exists():  # its nearest existing folder must take new entries (nothing is created here)
        base = next((a for a in p.absolute().parents if a.exists()), Path("/"))
        if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
            raise OutputError(f"output.path '{p}' is not writable ('{base}' is "
                              f"{'not a folder' if not base.is_dir() else 'read-only'}); choose a writable location")


def prepare_output(path: str | Path, overwrite: bool, lock: RunLock | None = None) -> zarr.Group:
    """Create the output group. An existing path is replaced only with ``overwrite`` (and only
    a zarr group); ``lock`` is taken in the folder before anything in it is deleted."""
    p = Path(path)
    if p.exists():
        if not overwrite:
            raise OutputError(
                f"output.path '{p}' already exists; choose another path or pass --overwrite "
                "(set output.overwrite: true) to replace it"
            )
        if p.is_dir() and not (p / "zarr.json").exists() and not (p / ".zgroup").exists():
            raise OutputError(f"output.path '{p}' exists and is not a zarr group: refusing to delete it")
        if not p.is_dir():
            p.unlink()
    check_writable(p)
    p.mkdir(exist_ok=True)
    if lock is not None:
        lock.acquire()
    for entry in p.iterdir():  # what an earlier output left (overwrite), the lock apart
        if entry.name != LOCK:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    return zarr.open_group(str(p), mode="a")


def check_writable(path: Path) -> None:
    """Raise :class:`OutputError` unless ``path``'s folder can be created and written."""
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".pipeline-write-test-{path.name}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"output.path '{path}' is not writable ({exc.strerror}); choose a writable location") from None


