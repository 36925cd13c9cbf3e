"""A result as napari layer data (``(data, kwargs, layer_type)`` tuples), without Qt or napari.

What a result group (``result.zarr``) holds becomes, in world coordinates (the input's voxel
size and origin; voxel units without them):

* the input image (from the run's provenance, when it can be opened): lazily, every level of an
  OME-Zarr pyramid, contrast limits = the run's normalisation range;
* the label image (``labels/<name>``, every level; else ``segmentation``) as a Labels layer, with
  the objects table as its ``features`` (``index`` = object id), a sample of at most
  :data:`FEATURES_LIMIT` rows read from as few Parquet parts as that takes (the note says so);
* the block grid as Shapes (lines on the y-x block borders, shown on every plane), blocks
  skipped as empty space as a coarse Labels layer (one voxel per block), and the seam audit's
  rejected pairs as Points where the two fragments touched.

Nothing is read whole: arrays stay zarr/dask, the table and the seam records are read up to
their limits, the block grid costs one line per block border. Coordinates: voxel ``i`` of the
segmented grid is centred at ``i``; with ``input.diameter`` the blocks lie on the resampled
grid, whose voxel ``i`` is centred at input coordinate ``(i + 0.5) / zoom - 0.5``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..config import InputConfig
from ..volume.io import open_input
from ..volume.ome_metadata import global_transforms, input_pyramid, physical_grid

logger = logging.getLogger(__name__)

LayerData = tuple[Any, dict[str, Any], str]

FEATURES_LIMIT = 200_000  # rows of the objects table given to napari (a sample beyond)
SEAM_FILES = 256  # seam audit records read (evenly spaced beyond)
POINTS_LIMIT = 20_000  # rejected pairs shown
GRID_LINES = 1_000  # block borders drawn per axis (every k-th beyond)
KEPT = ("blocks", "empty", "merge")  # config sections of the run that a widget's preview or run keeps


def group_attrs(path: Path) -> dict[str, Any] | None:
    """The attributes of the zarr group at ``path`` (None: not a zarr group)."""
    if not ((path / "zarr.json").exists() or (path / ".zgroup").exists()):
        return None
    try:
        return dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:  # noqa: BLE001 - unreadable: not ours to open
        return None


def ome(attrs: dict[str, Any]) -> dict[str, Any]:
    """NGFF metadata: under ``ome`` (0.5) or at the top (0.4)."""
    inner = attrs.get("ome")
    return inner if isinstance(inner, dict) else attrs


def our_label_images(image: Path) -> list[Path]:
    """Label images this project wrote under an OME-Zarr image (``labels/<name>`` groups that
    record the run output that wrote them)."""
    labels = group_attrs(image / "labels")
    names = ome(labels).get("labels", []) if labels else []
    found = []
    for name in names:
        attrs = group_attrs(image / "labels" / str(name))
        if attrs and isinstance(attrs.get("pipeline"), dict) and attrs["pipeline"].get("output"):
            found.append(image / "labels" / str(name))
    return found


def result_of(path: Path) -> Path | None:
    """The result group ``path`` stands for: itself, the run output recorded by one of our label
    images (``path`` is that label image, or an OME-Zarr image holding one); None: not ours."""
    attrs = group_attrs(path)
    if attrs is None:
        return None
    if isinstance(attrs.get("pipeline"), dict) and (path / "segmentation").exists():
        return path
    images = [path] if "image-label" in ome(attrs) else our_label_images(path)
    for label in images:
        recorded = (group_attrs(label) or {}).get("pipeline", {}).get("output")
        if recorded and group_attrs(Path(recorded)) is not None:
            return Path(recorded)
    return None


def resolve(recorded: str | Path, result: Path) -> Path | None:
    """A path a run recorded (maybe relative to the folder it ran in), found from here or from
    beside the result."""
    p = Path(recorded)
    candidates = [p] if p.is_absolute() else [p, result.parent / p, result.parent / p.name, result.parent.parent / p]
    return next((c for c in candidates if c.exists()), None)


@dataclass(frozen=True)
class Frame:
    """World coordinates of the segmented grid: voxel ``i`` at ``origin + i * voxel_size``."""

    voxel_size: tuple[float, ...]
    origin: tuple[float, ...]

    def scaled(self, factor: Sequence[float], shift: Sequence[float]) -> dict[str, list[float]]:
        """``scale``/``translate`` of a layer whose voxel ``j`` is at segmented voxel ``shift + j * factor``."""
        return {"scale": [v * f for v, f in zip(self.voxel_size, factor, strict=True)],
                "translate": [o + s * v for o, s, v in zip(self.origin, shift, self.voxel_size, strict=True)]}


def level_transforms(attrs: dict[str, Any], arrays: Sequence[Any], spatial: Sequence[int]) -> tuple[list[float], list[float]]:
    """World scale and translation of level 0 of a multiscales image (global transforms applied)."""
    multiscale = ome(attrs)["multiscales"][0]
    level = input_pyramid(multiscale, [a.shape for a in arrays], spatial)[0]
    scale, translate = list(level.scale), list(level.translation)
    for t in global_transforms(multiscale, spatial) or []:
        if t["type"] == "scale":
            scale = [s * float(g) for s, g in zip(scale, t["scale"], strict=True)]
            translate = [o * float(g) for o, g in zip(translate, t["scale"], strict=True)]
        else:
            translate = [o + float(g) for o, g in zip(translate, t["translation"], strict=True)]
    return scale, translate


def multiscale_arrays(group: Path) -> tuple[list[Any], dict[str, Any]]:
    """The levels of an OME-Zarr multiscales group (zarr arrays: lazy) and the group's attributes."""
    attrs = group_attrs(group) or {}
    node = zarr.open_group(str(group), mode="r")
    return [node[d["path"]] for d in ome(attrs)["multiscales"][0]["datasets"]], attrs


