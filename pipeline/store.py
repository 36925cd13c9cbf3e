"""Where results live: the output group, its arrays and their layouts, done markers per
stage, the resume key, provenance and completion.

::

    result.zarr/                      attrs: resume_key, complete, pipeline (provenance), ome
      segmentation                    (run) global instance labels
      embeddings, foreground          (predict)
      objects.csv                     (run) one row per object
      qc/                             (run) quality record, kept: blocks.npz (per block),
                                      seams/<batch>.npz (per face and pair), seam_audit.json
      scratch/                        removed when the run completes
        done_<stage>/<block>          empty file: the stage finished that block
        fragments                     uint64 fragment ids, block-unique
        face_lab_<axis>               (boundary, side, *plane) fragment ids on both sides of
        face_emb_<axis>               (boundary, side, E, *plane) the evidence    each face

A :class:`Store` is small and picklable: tasks carry it and open arrays through it, once
per process and run. Only the client creates arrays and writes attributes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from .blocks import Block, BlockPlan
from .io import OutputError, create_array, open_array, open_group

if TYPE_CHECKING:
    from .prepare import Prepared

logger = logging.getLogger(__name__)

SCRATCH = "scratch"
QC = "qc"
FRAGMENTS = f"{SCRATCH}/fragments"


@lru_cache(maxsize=64)
def _cached_array(path: str, mode: str, run_id: str) -> Any:
    return open_array(path, mode=mode)


def face_axes(plan: BlockPlan) -> list[int]:
    """Axes along which blocks have neighbours (faces to merge across)."""
    return [a for a, g in enumerate(plan.grid) if g > 1]


def _plane(block: Block, axis: int) -> tuple[slice, ...]:
    return tuple(s for i, s in enumerate(block.valid.to_slices()) if i != axis)


@dataclass(frozen=True)
class Store:
    """The output group of one run (``run_id`` keys the per-process array cache)."""

    path: str
    run_id: str

    # ------------------------------------------------------------ arrays

    def array(self, name: str, mode: str = "r+") -> Any:
        """An array of the group, opened once per process and run."""
        return _cached_array(str(Path(self.path) / name), mode, self.run_id)

    def create(self, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: str) -> None:
        """A new array (replacing a stale one left by a run that stopped before using it)."""
        create_array(open_group(self.path), name, shape, chunks, dtype, overwrite=True)

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

    def create_markers(self, stage: str) -> None:
        self._markers(stage).mkdir(parents=True, exist_ok=True)

    def mark_done(self, stage: str, block: Block) -> None:
        """An empty file per finished block: one metadata operation, no read-modify-write."""
        (self._markers(stage) / str(block.linear)).touch()

    def done(self, stage: str, blocks: int) -> np.ndarray:
        """One bool per block (linear order): finished by this or an earlier run."""
        flags = np.zeros(blocks, dtype=bool)
        finished = [int(e.name) for e in os.scandir(self._markers(stage)) if e.name.isdigit()]
        flags[[i for i in finished if i < blocks]] = True
        return flags

    # ------------------------------------------------------------ faces

    def create_faces(self, plan: BlockPlan, channels: int, dtype: str) -> None:
        for a in face_axes(plan):
            plane = tuple(v for i, v in enumerate(plan.volume) if i != a)
            chunk = tuple(w for i, w in enumerate(plan.write_shape) if i != a)
            boundaries = plan.grid[a] - 1
            self.create(f"{SCRATCH}/face_lab_{a}", (boundaries, 2, *plane), (1, 1, *chunk), "uint64")
            self.create(f"{SCRATCH}/face_emb_{a}", (boundaries, 2, channels, *plane), (1, 1, channels, *chunk), dtype)

    def write_faces(self, plan: BlockPlan, block: Block, labels: np.ndarray, evidence: np.ndarray) -> None:
        """Store the block's outer planes: ``labels`` ``(*valid)``, ``evidence`` ``(E, *valid)``."""
        for a in face_axes(plan):
            i, plane = block.index[a], _plane(block, a)
            # (side, plane position inside the block, boundary): lower face, then upper face
            for side, pos, boundary in ((1, 0, i - 1), (0, -1, i)):
                if 0 <= boundary < plan.grid[a] - 1:
                    self.array(f"{SCRATCH}/face_lab_{a}")[(boundary, side, *plane)] = labels.take(pos, axis=a)
                    self.array(f"{SCRATCH}/face_emb_{a}")[(boundary, side, slice(None), *plane)] = \
                        evidence.take(pos, axis=a + 1)

    def read_face(self, block: Block, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(labels_a, labels_b, evidence_a, evidence_b)`` of the face between ``block`` (side a)
        and its upper neighbour along ``axis`` (side b)."""
        i, plane = block.index[axis], _plane(block, axis)
        lab = self.array(f"{SCRATCH}/face_lab_{axis}", mode="r")
        ev = self.array(f"{SCRATCH}/face_emb_{axis}", mode="r")
        return (lab[(i, 0, *plane)], lab[(i, 1, *plane)],
                ev[(i, 0, slice(None), *plane)], ev[(i, 1, slice(None), *plane)])

    # ------------------------------------------------------------ lifecycle (client only)

    @classmethod
    def open(cls, path: str | Path, overwrite: bool, key: str, run_id: str) -> tuple[Store, bool]:
        """A new output group, or the unfinished one of an earlier identical run (resume).

        Never replaces an existing output without ``overwrite``; refuses to resume output
        made with a different plan, model or parameters."""
        p = Path(path)
        if p.exists() and not overwrite:
            unfinished = unfinished_key(p)
            if unfinished is not None:
                if unfinished != key:
                    raise OutputError(
                        f"output.path '{p}' holds an unfinished run made with a different plan, model or "
                        f"parameters (key {unfinished}, this run {key}); pass --overwrite to start "
                        "again, or rerun with the original config to resume"
                    )
                return cls(str(p), run_id), True
        prepare_output(p, overwrite).attrs.update({"resume_key": key, "complete": False})
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
    to replace; writes nothing."""
    p = Path(path)
    if p.exists() and not overwrite and unfinished_key(p) is None:
        prepare_output(p, overwrite)  # raises: exists


def prepare_output(path: str | Path, overwrite: bool) -> zarr.Group:
    """Create the output group. An existing path is replaced only with ``overwrite``."""
    p = Path(path)
    if p.exists():
        if not overwrite:
            raise OutputError(
                f"output.path '{p}' already exists; choose another path or pass --overwrite "
                "(set output.overwrite: true) to replace it"
            )
        if p.is_dir() and not (p / "zarr.json").exists() and not (p / ".zgroup").exists():
            raise OutputError(f"output.path '{p}' exists and is not a zarr group: refusing to delete it")
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    check_writable(p)
    return zarr.open_group(str(p), mode="w-")


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


def resume_key(run: Prepared, stage: str, params: dict[str, Any]) -> str:
    """Hash of everything that determines a stage's block outputs."""
    c = run.config
    payload = {
        "stage": stage, "plan": run.plan.digest(), "model": run.checkpoint.digest,
        "input": [str(Path(c.input.path).resolve()), c.input.dataset, c.input.scale_level],
        "stats": [run.stats.offset, run.stats.scale], "precision": c.model.precision, "params": params,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def provenance(run: Prepared) -> dict[str, Any]:
    """Config, model, plan, normalisation and library versions of a run."""
    import dask
    import distributed
    import torch

    from . import __version__
    from .prepare import plan_summary

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


def ome_label_metadata(run: Prepared) -> dict[str, Any]:
    """NGFF 0.5 metadata that makes the output group an OME-Zarr label image whose
    single scale level is the ``segmentation`` array, with the input's axes and voxel size."""
    vol = run.volume
    axes = vol.ome["axes"] if vol.ome else [{"name": a, "type": "space"} for a in "zyx"[-vol.ndim:]]
    scale = list(vol.voxel_size) if vol.voxel_size else [1.0] * vol.ndim
    return {
        "version": "0.5",
        "multiscales": [{
            "name": "segmentation",
            "axes": axes,
            "datasets": [{"path": "segmentation",
                          "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
        }],
        "image-label": {"version": "0.5", "source": {"image": str(run.config.input.path)}},
    }
