"""One (t, z, y, x) array made of per-time-point 3D arrays (:mod:`pipeline.timelapse`), without
copying where the layouts allow it.

A zarr v3 array of chunks (or shards) ``(1, *c)`` stores time point ``t``'s chunk ``k`` at
``c/<t>/<k>``, and the bytes of that file are the bytes a 3D array of chunks ``c`` with the same
codecs stores at ``c/<k>`` (a chunk of one time point is the 3D chunk, same order, same index for a
shard). So a time point is put into the stack by hard-linking its chunk files: no byte is read or
written, no space is taken twice. :func:`same_layout` checks that the two arrays' metadata agree
on everything that makes the bytes (data type, fill value, chunk key encoding, codecs, chunk and
shard shapes); where they do not (a zarr v2 stack under an OME-Zarr 0.4 image), or the filesystem
takes no hard links, the chunks are copied (decoded and encoded again, or file by file).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..volume.errors import OutputError
from ..volume.io import create_array, open_group, write_region

logger = logging.getLogger(__name__)


def _layout(arr: zarr.Array, drop_time: bool) -> dict[str, Any] | None:
    """What makes a chunk's bytes, with the leading time axis of a stack's shapes dropped;
    None for a zarr v2 array (its keys are not laid out in folders per axis)."""
    if arr.metadata.zarr_format != 3:
        return None
    meta = arr.metadata.to_dict()

    def trim(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (list(v)[1:] if drop_time and k == "chunk_shape" else trim(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [trim(v) for v in node]
        return node

    keys = meta.get("chunk_key_encoding", {})
    if keys.get("name") != "default" or keys.get("configuration", {}).get("separator", "/") != "/":
        return None
    return {k: trim(meta.get(k)) for k in ("data_type", "fill_value", "codecs", "chunk_grid", "chunk_key_encoding")}


def same_layout(frame: zarr.Array, stack: zarr.Array) -> bool:
    """Whether ``frame``'s chunk files are, byte for byte, the chunk files of one time point of ``stack``."""
    a, b = _layout(frame, False), _layout(stack, True)
    return a is not None and b is not None and json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def create_stack(group: Path, name: str, frame: zarr.Array, timepoints: int) -> zarr.Array:
    """The (t, ...) array ``group/name`` for ``timepoints`` arrays like ``frame`` (its chunks, shards,
    data type and fill value; the group's zarr format)."""
    shards = getattr(frame, "shards", None)
    dims = frame.metadata.dimension_names if frame.metadata.zarr_format == 3 else None
    return create_array(open_group(group), name, (timepoints, *frame.shape), (1, *frame.chunks), str(frame.dtype),
                        fill_value=frame.fill_value, overwrite=True, shards=(1, *shards) if shards else None,
                        dims=("t", *(dims or "zyx"[-frame.ndim:])))


def put_timepoint(frame_path: Path, stack_path: Path, t: int) -> str:
    """Make time point ``t`` of the stack at ``stack_path`` the array at ``frame_path`` (what the
    stack held there before is replaced); how: ``linked``, ``copied`` (files) or ``recoded``."""
    frame = zarr.open_array(str(frame_path.resolve()), mode="r")
    stack = zarr.open_array(str(stack_path), mode="r+")
    if tuple(stack.shape[1:]) != tuple(frame.shape) or stack.ndim != frame.ndim + 1:
        raise OutputError(f"time point {t} ({frame_path}) has shape {list(frame.shape)}, the other time points "
                          f"{list(stack.shape[1:])}: every time point of a time-lapse must have the same shape")
    if np.dtype(frame.dtype).itemsize > np.dtype(stack.dtype).itemsize:  # more than 2**32 - 1 objects in this one
        logger.info("time point %d holds %s labels, the earlier ones %s: the stack %s is rewritten in %s",
                    t, frame.dtype, stack.dtype, stack_path.name, frame.dtype)
        stack = widen_stack(stack_path, frame.dtype)
    if same_layout(frame, stack):
        return _link_files(Path(frame.store_path.store.root) / frame.store_path.path, stack_path, t)
    _clear_timepoint(stack, t)
    _recode(frame, stack, t)
    return "recoded"


