"""What a done marker vouches for, and checking it: files cut short or lost by a crash.

zarr and our own writers write whole files under a temporary name and rename them, so a process
that dies mid-write leaves no half file. A node that crashes can still lose what the operating
system had not yet put on disk: a file renamed into place then reads short, or as zeros, or is
gone. So each batch's marker records the files the batch wrote (its blocks' output chunks and its
side files: faces, statistics) with their size and CRC-32 (:func:`vouch`), and a resumed run
checks them before it trusts the batch (:func:`check_marker`: sizes always, CRC-32 too with
``output.resume_check: content``). A batch whose marker is unreadable or whose files are missing,
short or changed is computed again, and the run says so in one line; it never stops on it.

Chunks shared by blocks of different batches (output chunks larger than a block) are not vouched
for: another batch may write them after this one's marker.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..geometry import Box
from .markers import read_marker_whole

ABSENT = -1  # the size recorded for a chunk the batch left absent (all fill value)


def crc32(path: Path) -> int:
    """CRC-32 of a file's bytes (zlib's, a few GB/s)."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def vouch(root: Path, paths: Iterable[Path]) -> dict[str, list[int]]:
    """``{path: [bytes, crc32]}`` of ``paths`` (relative to ``root`` where inside it); a path that
    does not exist is recorded as absent (``[-1, 0]``)."""
    out = {}
    for p in paths:
        key = os.path.relpath(p, root) if Path(p).resolve().is_relative_to(Path(root).resolve()) else str(p)
        out[key] = [p.stat().st_size, crc32(p)] if p.exists() else [ABSENT, 0]
    return out


