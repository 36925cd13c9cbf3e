"""Done markers: one file per finished batch of blocks, ``<first>-<last>-<count>.json``, written
whole once every block of the batch is written (see :class:`pipeline.runtime.store.Store`, whose
``done_<stage>/`` folders hold them). Line 1 lists the blocks as ``[start, count]`` runs (not read
when the name says they are consecutive); line 2, for stages that read the input, the blocks'
records (JSON). Pure functions of a folder: no Dask, no zarr."""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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




def write_marker(folder: Path, linears: Sequence[int], records: Sequence[dict[str, Any] | None] | None = None,
                 files: dict[str, list[int]] | None = None) -> str:
    """Mark a finished batch of blocks: one file (see :func:`marker_name`), written whole (a
    temporary file renamed) once every block of the batch is written, holding the blocks and,
    for stages that read the input, their records (JSON); line 3, ``files``: what the marker
    vouches for, ``{path: [bytes, crc32]}`` of the files the batch wrote (see
    :mod:`pipeline.runtime.integrity`). Marking the same blocks again replaces the file (new
    records). Returns the file's name."""
    order = np.argsort(np.asarray(linears, dtype=np.int64), kind="stable")
    ids = np.asarray(linears, dtype=np.int64)[order]
    text = json.dumps(to_ranges(ids))
    if records is not None or files:
        text += "\n" + json.dumps(None if records is None else [records[i] for i in order])
    if files:
        text += "\n" + json.dumps(files)
    name = marker_name(ids)
    path = folder / name
    tmp = path.with_name(f".{name}.{uuid.uuid4().hex}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return name


def read_marker(folder: Path, name: str) -> tuple[np.ndarray, list[dict[str, Any] | None] | None]:
    """The blocks of one marker file and their records (None: a stage without records)."""
    ids, records, _ = read_marker_whole(folder, name)
    return ids, records


def read_marker_whole(folder: Path, name: str) -> tuple[np.ndarray, list[dict[str, Any] | None] | None,
                                                        dict[str, list[int]]]:
    """The blocks of one marker file, their records and the files it vouches for ({}: none);
    ValueError for a file cut short or otherwise not what :func:`write_marker` writes."""
    lines = (folder / name).read_text().split("\n", 2)
    ids = from_ranges(json.loads(lines[0]))
    records = json.loads(lines[1]) if len(lines) > 1 else None
    files = json.loads(lines[2]) if len(lines) > 2 else {}
    if (records is not None and (not isinstance(records, list) or len(records) != len(ids))) \
            or not isinstance(files, dict):
        raise ValueError(f"marker {name} holds {len(ids)} blocks but not as many records")
    return ids, records, files


def _marker_blocks(folder: Path, marker: Marker) -> np.ndarray:
    """The blocks of ``marker``; none, and the file removed, when its first line is cut short (a
    crash took what was not yet on disk: its blocks are computed again)."""
    if marker.consecutive:  # the name says it all: no read
        return np.arange(marker.first, marker.last + 1, dtype=np.int64)
    try:
        with open(folder / marker.name) as f:
            ids = from_ranges(json.loads(f.readline()))
        if len(ids) == marker.count:
            return ids
    except (ValueError, TypeError):
        pass
    (folder / marker.name).unlink(missing_ok=True)
    return np.zeros(0, np.int64)


def marker_index(folder: Path, blocks: int) -> MarkerIndex:
    """Which marker file holds each finished block (one listing; only files of blocks that
    are not consecutive are read)."""
    found = [m for e in (os.scandir(folder) if folder.is_dir() else ()) if (m := parse_marker(e.name))]
    owner = np.full(blocks, -1, dtype=np.int32)
    names: list[str] = []
    for m in found:
        ids = _marker_blocks(folder, m)
        if len(ids):
            owner[ids[ids < blocks]] = len(names)
            names.append(m.name)
    return MarkerIndex(owner, tuple(names))


def marker_records(folder: Path, linears: Sequence[int], files: Sequence[str]) -> dict[int, dict[str, Any]]:
    """The records of finished blocks (``{}`` for a block without one), read from the marker
    ``files`` that hold them (see :meth:`MarkerIndex.files`)."""
    want = {int(i) for i in linears}
    out: dict[int, dict[str, Any]] = {}
    for name in files:
        ids, recs = read_marker(folder, name)
        for k, i in enumerate(ids.tolist()):
            if i in want:
                out[i] = (recs[k] if recs is not None else None) or {}
    missing = want - set(out)
    if missing:
        raise FileNotFoundError(f"no done marker of {folder.name.removeprefix('done_')} holds blocks {sorted(missing)[:5]}")
    return out


def _copy(src: Path, dst: Path) -> None:
    """``dst`` with the bytes of ``src``: a hard link where the filesystem has them, else a copy."""
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)




def forget_blocks(folder: Path, linears: Sequence[int], follow: Path | None = None) -> None:
    """Unmark finished blocks (they are computed again); client only. A marker file holding
    some of them is removed, then written again without them under its new name: a stop in
    between forgets the rest of its blocks too (they are computed again), never less. The file
    named after the batch in the folder ``follow`` (the faces) is copied to the new name before
    the marker moves (a marker never lacks its file) and removed after."""
    if not len(linears):
        return
    gone = np.asarray(sorted({int(i) for i in linears}), dtype=np.int64)
    index = marker_index(folder, int(gone[-1]) + 1)
    for k in np.unique(index.owner[gone]):
        if k < 0:
            continue
        name = index.names[k]
        ids, recs = read_marker(folder, name)
        keep = ~np.isin(ids, gone)
        old = follow / name.removesuffix(".json") if follow else None
        if old is not None and old.exists() and keep.any():
            _copy(old, old.with_name(batch_name(ids[keep])))
        (folder / name).unlink()
        if keep.any():
            write_marker(folder, ids[keep], None if recs is None else [r for r, x in zip(recs, keep) if x])
        if old is not None:
            old.unlink(missing_ok=True)


def fragment_sizes(folder: Path, counts: np.ndarray) -> np.ndarray:
    """Voxel counts of every fragment in id order (blocks in linear order, local ids 1..k),
    from the ``sizes`` the blocks' records hold (``min_size``): one read per marker file."""
    found: dict[int, list[int]] = {}
    for marker in (m for e in os.scandir(folder) if (m := parse_marker(e.name))):
        ids, records = read_marker(folder, marker.name)
        found.update((i, r["sizes"]) for i, r in zip(ids.tolist(), records or (), strict=False) if r and "sizes" in r)
    parts = [np.zeros(0, np.int64)]
    stage = folder.name.removeprefix("done_")
    for b in np.flatnonzero(counts).tolist():
        if len(found.get(b, ())) != counts[b]:
            raise FileNotFoundError(f"the done marker of block {b} ({stage}) holds no sizes of its {counts[b]} fragments")
        parts.append(np.asarray(found[b], np.int64))
    return np.concatenate(parts)