def _recode(src: zarr.Array, dst: zarr.Array, t: int | None = None) -> None:
    """``src`` decoded shard by shard (or chunk by chunk) and written into ``dst`` (at time point ``t``
    of it when given) in ``dst``'s data type; cells holding only 0 are left out where the fill values agree."""
    step = tuple(getattr(src, "shards", None) or src.chunks)
    for corner in np.ndindex(*(-(-n // s) for n, s in zip(src.shape, step, strict=True))):
        box = tuple(slice(i * s, min((i + 1) * s, n)) for i, s, n in zip(corner, step, src.shape, strict=True))
        data = np.asarray(src[box]).astype(dst.dtype, copy=False)
        if data.any() or src.fill_value != dst.fill_value:
            write_region(dst, box if t is None else (slice(t, t + 1), *box), data if t is None else data[None])


def widen_stack(stack_path: Path, dtype: Any) -> zarr.Array:
    """The stack at ``stack_path`` rewritten in the wider ``dtype`` (a time point with more than 2**32 - 1
    objects after time points of fewer): written beside it, then put in its place; its chunk files no
    longer share bytes with the earlier time points' arrays (those are kept as they are)."""
    old = zarr.open_array(str(stack_path), mode="r")
    beside, narrow = (stack_path.with_name(f"{stack_path.name}.{what}") for what in ("wider", "narrow"))
    for leftover in (beside, narrow):  # of a run stopped while widening
        shutil.rmtree(leftover, ignore_errors=True)
    dims = old.metadata.dimension_names if old.metadata.zarr_format == 3 else None
    new = create_array(open_group(stack_path.parent), beside.name, old.shape, old.chunks, str(np.dtype(dtype)),
                       fill_value=old.fill_value, shards=getattr(old, "shards", None), dims=dims)
    new.attrs.update(dict(old.attrs))
    _recode(old, new)
    os.rename(stack_path, narrow)
    os.rename(beside, stack_path)
    shutil.rmtree(narrow)
    return zarr.open_array(str(stack_path), mode="r+")


def _link_files(frame: Path, stack: Path, t: int) -> str:
    """Hard-link (else copy) every chunk file of ``frame`` (a zarr v3 array folder) into time point ``t`` of ``stack``."""
    src, dst = frame / "c", stack / "c" / str(t)
    shutil.rmtree(dst, ignore_errors=True)
    how = "linked"
    for folder, _, files in os.walk(src):
        rel = Path(folder).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            if how == "linked":
                try:
                    os.link(Path(folder) / name, dst / rel / name)
                    continue
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
                        raise
                    how = "copied"
                    logger.info("time point %d: the filesystem takes no hard link here (%s); copying its files", t,
                                exc.strerror)
            shutil.copyfile(Path(folder) / name, dst / rel / name)
    return how


def timepoint_files(stack: Path, t: int) -> list[Path]:
    """The chunk files of time point ``t`` of the stack at ``stack`` (zarr v3 ``c/<t>/...``, v2 ``<t>/...``)."""
    folder = stack / "c" / str(t) if (stack / "zarr.json").exists() else stack / str(t)
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


def _clear_timepoint(stack: zarr.Array, t: int) -> None:
    """Time point ``t`` of ``stack`` back to the fill value (what an earlier try wrote there is gone)."""
    folder = Path(stack.store_path.store.root) / stack.store_path.path
    if stack.metadata.zarr_format == 3:
        shutil.rmtree(folder / "c" / str(t), ignore_errors=True)
    else:
        shutil.rmtree(folder / str(t), ignore_errors=True)


def stacked_multiscale(frame_attrs: dict[str, Any], version: str, t_axis: dict[str, Any], t_scale: float,
                       source: str | None, output: Path) -> dict[str, Any]:
    """The NGFF attributes of a (t, z, y, x) label image from those of one time point's (z, y, x)
    label image (OME-Zarr 0.5): ``t_axis`` first, scale ``t_scale`` and translation 0 along it."""
    ome = frame_attrs["ome"]
    ms = dict(ome["multiscales"][0])

    def with_time(transforms: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**ct, ct["type"]: [t_scale if ct["type"] == "scale" else 0.0, *ct[ct["type"]]]}
                if ct.get("type") in ("scale", "translation") and ct.get("type") in ct else dict(ct) for ct in transforms]

    ms["axes"] = [dict(t_axis), *ms["axes"]]
    ms["datasets"] = [{**d, "coordinateTransformations": with_time(d["coordinateTransformations"])} for d in ms["datasets"]]
    if "coordinateTransformations" in ms:
        ms["coordinateTransformations"] = with_time(ms["coordinateTransformations"])
    label = {**ome.get("image-label", {}), "version": version}
    label.pop("source", None)
    if source is not None:
        label["source"] = {"image": source}
    meta = ({"multiscales": [{"version": "0.4", **ms}], "image-label": label} if version == "0.4"
            else {"ome": {"version": version, "multiscales": [ms], "image-label": label}})
    return {**meta, "pipeline": {"output": str(output.resolve())}}


def time_axis(ome: dict[str, Any] | None, scale_level: int) -> tuple[dict[str, Any], float]:
    """The input's t axis (name, type, unit) and its scale at ``scale_level`` (OME-Zarr); a plain
    ``t`` of scale 1 otherwise."""
    ms = (ome or {}).get("multiscales", [{}])[0]
    axes = ms.get("axes") or []
    names = [a.get("name") if isinstance(a, dict) else a for a in axes]
    if "t" not in names:
        return {"name": "t", "type": "time"}, 1.0
    i = names.index("t")
    axis = axes[i] if isinstance(axes[i], dict) else {"name": "t"}
    scale = 1.0
    for ct in ms["datasets"][scale_level].get("coordinateTransformations", []):
        if ct.get("type") == "scale" and "scale" in ct:
            scale = float(ct["scale"][i])
    return {"name": "t", "type": "time", **({"unit": axis["unit"]} if axis.get("unit") else {})}, scale