def owned_chunks(array: Any, where: Path, boxes: Sequence[Box]) -> list[Path]:
    """The files of the chunks of ``array`` (stored at ``where``) that lie wholly inside one of
    ``boxes``: the chunks those blocks alone write. For a sharded array, every shard ``boxes`` touch:
    its writers take whole shards (see :mod:`pipeline.plan.shards`)."""
    sharded = getattr(array, "shards", None)
    cell = tuple(sharded or array.chunks)
    shape = tuple(array.shape)
    if not boxes:
        return []
    if len(shape) == len(boxes[0].offset) + 1:  # channels first (embeddings): every channel
        boxes = [Box((0, *b.offset), (shape[0], *b.shape)) for b in boxes]
    if len(cell) != len(shape) or len(boxes[0].offset) != len(shape):
        return []
    encode = array.metadata.encode_chunk_key
    out = []
    for box in boxes:
        lo = [o // c if sharded else -(-o // c) for o, c in zip(box.offset, cell, strict=True)]
        hi = [-(-min(o + s, n) // c) if sharded or o + s >= n else (o + s) // c
              for o, s, n, c in zip(box.offset, box.shape, shape, cell, strict=True)]
        if any(h <= low for low, h in zip(lo, hi, strict=True)):
            continue
        for k in range(math.prod(h - low for low, h in zip(lo, hi, strict=True))):
            coords, rest = [], k
            for low, h in zip(reversed(lo), reversed(hi), strict=True):
                coords.append(low + rest % (h - low))
                rest //= h - low
            out.append(where / encode(tuple(reversed(coords))))
    return list(dict.fromkeys(out)) if sharded else out


def check_marker(folder: Path, name: str, root: Path, content: bool) -> str | None:
    """Why the marker ``name`` cannot be trusted (``None``: it can): unreadable, or a file it
    vouches for missing, of another size, or (``content``) of another CRC-32."""
    try:
        _, _, files = read_marker_whole(folder, name)
    except (OSError, ValueError, TypeError) as exc:
        return f"{folder.name}/{name}: unreadable ({type(exc).__name__})"
    for rel, (size, crc) in files.items():
        p = root / rel
        if size == ABSENT:
            continue
        try:
            now = p.stat().st_size
        except FileNotFoundError:
            return f"{rel}: missing"
        if now != size:
            return f"{rel}: {now} of {size} bytes"
        if content and crc32(p) != crc:
            return f"{rel}: changed (CRC-32)"
    return None


# ---------------------------------------------------------------- a finished output's manifest

MANIFEST = "qc/integrity.parquet"
MANIFEST_JSON = "qc/integrity.json"  # where pyarrow is not installed
FINAL_STAGES = ("done_predict", "done_relabel", "done_restore", "done_labels_*",  # markers vouching for files that stay
                "done_timepoints")


def vouched_files(root: Path) -> dict[str, list[int]]:
    """What the markers of the stages whose files outlive the run vouch for (segmentation, label
    image levels), outside ``scratch/``; read before scratch is removed."""
    out: dict[str, list[int]] = {}
    for pattern in FINAL_STAGES:
        for folder in sorted((root / "scratch").glob(pattern)):
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                if not entry.name.endswith(".json") or entry.name.startswith("."):
                    continue
                _, _, files = read_marker_whole(folder, entry.name)
                out.update((k, v) for k, v in files.items() if not k.startswith("scratch/") and v[0] != ABSENT)
    return out


def write_manifest(root: Path, files: dict[str, list[int]]) -> Path:
    """``qc/integrity.parquet``: one row per file of the finished output (path, bytes, crc32);
    ``qc/integrity.json`` where pyarrow is not installed."""
    names = sorted(files)
    cols = {"path": names, "bytes": [files[n][0] for n in names], "crc32": [files[n][1] for n in names]}
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        pa = pq = None
    path = root / (MANIFEST if pq is not None else MANIFEST_JSON)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    if pq is not None:
        pq.write_table(pa.table(cols), tmp)
    else:
        tmp.write_text(json.dumps(cols))
    os.replace(tmp, path)
    return path


def record_manifest(root: Path, tables: Sequence[Path]) -> int:
    """Write the manifest of a finishing output: what its markers vouch for (see
    :func:`vouched_files`) and the ``tables`` that exist (the objects table); how many files.
    The metadata documents of its arrays and groups are copied to :data:`METADATA` (the root's
    once its last attributes are written: :meth:`~pipeline.runtime.store.Store.update_attrs`)."""
    files = {**vouched_files(root), **vouch(root, [t for t in tables if t.exists()])}
    write_manifest(root, files)
    keep_metadata(root, [p for p in metadata_documents(root) if p != root / "zarr.json"])
    return len(files)


# ---------------------------------------------------------------- copies of the metadata documents

METADATA = "qc/metadata"  # a copy of every zarr.json of a finished output, at its path below this folder
DOCUMENTS = ("zarr.json", ".zarray", ".zgroup", ".zattrs")


def metadata_documents(root: Path) -> list[Path]:
    """The output's zarr metadata documents outside ``scratch/`` and ``qc/`` (linked arrays are
    not followed: they are listed where they really are)."""
    out = []
    for folder, dirs, names in os.walk(root):
        if Path(folder) == root:
            dirs[:] = [d for d in dirs if d not in ("scratch", "qc")]
        out += [Path(folder) / n for n in names if n in DOCUMENTS]
    return sorted(out)


def copy_whole(data: bytes, dst: Path) -> None:
    """Write ``data`` to ``dst`` whole or not at all (a temporary name, renamed into place)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, dst)


def keep_metadata(root: Path, docs: Iterable[Path]) -> None:
    """Copy ``docs`` (each whole) below :data:`METADATA`."""
    for doc in docs:
        copy_whole(doc.read_bytes(), root / METADATA / doc.relative_to(root))


def metadata_copies(root: Path) -> list[str]:
    """The metadata documents a copy was kept of (paths relative to ``root``)."""
    base = root / METADATA
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.name in DOCUMENTS) if base.is_dir() else []


def check_metadata(root: Path) -> list[tuple[str, str]]:
    """``(path, why)`` for every metadata document with a copy that is now missing or not JSON (a
    document changed since, e.g. a label image added, is not damaged: it is not compared)."""
    out = []
    for rel in metadata_copies(root):
        try:
            json.loads((root / rel).read_bytes())
        except FileNotFoundError:
            out.append((rel, "missing (metadata)"))
        except (OSError, ValueError) as exc:
            out.append((rel, f"unreadable (metadata: {type(exc).__name__})"))
    return out


def restore_metadata(root: Path, rel: str) -> None:
    """Put the copy of the metadata document ``rel`` back (whole)."""
    copy_whole((root / METADATA / rel).read_bytes(), root / rel)


def read_manifest(root: Path) -> dict[str, list[int]] | None:
    """The manifest of a finished output (None: there is none)."""
    path = root / MANIFEST
    if not path.exists():
        if not (root / MANIFEST_JSON).exists():
            return None
        t = json.loads((root / MANIFEST_JSON).read_text())
    else:
        import pyarrow.parquet as pq

        t = pq.read_table(path).to_pydict()
    return {p: [b, c] for p, b, c in zip(t["path"], t["bytes"], t["crc32"], strict=True)}


def check_files(root: Path, files: dict[str, list[int]], content: bool = True) -> list[tuple[str, str]]:
    """``(path, why)`` for every file of ``files`` that is missing, of another size or (with
    ``content``) of another CRC-32."""
    out = []
    for rel, (size, crc) in sorted(files.items()):
        p = root / rel
        try:
            now = p.stat().st_size
        except FileNotFoundError:
            out.append((rel, "missing"))
            continue
        if now != size:
            out.append((rel, f"{now} of {size} bytes"))
        elif content and crc32(p) != crc:
            out.append((rel, "changed (CRC-32)"))
    return out


def chunk_region(root: Path, rel: str) -> tuple[str, Box] | None:
    """The array (path relative to ``root``) and the region a chunk file holds; None for a file
    that is not an array chunk."""
    import zarr

    parts = Path(rel).parts
    if "c" in parts:  # zarr v3: <array>/c/i/j/k
        k = len(parts) - 1 - parts[::-1].index("c")
        array, coords = Path(*parts[:k]), parts[k + 1:]
    else:  # zarr v2: <array>/i.j.k
        array, coords = Path(*parts[:-1]), tuple(parts[-1].split("."))
    try:
        idx = tuple(int(c) for c in coords)
        arr = zarr.open_array(str(root / array), mode="r")
    except (ValueError, OSError, KeyError, TypeError, zarr.errors.ArrayNotFoundError):  # type: ignore[attr-defined]
        return None
    cell = tuple(getattr(arr, "shards", None) or arr.chunks)
    if len(idx) != len(cell):
        return None
    start = tuple(i * c for i, c in zip(idx, cell, strict=True))
    stop = tuple(min(s + c, n) for s, c, n in zip(start, cell, arr.shape, strict=True))
    return str(array), Box(start, tuple(b - a for a, b in zip(start, stop, strict=True)))
