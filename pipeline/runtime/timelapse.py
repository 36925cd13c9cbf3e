"""Time-lapses: every time point of a (t, z, y, x) input segmented on its own, in one run on one
cluster, into one (t, z, y, x) label image.

::

    result.zarr/                      attrs: pipeline (timepoints: the input's time point of each t,
                                      objects per time point, label_image), resume key, complete
      timepoints/t<t>/                the run of time point t (index in input.timepoints), a whole
                                      output group of its own (segmentation, its label image,
                                      objects, qc): resumed, verified and repaired like any run
      segmentation                    (t, z, y, x): a symbolic link to the label image's
                                      full-resolution level (output.labels: none: the array itself)
      labels/<name>/0, 1, ...         the (t, z, y, x) OME-Zarr label image (or under the input
                                      image, output.labels: image)
      objects/part-<t>-<part>.parquet the time points' objects tables with columns t (index in the
                                      label image) and timepoint (the input's), ids unique per t
      objects.csv                     the same rows, for small results
      foreground, contours            (output.tracker_maps) uint8 (t, z, y, x), see pipeline.stages.tracker

Each time point is a run of ``input.timepoint: k`` into ``timepoints/t<t>`` (the same plan, the
same normalisation rule applied to that time point's own intensities, ``input.diameter: auto``'s
zoom measured on the first and kept, its own resume key): so a
time point of a time-lapse equals a run on that time point alone, and a run interrupted anywhere
resumes at the time point it stopped in, inside it at the block. The finished time point's label
arrays become time point t of the stacks by hard links (:mod:`pipeline.runtime.stack`): the
time-lapse takes the space of its time points once. Time points run one after the other, each over
every worker (a time point is a whole volume; blocks, not time points, are the unit of parallelism).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import zarr

from ..cluster.deploy import Session, open_session
from ..config import Config
from ..errors import UsageError
from ..plan.labels import LabelTarget, check_labels, label_target, label_target_of, recorded_output
from ..plan.prepare import prepare
from ..plan.space import check_space
from ..stages.labels import new_label_group
from ..stages.objects import timelapse_table
from ..stages.tracker import CONTOURS, FOREGROUND, create_maps, tracker_maps
from ..volume.errors import InputError
from ..volume.input_volume import InputVolume
from ..volume.io import open_input, timepoint_count
from ..volume.ome_metadata import labels_list
from .engine import Engine
from .integrity import read_manifest, vouch
from .lock import RunLock
from .output import check_output
from .stack import create_stack, put_timepoint, stacked_multiscale, time_axis, timepoint_files
from .store import Store

logger = logging.getLogger(__name__)

TIMEPOINTS = "timepoints"
STAGE = "timepoints"  # done markers: one per time point stacked


def selected_timepoints(cfg: Config, region: Any = None) -> list[int] | None:
    """The input's time points this run segments, or None for a run of one volume (no time axis,
    one time point, or ``input.timepoint`` set); a ``region`` run reads one time point."""
    n = 1 if cfg.input.timepoint is not None else timepoint_count(cfg.input)
    if cfg.input.timepoint is not None or (n <= 1 and cfg.input.timepoints == "all"):
        if cfg.output.tracker_maps:
            raise UsageError("output.tracker_maps is written for time-lapses (a t axis, several time points); this "
                             "run reads one volume: remove it, or set input.timepoints: [0] for a stack of one")
        return None
    if region is not None:
        raise UsageError("a region run reads one time point of a time-lapse: set input.timepoint to the one "
                         "to compute")
    try:
        return cfg.input.selected(n)
    except ValueError as exc:
        raise InputError(f"{exc}; input '{cfg.input.path}'") from None


def frame_path(out: Path, t: int) -> Path:
    return out / TIMEPOINTS / f"t{t:05d}"


def _runs(out: Path, timepoints: list[int]) -> list[tuple[int, int, Path]]:
    """(t, the input's time point, its run's output) of every time point."""
    return [(t, k, frame_path(out, t)) for t, k in enumerate(timepoints)]


def frame_config(cfg: Config, timepoint: int, path: Path) -> Config:
    """The run of one time point: ``input.timepoint``, its own output group (its label image in it)."""
    out = cfg.output.model_copy(update={"path": path, "overwrite": False, "objects_csv": False, "tracker_maps": False,
                                        "labels": "none" if cfg.output.labels == "none" else "standalone"})
    return cfg.model_copy(update={"input": cfg.input.model_copy(update={"timepoint": timepoint, "timepoints": "all"}),
                                  "output": out})


def resume_parts(cfg: Config, timepoints: list[int]) -> dict[str, Any]:
    """What the time-lapse's stacks depend on besides each time point's run (which checks its own)."""
    from ..version import __version__

    config = cfg.model_dump(mode="json", exclude={"cluster": True, "output": {"overwrite", "objects_csv"}})
    return {"stage": "timelapse", "timepoints": timepoints, "config": config, "layout": {"version": __version__}}


def segment_timelapse(cfg: Config, timepoints: list[int], segment: Callable[[Config, Any, bool], Path],
                      client: Any = None, progress: bool = False) -> Path:
    """Segment ``timepoints`` of the input one by one (see the module's text) with ``segment`` (the run of
    one volume: config, client or session, progress); the output's path."""

    out, o = Path(cfg.output.path), cfg.output
    check_output(out, o.overwrite)
    vol, target = _target(cfg, timepoints)
    if target is not None:
        check_labels(target, out, o.overwrite)
    logger.info("time-lapse: %d time points (%s) of '%s', each segmented on its own", len(timepoints),
                describe_timepoints(timepoints), cfg.input.path)
    t0, counts, how = time.perf_counter(), [], set()
    lock = RunLock(out, uuid.uuid4().hex)
    try:
        store, resumed = Store.open(out, o.overwrite, resume_parts(cfg, timepoints), lock.run_id, lock)
        done = store.done(STAGE, len(timepoints)) if resumed else None
        if target is not None:
            _open_labels(store, target, resumed)
        store.create_markers(STAGE)
        _check_space(cfg, timepoints, len(timepoints) - int(done.sum()) if done is not None else len(timepoints))
        with _session(cfg, client) as session:
            engine = Engine(session.client, progress, abort=session.check)
            for t, k in enumerate(timepoints):
                sub = frame_path(out, t)
                if done is not None and done[t]:
                    logger.info("time point %d (input %d): done in an earlier run", t, k)
                else:
                    logger.info("time point %d of %d (input time point %d)", t + 1, len(timepoints), k)
                    if not _complete(sub):
                        segment(frame_config(cfg, k, sub), session, progress)
                    how |= _stack(store, target, sub, t, len(timepoints), engine if o.tracker_maps else None)
                counts.append(int(Store(str(sub), "").attrs()["pipeline"]["objects"]))
        table = timelapse_table(out, _runs(out, timepoints), o.objects_csv)
        if target is not None:
            _finish_labels(target, sub, out, time_axis(vol.ome, cfg.input.scale_level))
        meta = {"timelapse": True, "timepoints": timepoints, "objects_per_timepoint": counts, "objects": sum(counts),
                "objects_table": table, "label_image": str(target.group) if target else None,
                "stacked": sorted(how), "timing_s": round(time.perf_counter() - t0, 3), "config": cfg.model_dump(mode="json")}
        store.finish({"pipeline": meta})
    finally:
        lock.release()
    logger.info("time-lapse: %d time points, %d objects in %.1f s -> %s", len(timepoints), sum(counts),
                time.perf_counter() - t0, out)
    return out


