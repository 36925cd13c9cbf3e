"""Where results live: the output group, its arrays and their layouts, done markers per
stage, the resume key, provenance and completion.

::

    result.zarr/                      attrs: resume_key, resume (what the key is made of),
                                      complete, pipeline (provenance; its label_image: where
                                      the OME-Zarr label image went; unreadable_input)
      lock.json                       while a run writes: its host, pid, run id, start time
                                      (pipeline.runtime.lock); its modification time is refreshed
      segmentation                    (run) global instance labels (dimension_names z, y, x); with a
                                      label image, a symbolic link to its full-resolution level
                                      (written once, see Link)
      labels/<name>/0, 1, ...         (run, output.labels standalone, or auto for a non-OME input)
                                      OME-Zarr 0.5 label image: pyramid of segmentation; labels/
                                      lists it (see pipeline.volume.ome)
      embeddings, foreground          (predict)
      objects/part-<part>.parquet     (run) one row per object, by id range
      objects.csv                     (run) the same rows, for small results
      empty_blocks                    (run) uint8 per block of the grid: 1 = skipped as empty space
      qc/                             (run) quality record, kept: blocks.npz (per block),
                                      seams/<batch>.npz (per face and pair), seam_audit.json,
                                      unreadable.json (input chunks read as empty)
      scratch/                        removed when the run completes
        done_<stage>/<first>-<last>-<count>.json
                                      one file per finished batch (task) of blocks, written
                                      whole once all of them are (labels: done_labels_<level>/,
                                      per task of boxes): line 1 the blocks as [start, count]
                                      runs (not read when the name says they are consecutive);
                                      line 2, for stages that read the input, the blocks'
                                      records (JSON): ``input`` (digest of the data read),
                                      ``stamp`` (sizes and times of the files read),
                                      ``unreadable`` (chunks read as empty), ``sizes`` (voxels
                                      per fragment, min_size); the one place per-block records
                                      live (see :meth:`Store.mark_done`)
        fragments                     uint64 fragment ids, block-unique
        faces/<first>-<last>-<count>  the outer planes that touch a neighbour of every block of
                                      one fragments batch with fragments, raw (face_blob), one
                                      file named after the batch's marker; a block in none: a
                                      skipped or empty block (background on its faces)
        stats/<part>/<first>-<last>-<count>.npy
                                      partial object statistics of id range <part> (rows per
                                      block) of one relabel batch, named by its marker
        segmentation_zoomed           (input.diameter) labels on the resampled grid, before
                                      the restore stage maps them to the input grid

With ``output.labels: image`` (auto for an OME-Zarr input) the label image goes under the
input image instead, ``<image>/labels/<name>/``, in the image's NGFF version.

A :class:`Store` is small and picklable: tasks carry it and open arrays through it, once
per process and run. Only the client creates arrays and writes attributes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from ..plan.blocks import Block, BlockPlan
from ..volume.errors import OutputError
from ..volume.io import create_array, dimension_names, open_array, open_group
from .lock import LOCK, RunLock, check_free

if TYPE_CHECKING:
    from ..plan.prepare import Prepared

logger = logging.getLogger(__name__)

SCRATCH = "scratch"
QC = "qc"
FRAGMENTS = f"{SCRATCH}/fragments"
FACES = f"{SCRATCH}/faces"
STATS = f"{SCRATCH}/stats"
ZOOMED = f"{SCRATCH}/segmentation_zoomed"
OBJECTS = "objects"
EMPTY = "empty_blocks"


@lru_cache(maxsize=64)
def _cached_array(path: str, mode: str, run_id: str) -> Any:
    return open_array(path, mode=mode)


def face_axes(plan: BlockPlan) -> list[int]:
    """Axes along which blocks have neighbours (faces to merge across)."""
    return [a for a, g in enumerate(plan.grid) if g > 1]


def face_layout(plan: BlockPlan, block: Block) -> list[tuple[int, int]]:
    """``(axis, side)`` of the block's planes that touch a neighbour, in file order (side 0:
    its lower plane, 1: its upper plane). A faces file is a header ``[E, float bytes]``
    (int64) and, per plane, its fragment ids (uint64) then its evidence ``(E, *plane)``."""
    return [(a, side) for a in face_axes(plan)
            for side, has in ((0, block.index[a] > 0), (1, block.index[a] < plan.grid[a] - 1)) if has]


MARKER = re.compile(r"(\d+)-(\d+)-(\d+)\.json")


@dataclass(frozen=True)
class Marker:
    """One done-marker file, ``<first>-<last>-<count>.json``: a finished batch of ``count``
    blocks from ``first`` to ``last`` (linear order), consecutive when ``count`` fills the span."""

    name: str
    first: int
    last: int
    count: int

    @property
    def consecutive(self) -> bool:
        return self.last - self.first + 1 == self.count


def marker_name(linears: np.ndarray) -> str:
    """The marker file of the sorted, distinct blocks ``linears`` (distinct batches never share one)."""
    return f"{int(linears[0])}-{int(linears[-1])}-{len(linears)}.json"


def batch_name(linears: Sequence[int]) -> str:
    """The stem of the marker file a batch of blocks gets (its faces and statistics files are
    named after it)."""
    return marker_name(np.sort(np.asarray(linears, dtype=np.int64))).removesuffix(".json")


def face_blob(plan: BlockPlan, block: Block, labels: np.ndarray, evidence: np.ndarray) -> bytes:
    """A block's outer planes that touch a neighbour (see :func:`face_layout`): ``labels``
    ``(*valid)``, ``evidence`` ``(E, *valid)``, as the bytes its batch's faces file holds."""
    parts = [np.array([evidence.shape[0], evidence.dtype.itemsize], np.int64).tobytes()]
    for a, side in face_layout(plan, block):
        pos = 0 if side == 0 else -1
        parts.append(np.ascontiguousarray(labels.take(pos, axis=a), dtype=np.uint64).tobytes())
        parts.append(np.ascontiguousarray(evidence.take(pos, axis=a + 1)).tobytes())
    return b"".join(parts)