def spatial_view(array: Any, axes: str, channel: int | None) -> tuple[Any, bool]:
    """``array`` as a lazy dask array of its spatial axes (t: the first point; c: the run's channel,
    else every channel first); True when a channel axis is kept."""
    import dask.array as da

    chunks = getattr(array, "chunks", None)
    data = da.from_array(array, chunks=chunks if chunks else "auto")
    index = tuple(0 if a == "t" else (channel if channel is not None else slice(None)) if a == "c" else slice(None)
                  for a in axes)
    data = data[index]
    kept = [a for a in axes if a != "t" and (a != "c" or channel is None)]
    if "c" in kept:
        return da.moveaxis(data, kept.index("c"), 0), True
    return data, False


def image_layer(result: Path, meta: dict[str, Any]) -> tuple[LayerData | None, Frame | None]:
    """The run's input as an Image layer (every level of an OME-Zarr pyramid) and the segmented
    grid's frame; (None, None) when the input recorded in the provenance cannot be opened."""
    recorded = meta.get("config", {}).get("input")
    where = resolve(recorded["path"], result) if recorded else None
    if where is None:
        logger.info("the run's input '%s' is not found from here: labels only", recorded and recorded["path"])
        return None, None
    cfg = InputConfig.model_validate({**recorded, "path": str(where)})
    try:
        vol = open_input(cfg)
    except Exception as exc:  # noqa: BLE001 - moved, rewritten, unreadable: show the labels without it
        logger.info("the run's input '%s' cannot be opened (%s): labels only", where, exc)
        return None, None
    grid = physical_grid(vol, cfg.scale_level)
    frame = Frame(*grid) if grid else Frame((1.0,) * vol.ndim, (0.0,) * vol.ndim)
    if vol.ome is not None:
        group = Path(cfg.path) / cfg.dataset if cfg.dataset else Path(cfg.path)
        arrays, attrs = multiscale_arrays(group)
        scale, translate = level_transforms(attrs, arrays, vol.spatial_axes)
    else:
        arrays, scale, translate = [vol.array], list(frame.voxel_size), list(frame.origin)
    views = [spatial_view(a, vol.axes, cfg.channel) for a in arrays]
    data = [v[0] for v in views]
    norm = meta.get("normalisation") or {}
    config = meta.get("config", {})
    kept = {k: config[k] for k in KEPT if k in config}  # a preview or a new run on this image keeps its blocks
    if (meta.get("plan") or {}).get("write_shape"):  # the plan's, also when it was chosen automatically
        kept["blocks"] = {**kept.get("blocks", {}), "write_shape": meta["plan"]["write_shape"]}
    kwargs: dict[str, Any] = {"name": Path(cfg.path).stem + (f" {cfg.dataset}" if cfg.dataset else ""),
                              "scale": scale, "translate": translate, "multiscale": len(data) > 1,
                              "metadata": {"pipeline": {"input": {**recorded, "path": str(where)}, "run": kept}}}
    if "offset" in norm and "scale" in norm:  # what the network saw as 0..1
        kwargs["contrast_limits"] = [float(norm["offset"]), float(norm["offset"]) + float(norm["scale"])]
    if views[0][1]:
        kwargs["channel_axis"] = 0
    return (data if len(data) > 1 else data[0], kwargs, "image"), frame


def label_image_of(result: Path, meta: dict[str, Any]) -> Path | None:
    """The run's label image: ``labels/<name>`` of the result itself (standalone; also after the
    result was moved or copied), else the recorded one (under the input image); None: none."""
    recorded = meta.get("label_image")
    if not recorded:
        return None
    name = meta.get("config", {}).get("output", {}).get("label_name") or Path(recorded).name
    inside = result / "labels" / name
    if group_attrs(inside) is not None:
        return inside
    found = resolve(recorded, result)
    return found if found is not None and group_attrs(found) is not None else None


