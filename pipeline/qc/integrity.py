"""``pipeline verify --integrity``: is every file of a finished output as the run wrote it?

A finished run records a manifest, ``qc/integrity.parquet``: every chunk of the segmentation and
of the label image levels (what the relabel and labels stages' done markers vouched for) and the
objects table, each with its size and CRC-32 (:mod:`pipeline.runtime.integrity`). The check reads
every file again and names those missing, short or changed, with the region of the volume a
damaged chunk holds; ``pipeline run --repair`` computes those regions again.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..runtime.integrity import (
    MANIFEST,
    METADATA,
    check_files,
    check_metadata,
    chunk_region,
    metadata_copies,
    read_manifest,
    restore_metadata,
)
from ..runtime.timelapse import TIMEPOINTS
from ..volume.errors import OutputError

logger = logging.getLogger(__name__)


def check_integrity(root: str | Path, content: bool = True, restore: bool = False, timepoints: bool = True) -> dict[str, Any]:
    """``{"files": n, "damaged": [{"path", "why", "array", "region"}]}`` for the output ``root``.
    Metadata documents (``zarr.json``) missing or unreadable are damaged too; with ``restore``
    their copies are put back first (each said in a line) and they are not in the result. A
    time-lapse: its stacks and objects table, and with ``timepoints`` each time point's run (paths
    below ``timepoints/t<t>/``)."""
    root = Path(root)
    runs = sorted((root / TIMEPOINTS).glob("t*")) if timepoints and (root / TIMEPOINTS).is_dir() else []
    inner = [(sub, check_integrity(sub, content, restore)) for sub in runs]
    found = _check_one(root, content, restore)
    for sub, part in inner:
        found["files"] += part["files"]
        found["metadata"] += part["metadata"]
        found["damaged"] += [{**d, "path": f"{TIMEPOINTS}/{sub.name}/{d['path']}"} for d in part["damaged"]]
    return found


def _check_one(root: Path, content: bool, restore: bool) -> dict[str, Any]:
    files = read_manifest(root)
    if files is None:
        raise OutputError(f"'{root}' has no integrity manifest ({MANIFEST}): it is not the output of a finished run of "
                          "this version (an unfinished run is checked and resumed by rerunning it)")
    damaged = []
    for rel, why in check_metadata(root):
        if restore:
            restore_metadata(root, rel)
            logger.warning("repair: %s was %s; put back its copy from %s", rel, why, METADATA)
        else:
            damaged.append({"path": rel, "why": why, "array": None, "region": None})
    for rel, why in check_files(root, files, content):
        found = chunk_region(root, rel)
        damaged.append({"path": rel, "why": why, "array": found[0] if found else None,
                        "region": found[1] if found else None})
    return {"files": len(files), "metadata": len(metadata_copies(root)), "damaged": damaged}


def describe_integrity(root: str | Path, result: dict[str, Any]) -> list[str]:
    """What ``pipeline verify --integrity`` prints."""
    bad = result["damaged"]
    lines = [f"integrity of '{root}': {result['files']} files checked (size and CRC-32) and "
             f"{result['metadata']} metadata documents (readable), "
             + ("all as written" if not bad else f"{len(bad)} missing or damaged")]
    for d in bad:
        where = f" ({d['region'].describe()})" if d["region"] is not None else ""
        lines.append(f"  {d['path']}: {d['why']}{where}")
    if bad:
        lines.append("repair: pipeline run <config> --repair (computes the damaged regions again, puts back damaged "
                     f"metadata from its copies in {METADATA})")
    return lines
