"""The ``objects`` stage: partial per-block statistics combined into one row per object
(id, voxels, bounding box, centroid, physical volume) and written as ``objects.csv``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..merge import combine_stats

COMBINE_EVERY = 64  # partial tables held before they are combined


def combine_all(parts: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Combine partial statistics as they arrive, holding at most ``COMBINE_EVERY``."""
    held: list[dict[str, np.ndarray]] = []
    for part in parts:
        held.append(part)
        if len(held) > COMBINE_EVERY:
            held = [combine_stats(held)]
    return combine_stats(held)


def write_objects(path: Path, objects: dict[str, np.ndarray], voxel_size: Sequence[float] | None) -> None:
    """Objects table: id, voxel count, bounding box (start inclusive, end exclusive), centroid."""
    nd = objects["lo"].shape[1] if objects["lo"].ndim == 2 and objects["lo"].shape[1] else 0
    axes = "zyx"[-nd:] if nd else ""
    header = ["id", "voxels"] + [f"bbox_start_{a}" for a in axes] + [f"bbox_end_{a}" for a in axes] + [f"centroid_{a}" for a in axes]
    if voxel_size:
        header += ["volume"]
    lines = [",".join(header)]
    vol = float(np.prod(voxel_size)) if voxel_size else None
    for i in range(len(objects["id"])):
        row = [str(int(objects["id"][i])), str(int(objects["count"][i]))]
        row += [str(int(x)) for x in objects["lo"][i]] + [str(int(x)) for x in objects["hi"][i]]
        row += [f"{x / objects['count'][i]:.3f}" for x in objects["sum"][i]]
        if vol is not None:
            row.append(f"{objects['count'][i] * vol:.6g}")
        lines.append(",".join(row))
    path.write_text("\n".join(lines) + "\n")