def _target(cfg: Config, timepoints: list[int]) -> tuple[InputVolume, LabelTarget | None]:
    """The first time point's input (opened) and the (t, z, y, x) label image ``output.labels`` asks for."""
    first = frame_config(cfg, timepoints[0], frame_path(Path(cfg.output.path), 0))
    vol = open_input(first.input)
    return vol, label_target_of(cfg.model_copy(update={"input": first.input}), vol)


def timelapse_parts(cfg: Config, timepoints: list[int]) -> list[tuple[Path, Config]]:
    """Each time point's output group and run config."""
    out = Path(cfg.output.path)
    return [(frame_path(out, t), frame_config(cfg, k, frame_path(out, t))) for t, k in enumerate(timepoints)]


def restack(cfg: Config, timepoints: list[int], again: list[int], tables: bool) -> None:
    """A finished time-lapse's time points ``again`` put into the stacks anew from their runs, their
    tracker maps too (repair, serially), and with ``tables`` the objects table written again."""
    _, target = _target(cfg, timepoints)
    out = Path(cfg.output.path)
    for t in again:
        for frame, stack in _frame_arrays(frame_path(out, t), target, out):
            put_timepoint(frame, stack, t)
        if cfg.output.tracker_maps:
            _maps(Engine(), frame_path(out, t), out, t, len(timepoints))
    if tables:
        timelapse_table(out, _runs(out, timepoints), cfg.output.objects_csv)


def _check_space(cfg: Config, timepoints: list[int], left: int) -> None:
    """Refuse to start a movie whose time points left clearly do not fit (each run checks its own too);
    not with input.diameter auto (planning a time point would measure it once more)."""
    if left > 1 and cfg.output.check_space and cfg.input.diameter != "auto":
        first = prepare(frame_config(cfg, timepoints[0], frame_path(Path(cfg.output.path), 0)))
        check_space(first, label_target(first), timepoints=left)


def _session(cfg: Config, client: Any) -> AbstractContextManager[Session]:
    """The caller's client (or session), else the configured cluster, opened once for every time point."""
    if isinstance(client, Session):
        return nullcontext(client)
    return nullcontext(Session(client)) if client is not None else open_session(cfg.cluster)


