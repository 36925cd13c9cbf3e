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
                                      unreadable.json; integrity manifest, metadata/ (zarr.json copies)
      scratch/                        removed when the run completes
        done_<stage>/<first>-<last>-<count>.json
                                      one file per finished batch (task) of blocks (labels:
                                      done_labels_<level>/, per task of boxes), with the blocks'
                                      records: input digest and stamp, unreadable chunks,
                                      fragment sizes (see pipeline.runtime.markers)
        fragments                     block-local fragment ids 1..k (ids.fragment_dtype: uint32 usually)
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

import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..plan.blocks import BlockPlan
from ..volume.errors import OutputError
from ..volume.io import create_array, dimension_names, open_array, open_group
from . import markers
from .faces import Faces, write_faces
from .integrity import MANIFEST, check_marker, keep_metadata, record_manifest, vouch
from .links import Link
from .lock import RunLock
from .output import keep_group_copy, prepare_output, unfinished_key
from .resume import changes, resume_hash

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

    def create(self, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: str, channels: bool = False,
               shards: tuple[int, ...] | None = None) -> None:
        """A new array (replacing a stale one left by a run that stopped before using it), with
        its ``dimension_names`` (``zyx``, ``c`` first with ``channels``), sharded with ``shards`` (zarr v3
        only). A linked array is created at its target, and the link in the output group made (again)."""
        found = self.link(name)
        group, at_name = (open_group(Path(found.path).parent), Path(found.path).name) if found else (open_group(self.path), name)
        create_array(group, at_name, shape, chunks, dtype, overwrite=True, shards=shards,
                     dims=found.dims if found else dimension_names(len(shape) - channels, channels))
        if found is None:
            return
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

    def mark_done(self, stage: str, linears: Sequence[int], records: Sequence[dict[str, Any] | None] | None = None,
                  files: Sequence[Path] | dict[str, list[int]] = ()) -> str:
        """Mark a finished batch of blocks (see :func:`pipeline.runtime.markers.write_marker`), vouching for
        the ``files`` it wrote (:func:`pipeline.runtime.integrity.vouch`, or vouched already); the file's name."""
        return markers.write_marker(self._markers(stage), linears, records, (
            files if isinstance(files, dict) else vouch(Path(self.path), files)) if files else None)

    def check_marker(self, stage: str, name: str, content: bool) -> str | None:
        """Why a marker of ``stage`` cannot be trusted, or None (see :func:`pipeline.runtime.integrity.check_marker`)."""
        return check_marker(self._markers(stage), name, Path(self.path), content)

    def drop_markers(self, stage: str, names: Sequence[str]) -> None:
        """Remove marker files (their batches are computed again) without reading them."""
        for name in names:
            (self._markers(stage) / name).unlink(missing_ok=True)

    def read_marker(self, stage: str, name: str) -> tuple[np.ndarray, list[dict[str, Any] | None] | None]:
        """The blocks of one marker file and their records (None: a stage without records)."""
        return markers.read_marker(self._markers(stage), name)

    def index(self, stage: str, blocks: int) -> markers.MarkerIndex:
        """Which marker file holds each finished block (see :func:`pipeline.runtime.markers.marker_index`)."""
        return markers.marker_index(self._markers(stage), blocks)

    def done(self, stage: str, blocks: int) -> np.ndarray:
        """One bool per block (linear order): finished by this or an earlier run."""
        return self.index(stage, blocks).owner >= 0

    def records(self, stage: str, linears: Sequence[int], files: Sequence[str]) -> dict[int, dict[str, Any]]:
        """The records of finished blocks, from the marker ``files`` that hold them."""
        return markers.marker_records(self._markers(stage), linears, files)

    def forget(self, stage: str, linears: Sequence[int], follow: str | None = None) -> None:
        """Unmark finished blocks (they are computed again), moving the files named after their
        batches in ``follow`` along (see :func:`pipeline.runtime.markers.forget_blocks`); client only."""
        markers.forget_blocks(self._markers(stage), linears, Path(self.path) / follow if follow else None)

    # ------------------------------------------------------------ faces

    def create_faces(self) -> None:
        (Path(self.path) / FACES).mkdir(parents=True, exist_ok=True)

    def write_faces(self, linears: Sequence[int], blobs: dict[int, bytes]) -> None:
        """The faces of a batch of blocks, one file (see :func:`pipeline.runtime.faces.write_faces`)."""
        write_faces(Path(self.path) / FACES, linears, blobs)

    def faces(self, files: Sequence[str]) -> Faces:
        """The faces held by the batches ``files`` (marker file names of the fragments stage)."""
        return Faces(Path(self.path) / FACES, files)

    # ------------------------------------------------------------ per-block records

    def fragment_sizes(self, stage: str, counts: np.ndarray) -> np.ndarray:
        """Voxel counts of every fragment in id order, from the blocks' records (``min_size``)."""
        return markers.fragment_sizes(self._markers(stage), counts)

    def write_stats(self, part: int, name: str, rows: np.ndarray) -> None:
        """Partial object statistics (a structured array) of id range ``part``."""
        folder = Path(self.path) / STATS / str(part)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.npy"
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        try:  # whole or not at all
            with open(tmp, "wb") as f:
                np.save(f, rows, allow_pickle=False)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def stats_files(self, name: str) -> list[Path]:
        """The partial statistics files of the batch ``name`` (every id range it wrote)."""
        root = Path(self.path) / STATS
        return sorted(root.glob(f"*/{name}.npy")) if root.is_dir() else []

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
        keep_group_copy(p)
        return cls(str(p), run_id), False

    def update_attrs(self, attrs: dict[str, Any]) -> None:
        open_group(self.path).attrs.update(attrs)
        root = Path(self.path)  # a copy to put back if a crash cuts zarr.json short (finished: run --repair)
        keep_metadata(root, [root / "zarr.json"]) if attrs.get("complete") else keep_group_copy(root)

    def attrs(self) -> dict[str, Any]:
        return dict(open_group(self.path, mode="r").attrs)

    def finish(self, attrs: dict[str, Any]) -> None:
        """Record the integrity manifest (every file the markers vouch for that stays, and the
        objects table) and the final attributes, mark the output complete, drop the scratch arrays."""
        root = Path(self.path)
        files = record_manifest(root, [*sorted((root / OBJECTS).glob("part-*")), root / "objects.csv"])
        self.update_attrs({**attrs, "manifest": {"path": MANIFEST, "files": files}, "complete": True})
        shutil.rmtree(root / SCRATCH, ignore_errors=True)