def label_arrays(result: Path, meta: dict[str, Any], frame: Frame | None) -> tuple[list[Any], dict[str, Any], str]:
    """The label image's levels with its scale/translation (NGFF metadata), else ``segmentation``."""
    group = label_image_of(result, meta)
    if group is not None:
        arrays, attrs = multiscale_arrays(group)
        nd = len(arrays[0].shape)
        scale, translate = level_transforms(attrs, arrays, list(range(nd)))
        return arrays, {"scale": scale, "translate": translate}, group.name
    seg = zarr.open_array(str(result / "segmentation"), mode="r")
    f = frame or Frame((1.0,) * seg.ndim, (0.0,) * seg.ndim)
    return [seg], {"scale": list(f.voxel_size), "translate": list(f.origin)}, "segmentation"


def part_rows(parts: Sequence[Path]) -> list[int]:
    """Rows of each Parquet part, from its footer."""
    import pyarrow.parquet as pq

    return [pq.ParquetFile(p).metadata.num_rows for p in parts]


def sample_parts(rows: Sequence[int], limit: int) -> list[int]:
    """Evenly spaced parts holding at least ``min(limit, total)`` rows (all of them when they fit)."""
    total = sum(rows)
    if total <= limit:
        return list(range(len(rows)))
    need = len(rows)
    for k in range(1, len(rows) + 1):  # the fewest evenly spaced parts that hold the limit
        picked = np.unique(np.linspace(0, len(rows) - 1, k).round().astype(int))
        if sum(rows[i] for i in picked) >= limit:
            need = k
            break
    return np.unique(np.linspace(0, len(rows) - 1, need).round().astype(int)).tolist()


def objects_features(result: Path, limit: int = FEATURES_LIMIT) -> tuple[dict[str, np.ndarray], str]:
    """The objects table as napari ``features`` (``index`` = object id) and a note: every row,
    or an evenly spaced sample of ``limit`` rows read from as few parts as hold them."""
    from ..stages.objects import part_files, read_objects

    parts = part_files(result)
    if not parts:
        return {}, "no objects table"
    rows = part_rows(parts) if parts[0].suffix == ".parquet" else [limit] * len(parts)
    picked = sample_parts(rows, limit)
    table = read_objects(result, [parts[i] for i in picked])
    total, n = sum(rows), len(table.get("id", ()))
    note = f"objects table: all {n:,} objects"
    if n > limit:
        keep = np.linspace(0, n - 1, limit).round().astype(np.int64)
        table = {k: v[keep] for k, v in table.items()}
        note = (f"objects table: a sample of {limit:,} of {total:,} objects (evenly spaced rows of "
                f"{len(picked)} of {len(parts)} parts); the table is in {result / 'objects'}")
    features = {"index": table.pop("id").astype(np.int64), **table} if table else {}
    return features, note


def labels_layer(result: Path, meta: dict[str, Any], frame: Frame | None, limit: int = FEATURES_LIMIT) -> LayerData:
    arrays, coords, name = label_arrays(result, meta, frame)
    features, note = objects_features(result, limit)
    kwargs = {"name": name, **coords, "multiscale": len(arrays) > 1, "features": features,
              "metadata": {"pipeline": {"result": str(result), "features_note": note,
                                        "region": meta.get("region")}}}
    return (arrays if len(arrays) > 1 else arrays[0], kwargs, "labels")


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


def result_layers(result: Path, limit: int = FEATURES_LIMIT) -> list[LayerData]:
    """Every layer of a result group (see the module docstring), image first."""
    meta = (group_attrs(result) or {}).get("pipeline", {})
    image, frame = image_layer(result, meta)
    layers = [image] if image else []
    labels = labels_layer(result, meta, frame, limit)
    if frame is None:  # no input: the segmented grid's frame is the label image's (or voxels)
        frame = Frame(tuple(labels[1]["scale"]), tuple(labels[1]["translate"]))
        first = labels[0][0] if isinstance(labels[0], list) else labels[0]
        seg = zarr.open_array(str(result / "segmentation"), mode="r")
        if tuple(first.shape) != tuple(seg.shape):  # level 0 finer than the segmentation: unknown frame
            frame = Frame((1.0,) * seg.ndim, (0.0,) * seg.ndim)
    layers.append(labels)
    plan = meta.get("plan")
    if plan:
        grid = Grid.of(plan)
        if len(grid.write) >= 2:
            layers.append(grid_layer(grid, frame))
        for extra in (skipped_layer(result, grid, frame), seams_layer(result, grid, frame)):
            if extra is not None:
                layers.append(extra)
    return layers


def describe(layers: Sequence[LayerData]) -> str:
    """One line per layer (name, type, shape): for logs and tests."""
    out = []
    for data, kwargs, kind in layers:
        first = data[0] if isinstance(data, list) and kind in ("image", "labels") else data
        shape = first.shape if hasattr(first, "shape") else (len(data),)
        out.append(json.dumps({"name": kwargs.get("name"), "type": kind, "shape": list(shape)}))
    return "\n".join(out)