def describe_timepoints(timepoints: list[int]) -> str:
    """``0..9``, or the list when not contiguous."""
    contiguous = timepoints == list(range(timepoints[0], timepoints[-1] + 1))
    return f"{timepoints[0]}..{timepoints[-1]}" if contiguous else ", ".join(map(str, timepoints))


def _complete(path: Path) -> bool:
    try:
        return bool(zarr.open_group(str(path), mode="r").attrs.get("complete"))
    except Exception:  # noqa: BLE001 - not there yet, or torn: the run of that time point (re)starts or resumes
        return False


def _open_labels(store: Store, target: LabelTarget, resumed: bool) -> None:
    """The label image group: the interrupted run's (resumed), else new (replacing what
    :func:`check_labels` allowed)."""
    if not (resumed and recorded_output(target.group) == str(Path(store.path).resolve())):
        new_label_group(target, Path(store.path))


def _frame_arrays(sub: Path, target: LabelTarget | None, out: Path) -> list[tuple[Path, Path]]:
    """(time point's array, stack) pairs: the label image's levels, or the segmentation."""
    if target is None:
        return [(sub / "segmentation", out / "segmentation")]
    frame_group = sub / "labels" / target.name
    ms = zarr.open_group(str(frame_group), mode="r").attrs["ome"]["multiscales"][0]
    return [(frame_group / d["path"], target.group / d["path"]) for d in ms["datasets"]]


def _stack(store: Store, target: LabelTarget | None, sub: Path, t: int, n: int, maps: Engine | None = None) -> set[str]:
    """Time point ``t``'s label arrays into the stacks (created with the first) and with ``maps`` (the
    engine that computes them) its tracker maps, then its marker, vouching for the stacked files (those
    of a linked time point: what its run's manifest says of them) and the maps."""
    how, out, vouched = set(), Path(store.path), {}
    files = read_manifest(sub) or {}
    for frame, stack in _frame_arrays(sub, target, out):
        if not (stack / "zarr.json").exists() and not (stack / ".zarray").exists():
            create_stack(stack.parent, stack.name, zarr.open_array(str(frame.resolve()), mode="r"), n)
        how.add(done := put_timepoint(frame, stack, t))
        if done == "recoded":
            vouched |= vouch(out, timepoint_files(stack, t))
        else:
            prefix = os.path.relpath(frame, sub) + "/c/"
            vouched |= {_key(out, stack / "c" / str(t) / rel[len(prefix):]): v for rel, v in files.items()
                        if rel.startswith(prefix)}
    if maps is not None:
        vouched |= vouch(out, _maps(maps, sub, out, t, n))
    store.mark_done(STAGE, [t], files=vouched)
    return how


def _maps(engine: Engine, sub: Path, out: Path, t: int, n: int) -> list[Path]:
    """Time point ``t``'s tracker maps (:mod:`pipeline.stages.tracker`) from its segmentation; their files."""
    seg = (sub / "segmentation").resolve()
    if not (out / FOREGROUND / "zarr.json").exists():
        create_maps(out, zarr.open_array(str(seg), mode="r"), n)
    for name in (FOREGROUND, CONTOURS):
        shutil.rmtree(out / name / "c" / str(t), ignore_errors=True)
    tracker_maps(engine, seg, out, t)
    return [f for name in (FOREGROUND, CONTOURS) for f in timepoint_files(out / name, t)]


def _key(root: Path, path: Path) -> str:
    """How a manifest names ``path``: relative to the output ``root`` where inside it."""
    return os.path.relpath(path, root) if path.resolve().is_relative_to(root.resolve()) else str(path)


def _finish_labels(target: LabelTarget, sub: Path, out: Path, time: tuple[dict[str, Any], float]) -> None:
    """The label image's NGFF metadata (from a time point's, with t first), listed in ``labels/``;
    ``<output>/segmentation`` a link to its full-resolution level."""
    frame_group = sub / "labels" / target.name
    frame_attrs = dict(zarr.open_group(str(frame_group), mode="r").attrs)
    axis, scale = time
    group = zarr.open_group(str(target.group), mode="r+")
    group.attrs.put(stacked_multiscale(frame_attrs, target.version, axis, scale, target.source, out))
    labels = zarr.open_group(str(target.labels_group), mode="r+")
    labels.attrs.put(labels_list(dict(labels.attrs), target.version, target.name))
    level0 = Path(os.readlink(sub / "segmentation")).name if (sub / "segmentation").is_symlink() else target.copy.path
    link = out / "segmentation"
    if link.is_symlink() or link.exists():
        link.unlink()
    real = (target.group / level0).resolve()
    os.symlink(os.path.relpath(real, out.resolve()) if real.is_relative_to(out.resolve()) else str(real), link)