class Faces:
    """The faces of blocks, read from their batches' faces files (``files``: the names of the
    fragments stage's marker files that own them, see :meth:`MarkerIndex.files`); a block in
    none of them wrote no faces (found empty as it was read, or skipped)."""

    def __init__(self, folder: Path, files: Sequence[str]) -> None:
        self.data: dict[int, memoryview] = {}
        for name in files:
            path = folder / name.removesuffix(".json")
            if not path.exists():  # every block of the batch was empty
                continue
            raw = memoryview(path.read_bytes())
            n = int(np.frombuffer(raw, np.int64, 1)[0])
            table = np.frombuffer(raw, np.int64, 3 * n, 8).reshape(n, 3)
            for linear, at, size in table.tolist():
                self.data[linear] = raw[at:at + size]

    def has(self, linear: int) -> bool:
        return linear in self.data

    def side(self, plan: BlockPlan, block: Block, axis: int, side: int) -> tuple[np.ndarray, np.ndarray] | None:
        data = self.data.get(block.linear)
        if data is None:  # a block without faces: background on them
            return None
        channels, itemsize = (int(v) for v in np.frombuffer(data, np.int64, 2))
        dtype = np.float32 if itemsize == 4 else np.float64
        at = 16
        for a, s in face_layout(plan, block):
            shape = tuple(w for i, w in enumerate(block.valid.shape) if i != a)
            n = math.prod(shape)
            if (a, s) == (axis, side):
                return (np.frombuffer(data, np.uint64, n, at).reshape(shape),
                        np.frombuffer(data, dtype, channels * n, at + 8 * n).reshape(channels, *shape))
            at += n * (8 + channels * itemsize)
        raise ValueError(f"block {block.index} has no face on side {side} of axis {axis}")

    def face(self, plan: BlockPlan, block: Block, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(labels_a, labels_b, evidence_a, evidence_b)`` of the face between ``block`` (side a,
        its upper plane) and its upper neighbour along ``axis`` (side b, its lower plane)."""
        index = list(block.index)
        index[axis] += 1
        a = self.side(plan, block, axis, 1)
        b = self.side(plan, plan.block(index), axis, 0)
        if a is None or b is None:
            shape = tuple(w for i, w in enumerate(block.valid.shape) if i != axis)
            known = a if a is not None else b
            channels = known[1].shape[0] if known is not None else 1
            blank = (np.zeros(shape, np.uint64), np.zeros((channels, *shape), np.float32))
            a, b = a or blank, b or blank
        return a[0], b[0], a[1], b[1]


def parse_marker(name: str) -> Marker | None:
    """The marker a file name stands for; None for anything else (temporary files, a marker of
    the one-file-per-block layout of earlier versions: ignored, its blocks computed again)."""
    m = MARKER.fullmatch(name)
    return Marker(name, *(int(g) for g in m.groups())) if m else None


def to_ranges(linears: np.ndarray) -> list[list[int]]:
    """Sorted block indices as ``[start, count]`` runs of consecutive blocks."""
    if not len(linears):
        return []
    cut = np.flatnonzero(np.diff(linears) != 1) + 1
    starts, ends = np.r_[0, cut], np.r_[cut, len(linears)]
    return [[int(linears[a]), int(b - a)] for a, b in zip(starts, ends, strict=True)]


def from_ranges(ranges: Sequence[Sequence[int]]) -> np.ndarray:
    parts = [np.arange(s, s + n, dtype=np.int64) for s, n in ranges]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def marked_blocks(folder: Path) -> int:
    """How many blocks the marker files in ``folder`` mark (from their names only)."""
    found = (parse_marker(e.name) for e in os.scandir(folder)) if folder.is_dir() else ()
    return sum(m.count for m in found if m)


@dataclass(frozen=True)
class MarkerIndex:
    """Which marker file holds each finished block: ``owner`` (one int32 per block, -1: not
    finished) indexes ``names``. Client side; tasks get only the names they need."""

    owner: np.ndarray
    names: tuple[str, ...]

    def files(self, linears: Sequence[int]) -> tuple[list[str]]:
        """The marker files holding ``linears`` (as an ``Engine.map`` ``per_batch`` argument)."""
        return ([self.names[k] for k in np.unique(self.owner[np.asarray(linears, dtype=np.int64)]) if k >= 0],)

    def batches(self, linears: Sequence[int], size: int) -> list[list[int]]:
        """``linears`` in batches of whole marker files (no file is shared by two batches, so a
        task may rewrite the files of its batch), about ``size`` blocks each."""
        ids = np.asarray(linears, dtype=np.int64)
        ids = ids[np.argsort(self.owner[ids], kind="stable")]
        out: list[list[int]] = []
        for group in np.split(ids, np.flatnonzero(np.diff(self.owner[ids]) != 0) + 1) if len(ids) else ():
            if out and len(out[-1]) < size:
                out[-1].extend(group.tolist())
            else:
                out.append(group.tolist())
        return out


@dataclass(frozen=True)
class Link:
    """An array of the run written elsewhere, once: ``path``, the array in its own (existing)
    group, with ``dims`` as its dimension names; the output group holds a symbolic link ``name``
    to it, so readers of ``<output>/<name>`` find it. The label image's full-resolution level is
    the ``segmentation`` this way (see :mod:`pipeline.stages.labels`)."""

    name: str
    path: str
    dims: tuple[str, ...]

    def target(self, output: Path) -> str:
        """What the link says: relative inside the output group, absolute elsewhere (the input
        image's ``labels/``), so that moving the output alone keeps it valid."""
        real = Path(self.path).resolve()
        return os.path.relpath(real, output.resolve()) if real.is_relative_to(output.resolve()) else str(real)


def _copy(src: Path, dst: Path) -> None:
    """``dst`` with the bytes of ``src``: a hard link where the filesystem has them, else a copy."""
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def can_link(folder: str | Path) -> bool:
    """Whether ``folder``'s filesystem takes symbolic links (tried with a throwaway link)."""
    probe = Path(folder) / f".pipeline-link-{uuid.uuid4().hex}"
    try:
        os.symlink(".", probe)
        probe.unlink()
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class Store:
    """The output group of one run (``run_id`` keys the per-process array cache; ``links``:
    arrays written elsewhere, see :class:`Link`)."""

    path: str
    run_id: str
    links: tuple[Link, ...] = ()

    # ------------------------------------------------------------ arrays

    def link(self, name: str) -> Link | None:
        return next((k for k in self.links if k.name == name), None)

    def where(self, name: str) -> Path:
        """Where the array ``name`` is written: the output group, or its link's target."""
        found = self.link(name)
        return Path(found.path) if found else Path(self.path) / name

    def array(self, name: str, mode: str = "r+") -> Any:
        """An array of the group, opened once per process and run."""
        return _cached_array(str(self.where(name)), mode, self.run_id)

    def create(self, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: str, channels: bool = False) -> None:
        """A new array (replacing a stale one left by a run that stopped before using it), with
        its ``dimension_names`` (``zyx``, ``c`` first with ``channels``). A linked array is
        created at its target, and the link in the output group made (again)."""
        found = self.link(name)
        if found is None:
            dims = dimension_names(len(shape) - channels, channels)
            create_array(open_group(self.path), name, shape, chunks, dtype, overwrite=True, dims=dims)
            return
        real = Path(found.path)
        create_array(open_group(real.parent), real.name, shape, chunks, dtype, overwrite=True, dims=found.dims)
        at = Path(self.path) / name
        if at.is_symlink() or at.is_file():
            at.unlink()
        elif at.exists():  # an unlinked copy left by an earlier layout of this output
            shutil.rmtree(at)
        os.symlink(found.target(Path(self.path)), at)

    def qc_path(self, name: str) -> Path:
        """A file of the run's quality record, ``qc/<name>`` (kept when the run finishes)."""
        path = Path(self.path) / QC / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    # ------------------------------------------------------------ done markers

    def _markers(self, stage: str) -> Path:
        return Path(self.path) / SCRATCH / f"done_{stage}"

    def has_markers(self, stage: str) -> bool:
        """Whether ``stage`` has started on this output (its marker folder exists)."""
        return self._markers(stage).is_dir()

    def clear_markers(self, stage: str) -> None:
        """Forget which blocks ``stage`` finished (what they wrote is being replaced)."""
        shutil.rmtree(self._markers(stage), ignore_errors=True)

    def clear_markers_of(self, prefix: str) -> None:
        """Forget every stage whose name starts with ``prefix`` (e.g. each label level's)."""
        for found in (Path(self.path) / SCRATCH).glob(f"done_{prefix}*"):
            shutil.rmtree(found, ignore_errors=True)

    def create_markers(self, stage: str) -> None:
        self._markers(stage).mkdir(parents=True, exist_ok=True)

    def mark_done(self, stage: str, linears: Sequence[int], records: Sequence[dict[str, Any] | None] | None = None) -> str:
        """Mark a finished batch of blocks: one file (see :func:`marker_name`), written whole (a
        temporary file renamed) once every block of the batch is written, holding the blocks and,
        for stages that read the input, their records (JSON). Marking the same blocks again
        replaces the file (new records). Returns the file's name."""
        order = np.argsort(np.asarray(linears, dtype=np.int64), kind="stable")
        ids = np.asarray(linears, dtype=np.int64)[order]
        text = json.dumps(to_ranges(ids))
        if records is not None:
            text += "\n" + json.dumps([records[i] for i in order])
        name = marker_name(ids)
        path = self._markers(stage) / name
        tmp = path.with_name(f".{name}.{uuid.uuid4().hex}")
        try:
            tmp.write_text(text)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return name

    def read_marker(self, stage: str, name: str) -> tuple[np.ndarray, list[dict[str, Any] | None] | None]:
        """The blocks of one marker file and their records (None: a stage without records)."""
        lines = (self._markers(stage) / name).read_text().split("\n", 1)
        return from_ranges(json.loads(lines[0])), json.loads(lines[1]) if len(lines) > 1 else None

    def _marker_blocks(self, stage: str, marker: Marker) -> np.ndarray:
        if marker.consecutive:  # the name says it all: no read
            return np.arange(marker.first, marker.last + 1, dtype=np.int64)
        with open(self._markers(stage) / marker.name) as f:
            return from_ranges(json.loads(f.readline()))

    def index(self, stage: str, blocks: int) -> MarkerIndex:
        """Which marker file holds each finished block (one listing; only files of blocks that
        are not consecutive are read)."""
        folder = self._markers(stage)
        found = [m for e in (os.scandir(folder) if folder.is_dir() else ()) if (m := parse_marker(e.name))]
        owner = np.full(blocks, -1, dtype=np.int32)
        for k, m in enumerate(found):
            ids = self._marker_blocks(stage, m)
            owner[ids[ids < blocks]] = k
        return MarkerIndex(owner, tuple(m.name for m in found))

    def done(self, stage: str, blocks: int) -> np.ndarray:
        """One bool per block (linear order): finished by this or an earlier run."""
        return self.index(stage, blocks).owner >= 0

    def records(self, stage: str, linears: Sequence[int], files: Sequence[str]) -> dict[int, dict[str, Any]]:
        """The records of finished blocks (``{}`` for a block without one), read from the marker
        ``files`` that hold them (see :meth:`MarkerIndex.files`)."""
        want = {int(i) for i in linears}
        out: dict[int, dict[str, Any]] = {}
        for name in files:
            ids, recs = self.read_marker(stage, name)
            for k, i in enumerate(ids.tolist()):
                if i in want:
                    out[i] = (recs[k] if recs is not None else None) or {}
        missing = want - set(out)
        if missing:
            raise FileNotFoundError(f"no done marker of {stage} holds blocks {sorted(missing)[:5]}")
        return out

    def forget(self, stage: str, linears: Sequence[int], follow: str | None = None) -> None:
        """Unmark finished blocks (they are computed again); client only. A marker file holding
        some of them is removed, then written again without them under its new name: a stop in
        between forgets the rest of its blocks too (they are computed again), never less. The file
        named after the batch in the folder ``follow`` (the faces) is copied to the new name before
        the marker moves (a marker never lacks its file) and removed after."""
        if not len(linears):
            return
        gone = np.asarray(sorted({int(i) for i in linears}), dtype=np.int64)
        index = self.index(stage, int(gone[-1]) + 1)
        for k in np.unique(index.owner[gone]):
            if k < 0:
                continue
            name = index.names[k]
            ids, recs = self.read_marker(stage, name)
            keep = ~np.isin(ids, gone)
            old = Path(self.path) / follow / name.removesuffix(".json") if follow else None
            if old is not None and old.exists() and keep.any():
                _copy(old, old.with_name(batch_name(ids[keep])))
            (self._markers(stage) / name).unlink()
            if keep.any():
                self.mark_done(stage, ids[keep], None if recs is None else [r for r, x in zip(recs, keep) if x])
            if old is not None:
                old.unlink(missing_ok=True)

    # ------------------------------------------------------------ faces

    def create_faces(self) -> None:
        (Path(self.path) / FACES).mkdir(parents=True, exist_ok=True)

    def write_faces(self, linears: Sequence[int], blobs: dict[int, bytes]) -> None:
        """The faces of a batch of blocks (``blobs``, see :func:`face_blob`; blocks without faces
        left out) in one file named after the batch's marker (:func:`batch_name`), written whole
        before the batch is marked done: a header ``[n]``, ``n`` rows ``[block, offset, bytes]``
        (int64), the blobs."""
        if not blobs:
            return
        order = sorted(blobs)
        at, table = 8 + 24 * len(order), []
        for linear in order:
            table.append((linear, at, len(blobs[linear])))
            at += len(blobs[linear])
        head = np.array([len(order)], np.int64).tobytes() + np.array(table, np.int64).tobytes()
        path = Path(self.path) / FACES / batch_name(linears)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as f:
                f.write(head)
                for linear in order:
                    f.write(blobs[linear])
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def faces(self, files: Sequence[str]) -> Faces:
        """The faces held by the batches ``files`` (marker file names of the fragments stage)."""
        return Faces(Path(self.path) / FACES, files)

    # ------------------------------------------------------------ per-block records

    def fragment_sizes(self, stage: str, counts: np.ndarray) -> np.ndarray:
        """Voxel counts of every fragment in id order (blocks in linear order, local ids 1..k),
        from the ``sizes`` the blocks' records hold (``min_size``): one read per marker file."""
        found: dict[int, list[int]] = {}
        folder = self._markers(stage)
        for marker in (m for e in os.scandir(folder) if (m := parse_marker(e.name))):
            ids, records = self.read_marker(stage, marker.name)
            found.update((i, r["sizes"]) for i, r in zip(ids.tolist(), records or (), strict=False) if r and "sizes" in r)
        parts = [np.zeros(0, np.int64)]
        for b in np.flatnonzero(counts).tolist():
            if len(found.get(b, ())) != counts[b]:
                raise FileNotFoundError(f"the done marker of block {b} ({stage}) holds no sizes of its {counts[b]} fragments")
            parts.append(np.asarray(found[b], np.int64))
        return np.concatenate(parts)

    def write_stats(self, part: int, name: str, rows: np.ndarray) -> None:
        """Partial object statistics (a structured array) of id range ``part``."""
        folder = Path(self.path) / STATS / str(part)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"{name}.npy", rows, allow_pickle=False)

    def prune_stats(self, keep: set[str]) -> None:
        """Remove the partial statistics files not named in ``keep`` (batches never marked done,
        and files of the one-file-per-block layout of earlier versions)."""
        root = Path(self.path) / STATS
        for folder in (e for e in os.scandir(root) if e.is_dir()) if root.is_dir() else ():
            for f in os.scandir(folder.path):
                if f.name.endswith(".npy") and f.name.removesuffix(".npy") not in keep:
                    os.unlink(f.path)

    def clear_stats(self) -> None:
        """Forget every partial object statistic (relabel writes them all again)."""
        shutil.rmtree(Path(self.path) / STATS, ignore_errors=True)

    def read_stats(self, part: int) -> list[np.ndarray]:
        folder = Path(self.path) / STATS / str(part)
        return [np.load(f, allow_pickle=False) for f in sorted(folder.glob("*.npy"))] if folder.is_dir() else []

    def write_empty(self, plan: BlockPlan, empty: np.ndarray) -> None:
        """``empty_blocks``: one uint8 per block of the grid, 1 where it was skipped as empty space."""
        create_array(open_group(self.path), EMPTY, plan.grid, plan.grid, "uint8", overwrite=True,
                     dims=dimension_names(plan.ndim))[...] = \
            empty.reshape(plan.grid).astype(np.uint8)

    # ------------------------------------------------------------ lifecycle (client only)

    @classmethod
    def open(cls, path: str | Path, overwrite: bool, parts: dict[str, Any] | str, run_id: str,
             lock: RunLock | None = None) -> tuple[Store, bool]:
        """A new output group, or the unfinished one of an earlier identical run (resume).

        ``parts`` (see :func:`resume_parts`) is everything that determines block outputs; ``lock``
        is taken before anything is written or deleted. Never replaces an existing output without
        ``overwrite``; refuses to resume output made with another plan, model, input statistics or
        parameters, naming what differs."""
        p = Path(path)
        parts = parts if isinstance(parts, dict) else {"key": parts}
        key = resume_hash(parts)
        if p.exists() and not overwrite:
            unfinished = unfinished_key(p)
            if unfinished is not None:
                if lock is not None:
                    lock.acquire()
                if unfinished != key:
                    if lock is not None:
                        lock.release()
                    raise OutputError(
                        f"output.path '{p}' holds an unfinished run made with other settings "
                        f"({changes(open_group(p, mode='r').attrs.get('resume'), parts)}); rerun with the original "
                        "settings to resume, or pass --overwrite to start again")
                return cls(str(p), run_id), True
        prepare_output(p, overwrite, lock).attrs.update({"resume_key": key, "resume": parts, "complete": False})
        return cls(str(p), run_id), False

    def update_attrs(self, attrs: dict[str, Any]) -> None:
        open_group(self.path).attrs.update(attrs)

    def attrs(self) -> dict[str, Any]:
        return dict(open_group(self.path, mode="r").attrs)

    def finish(self, attrs: dict[str, Any]) -> None:
        """Record the final attributes, mark the output complete, drop the scratch arrays."""
        self.update_attrs({**attrs, "complete": True})
        shutil.rmtree(Path(self.path) / SCRATCH, ignore_errors=True)


def unfinished_key(path: Path) -> str | None:
    """The resume key of the unfinished run at ``path``, or None (finished, or not ours)."""
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


def resume_parts(run: Prepared, stage: str, params: dict[str, Any]) -> dict[str, Any]:
    """Everything that determines a stage's block outputs, by name (recorded in the output's
    ``resume`` attribute; a resumed run must match it). The input's content is checked per
    block (records with the done markers), its identity and intensity statistics here."""
    c = run.config
    e = c.empty
    return {
        "stage": stage,
        "plan": {"volume": list(run.plan.volume), "write_shape": list(run.plan.write_shape),
                 "context": list(run.plan.context), "step": list(run.plan.step)},
        "model": {"checkpoint": str(c.model.checkpoint), "digest": run.checkpoint.digest},
        "input": {"path": str(Path(c.input.path).resolve()), "dataset": c.input.dataset,
                  "scale_level": c.input.scale_level, "channel": c.input.channel, "dtype": str(run.volume.dtype)},
        "normalisation": {"offset": run.stats.offset, "scale": run.stats.scale},
        "precision": c.model.precision,
        "zoom": list(run.zoom) if run.zoom else None,
        "empty": {"skip": e.skip, "threshold": e.threshold, "level": e.level,
                  "mask": str(Path(e.mask.path).resolve()) if e.mask else None,
                  "mask_dataset": e.mask.dataset if e.mask else None},
        "params": params,
    }


def resume_hash(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def resume_key(run: Prepared, stage: str, params: dict[str, Any]) -> str:
    """Hash of :func:`resume_parts`."""
    return resume_hash(resume_parts(run, stage, params))


NAMES = {"plan": "blocks", "model": "model.checkpoint", "input": "input", "precision": "model.precision",
         "zoom": "input.diameter (zoom)", "empty": "empty", "params": "clustering/merge parameters",
         "stage": "command (run or predict)"}


def changes(recorded: Any, parts: dict[str, Any]) -> str:
    """What differs between the recorded resume parts and this run's, in words."""
    recorded = json.loads(json.dumps(recorded, default=str)) if isinstance(recorded, dict) else None
    parts = json.loads(json.dumps(parts, default=str))
    if recorded is None or set(recorded) != set(parts):
        return "made by another version of the pipeline"
    out = []
    for name in parts:
        old, new = recorded[name], parts[name]
        if old == new:
            continue
        if name == "normalisation":
            out.append(f"the input's intensity statistics (normalisation offset {old['offset']:.6g} -> "
                       f"{new['offset']:.6g}, scale {old['scale']:.6g} -> {new['scale']:.6g}): the input changed")
        elif name == "model" and old["checkpoint"] == new["checkpoint"]:
            out.append(f"model.checkpoint '{new['checkpoint']}' changed (digest {old['digest']} -> {new['digest']})")
        elif isinstance(old, dict) and isinstance(new, dict):
            diff = [f"{k} {old.get(k)} -> {new.get(k)}" for k in new if old.get(k) != new.get(k)]
            out.append(f"{NAMES.get(name, name)}: {', '.join(diff)}")
        else:
            out.append(f"{NAMES.get(name, name)} {old} -> {new}")
    return "; ".join(out) or "unknown"


def provenance(run: Prepared) -> dict[str, Any]:
    """Config, model, plan, normalisation and library versions of a run."""
    import dask
    import distributed
    import torch

    from .. import __version__
    from ..plan.prepare import plan_summary

    return {
        "pipeline_version": __version__,
        "config": run.config.model_dump(mode="json"),
        "model_digest": run.checkpoint.digest,
        "model_spec": run.spec.model_dump(mode="json"),
        "plan": plan_summary(run),
        "normalisation": {"offset": run.stats.offset, "scale": run.stats.scale},
        "versions": {
            "numpy": np.__version__, "torch": torch.__version__, "dask": dask.__version__,
            "distributed": distributed.__version__, "zarr": zarr.__version__,
        },
    }
