"""The run's block grid as layers: the y-x block borders as lines (Shapes), blocks skipped as empty
space (a coarse Labels layer, one voxel per block), and the seam audit's rejected pairs as Points
where the two fragments touched. With ``input.diameter`` the blocks lie on the resampled grid."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .frame import Frame, LayerData

SEAM_FILES = 256  # seam audit records read (evenly spaced beyond)
POINTS_LIMIT = 20_000  # rejected pairs shown
GRID_LINES = 1_000  # block borders drawn per axis (every k-th beyond)


@dataclass(frozen=True)
class Grid:
    """The run's block grid, in input voxels: block ``k`` of an axis spans ``[k*w/z - 0.5, (k+1)*w/z - 0.5)``."""

    write: tuple[int, ...]
    grid: tuple[int, ...]
    volume: tuple[int, ...]  # the grid the blocks cover (resampled with input.diameter)
    zoom: tuple[float, ...]

    @classmethod
    def of(cls, plan: dict[str, Any]) -> Grid:
        nd = len(plan["write_shape"])
        return cls(tuple(plan["write_shape"]), tuple(plan["grid"]), tuple(plan["volume_shape"]),
                   tuple(plan.get("zoom") or (1.0,) * nd))

    def to_input(self, coord: Sequence[float]) -> list[float]:
        """A position on the blocks' grid (voxel index units) in input voxel units."""
        return [(c + 0.5) / z - 0.5 for c, z in zip(coord, self.zoom, strict=True)]

    def index(self, linear: int) -> tuple[int, ...]:
        return tuple(int(i) for i in np.unravel_index(linear, self.grid))


def grid_layer(grid: Grid, frame: Frame) -> LayerData:
    """The y-x block borders as lines (a 2D Shapes layer napari shows on every plane)."""
    nd = len(grid.write)
    lo = grid.to_input([-0.5] * nd)[-2:]  # the volume's outer edges, input voxel units
    hi = grid.to_input([v - 0.5 for v in grid.volume])[-2:]
    lines = []
    for a in (nd - 2, nd - 1):
        borders = [min(k * grid.write[a], grid.volume[a]) for k in range(grid.grid[a] + 1)]
        for b in borders[:: max(1, math.ceil(len(borders) / GRID_LINES))]:
            at = grid.to_input([b - 0.5] * nd)[a]
            lines.append(np.array([[at, lo[1]], [at, hi[1]]] if a == nd - 2 else [[lo[0], at], [hi[0], at]]))
    yx = Frame(frame.voxel_size[-2:], frame.origin[-2:])
    kwargs = {"name": "block grid", "shape_type": "line", "edge_color": "yellow", "edge_width": 0.5,
              "opacity": 0.6, **yx.scaled((1.0, 1.0), (0.0, 0.0)),
              "metadata": {"pipeline": {"write_shape": list(grid.write), "grid": list(grid.grid)}}}
    return (lines, kwargs, "shapes")


def skipped_layer(result: Path, grid: Grid, frame: Frame) -> LayerData | None:
    """Blocks skipped as empty space: one voxel per block (None: no block was skipped)."""
    path = result / "empty_blocks"
    if not path.exists():
        return None
    flags = np.asarray(zarr.open_array(str(path), mode="r")[...]).astype(np.uint8)
    if not flags.any():
        return None
    factor = [w / z for w, z in zip(grid.write, grid.zoom, strict=True)]
    shift = [0.5 * w / z - 0.5 for w, z in zip(grid.write, grid.zoom, strict=True)]
    return (flags, {"name": "skipped blocks", "opacity": 0.25, **frame.scaled(factor, shift)}, "labels")


def seam_records(result: Path) -> tuple[list[Path], int]:
    """The seam audit's record files to read (evenly spaced, at most :data:`SEAM_FILES`) and how many there are."""
    folder = result / "qc" / "seams"
    files = sorted(folder.glob("*.npz"), key=lambda p: int(p.stem)) if folder.is_dir() else []
    if len(files) <= SEAM_FILES:
        return files, len(files)
    keep = np.unique(np.linspace(0, len(files) - 1, SEAM_FILES).round().astype(int))
    return [files[i] for i in keep], len(files)


def rejected_points(record: dict[str, np.ndarray], grid: Grid) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Where each rejected pair of one seam record touched (input voxel units) and its evidence."""
    rej = np.flatnonzero(~record["accepted"].astype(bool))
    nd = len(grid.write)
    points = np.zeros((len(rej), nd))
    for row, i in enumerate(rej):
        f = int(record["face"][i])
        index, axis = grid.index(int(record["face_block"][f])), int(record["face_axis"][f])
        start = [k * w for k, w in zip(index, grid.write, strict=True)]
        extent = [min(w, v - s) for w, v, s in zip(grid.write, grid.volume, start, strict=True)]
        plane = [a for a in range(nd) if a != axis]
        centre = record["centre"][i] if "centre" in record else [(extent[a] - 1) / 2 for a in plane]
        at = [0.0] * nd
        at[axis] = start[axis] + extent[axis] - 0.5  # between the block's last plane and its neighbour's first
        for a, c in zip(plane, centre, strict=True):
            at[a] = start[a] + float(c)
        points[row] = grid.to_input(at)
    evidence = {k: record[k][rej] for k in ("distance", "min_distance", "contact")}
    return points, evidence


def seams_layer(result: Path, grid: Grid, frame: Frame) -> LayerData | None:
    """The seam audit's rejected pairs as Points (None: none recorded)."""
    files, total = seam_records(result)
    points, features = [], []
    for path in files:
        with np.load(path) as z:
            record = {k: z[k] for k in z.files}
        p, e = rejected_points(record, grid)
        points.append(p)
        features.append(e)
        if sum(len(x) for x in points) >= POINTS_LIMIT:
            break
    if not points or not sum(len(p) for p in points):
        return None
    data = np.concatenate(points)[:POINTS_LIMIT]
    feats = {k: np.concatenate([f[k] for f in features])[:POINTS_LIMIT] for k in features[0]}
    note = f"{len(data)} rejected pairs" + (f" from {len(files)} of {total} seam records" if len(files) < total else "")
    size = 3.0 * min(frame.voxel_size)
    return (data, {"name": "rejected seam pairs", "face_color": "magenta", "size": size, "features": feats,
                   **frame.scaled([1.0] * len(frame.voxel_size), [0.0] * len(frame.voxel_size)),
                   "metadata": {"pipeline": {"note": note}}}, "points")
