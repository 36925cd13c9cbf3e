"""The ``objects`` stage: one row per object (id, voxels, bounding box, centroid in voxels
and physical units, physical volume, blocks spanned, the input's intensity: see
:mod:`.intensity`), reduced by id range on the workers.

Each relabel task writes its blocks' partial statistics split by id range (``part``, of
:data:`ROWS_PER_PART` ids); one task per part combines them and writes
``objects/part-<part>.parquet``. The client only counts rows: it never holds per-object
data, except to write ``objects.csv`` for small results.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..plan.measure import Measure
from ..runtime.engine import Batch, Engine
from ..runtime.faces import FACES_LAYOUT
from ..runtime.store import OBJECTS, Store
from ..runtime.tasks import batched
from .ids import FRAGMENTS_LAYOUT, combine_stats
from .intensity import OWN, RING, combine_intensity, intensity_columns

if TYPE_CHECKING:
    from ..plan.prepare import Prepared

# object ids per part: a part's partial rows (96 bytes each, one per object and block it touches; 128
# with the intensity partials) and the combine's copies of them take a worker about 600 bytes per id at
# most (measured before the intensity partials: ~800 expected with them), ~80 MiB, whatever the number
# of objects (2**20 took 600 MiB); a part of the table is a Parquet file of ~10 MB (~15 MB with intensity)
ROWS_PER_PART = 2**17
CSV_LIMIT = 100_000  # objects.csv is written up to this many objects (output.objects_csv: auto)
PARTS_PER_TASK = 16


def part_of(ids: np.ndarray) -> np.ndarray:
    return ((np.asarray(ids, dtype=np.int64) - 1) // ROWS_PER_PART).astype(np.int64)


def stats_rows(stats: dict[str, np.ndarray], block: int = -1) -> np.ndarray:
    """Partial statistics of ``block`` as one structured array (what the stats files hold); with the
    intensity partials (:mod:`.intensity`, one value per measured channel) when ``stats`` has them. A
    row of an object only in the block's background rings has ``count`` 0 and neutral bounds."""
    nd = stats["lo"].shape[1] if stats["lo"].ndim == 2 else 0
    c = stats["isum"].shape[1] if "isum" in stats else 0
    dtype = [("id", "u8"), ("block", "i8"), ("count", "i8"), ("lo", "i8", (nd,)), ("hi", "i8", (nd,)),
             ("sum", "f8", (nd,)), *((f, "f8", (c,)) for f in (*OWN, *RING) if f in stats),
             *((("rcount", "i8"),) if "rcount" in stats else ())]
    rows = np.zeros(len(stats["id"]), dtype=dtype)
    for key in rows.dtype.names:
        if key != "block":
            rows[key] = stats[key]
    rows["block"] = block
    return rows


def combine_rows(parts: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """One row per object id of the partial rows, summed in (id, block) order (``blocks``: how many
    blocks hold its voxels; the intensity partials, see :mod:`.intensity`)."""
    if not parts:
        return combine_stats([]) | {"blocks": np.zeros(0, np.int64)}
    rows = np.concatenate(parts)
    rows = rows[np.lexsort((rows["block"], rows["id"]))]  # the same order whatever the batches were
    combined = combine_stats([{k: rows[k] for k in ("id", "count", "lo", "hi", "sum")}])
    at, n = np.searchsorted(combined["id"], rows["id"]), len(combined["id"])
    combined["blocks"] = np.bincount(at, weights=rows["count"] > 0, minlength=n).astype(np.int64)
    return combined | combine_intensity(rows, at, n)


def table(objects: dict[str, np.ndarray], voxel_size: Sequence[float] | None,
          origin: Sequence[float] | None = None, measure: Measure | None = None) -> dict[str, np.ndarray]:
    """Named columns: ids, voxels, bbox (start inclusive, end exclusive), centroid; with a
    voxel size also the centroid in physical units (``position_<axis>`` = centroid * voxel size
    + ``origin``, the image's coordinates) and ``volume``; with ``measure`` the input's
    intensity columns (see :mod:`.intensity`)."""
    nd = objects["lo"].shape[1] if objects["lo"].ndim == 2 else 0
    axes = "zyx"[-nd:] if nd else ""
    count = objects["count"]
    centroid = objects["sum"] / np.maximum(count, 1)[:, None] if nd else np.zeros((len(count), 0))
    cols: dict[str, np.ndarray] = {"id": objects["id"].astype(np.uint64), "voxels": count.astype(np.int64)}
    cols |= {f"bbox_start_{a}": objects["lo"][:, i] for i, a in enumerate(axes)}
    cols |= {f"bbox_end_{a}": objects["hi"][:, i] for i, a in enumerate(axes)}
    cols |= {f"centroid_{a}": centroid[:, i] for i, a in enumerate(axes)}
    if voxel_size:
        shift = origin or (0.0,) * nd
        cols |= {f"position_{a}": centroid[:, i] * voxel_size[i] + shift[i] for i, a in enumerate(axes)}
        cols["volume"] = count * float(np.prod(voxel_size))
    cols["blocks"] = objects.get("blocks", np.ones(len(count), np.int64)).astype(np.int64)
    return cols | (intensity_columns(objects, count, measure) if measure else {})


def write_part(path: Path, cols: dict[str, np.ndarray]) -> None:
    """One part as Parquet; as CSV (same name, ``.csv``) where pyarrow is not installed (a
    stripped-down environment: pyarrow is a dependency of the package)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        write_csv(path.with_suffix(".csv"), cols)
        return
    pq.write_table(pa.table(cols), path)
    release_arrow()


def release_arrow() -> None:
    """Return the memory Arrow's own allocator kept after a write or read (it keeps freed blocks:
    a worker's RSS then stays at the size of its largest Parquet part, stage after stage)."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def part_files(result: str | Path) -> list[Path]:
    folder = Path(result) / OBJECTS
    return sorted(folder.glob("part-*.parquet")) or sorted(folder.glob("part-*.csv"))


def read_part(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".csv":
        names = path.open().readline().strip().split(",")
        data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
        return {n: data[:, i] for i, n in enumerate(names)}
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    cols = {n: table.column(n).to_numpy() for n in table.column_names}
    del table
    release_arrow()
    return cols


def read_objects(path: str | Path, parts: Sequence[Path] | None = None) -> dict[str, np.ndarray]:
    """The objects table (every part, or the given ones), concatenated: for results that fit in memory."""
    data = [read_part(p) for p in (part_files(path) if parts is None else parts)]
    if not data:
        return {}
    return {k: np.concatenate([d[k] for d in data]) for k in data[0]}


def write_csv(path: Path, cols: dict[str, np.ndarray]) -> None:
    """``objects.csv``: integers as integers, centroids to 3 decimals, volumes, intensity means, standard
    deviations and backgrounds to 6 digits, intensity sums, minima and maxima to 15."""
    names = list(cols)
    fmt = ["%.3f" if n.startswith(("centroid", "position")) else
           "%.6g" if n == "volume" or n.startswith(("intensity_mean", "intensity_std", "background")) else
           "%.15g" if n.startswith("intensity_") else "%d" for n in names]
    with open(path, "w") as f:
        f.write(",".join(names) + "\n")
        if len(cols["id"]):
            data = np.empty((len(cols["id"]), len(names)), dtype=object)
            for j, n in enumerate(names):
                data[:, j] = cols[n]
            np.savetxt(f, data, fmt=fmt, delimiter=",")


class ObjectsStage:
    name = "objects"

    def __init__(self, store: Store, voxel_size: Sequence[float] | None, origin: Sequence[float] | None = None,
                 measure: Measure | None = None) -> None:
        self.store = store
        self.voxel_size, self.origin, self.measure = voxel_size, origin, measure

    def reduce_parts(self, parts: Batch) -> int:
        rows = 0
        for part in parts:
            cols = table(combine_rows(self.store.read_stats(part)), self.voxel_size, self.origin, self.measure)
            write_part(Path(self.store.path) / OBJECTS / f"part-{part:05d}.parquet", cols)
            rows += len(cols["id"])
        return rows

    def run(self, engine: Engine, n: int, csv: bool | None) -> dict[str, Any]:
        """Reduce and write every part; ``objects.csv`` too when asked (``None``: when small)."""
        parts = max(1, -(-n // ROWS_PER_PART))
        rows = sum(engine.map(self.reduce_parts, batched(range(parts), PARTS_PER_TASK), desc=self.name))
        if rows != n:
            raise RuntimeError(f"objects table has {rows} rows for {n} objects")
        written = csv if csv is not None else n <= CSV_LIMIT
        if written:
            write_csv(Path(self.store.path) / "objects.csv", read_objects(self.store.path))
        return {"rows": rows, "parts": parts, "csv": written,
                "intensity": list(self.measure.suffixes) if self.measure else None}


def scratch_layout(run: Prepared) -> dict[str, Any]:
    """How a segment run's scratch is laid out, recorded with its resume key (a run of another
    layout is not resumed): object rows per part, fragment ids, what the rows measure."""
    return {"object_rows_per_part": ROWS_PER_PART, "fragments": FRAGMENTS_LAYOUT, "faces": FACES_LAYOUT,
            "object_stats": run.measure.layout if run.measure else "counts"}


def timelapse_table(out: Path, runs: Sequence[tuple[int, int, Path]], csv: bool | None) -> dict[str, Any]:
    """A time-lapse's objects table in ``out``: its time points' tables (``runs``: t, the input's time
    point, its run's output) as one, with ``t`` and ``timepoint`` first (:mod:`pipeline.runtime.timelapse`)."""
    rows = 0
    for old in part_files(out):
        old.unlink()
    empty = None
    for t, k, run in runs:
        for i, part in enumerate(part_files(run)):
            cols = read_part(part)
            n = len(cols["id"])
            cols = {"t": np.full(n, t, np.int32), "timepoint": np.full(n, k, np.int32), **cols}
            if n == 0:  # a time point without objects (its table has fewer columns): no rows to add
                empty = (f"part-{t:05d}-{i:05d}.parquet", cols) if empty is None else empty
                continue
            write_part(out / "objects" / f"part-{t:05d}-{i:05d}.parquet", cols)
            rows += n
    if rows == 0 and empty is not None:
        write_part(out / "objects" / empty[0], empty[1])
    written = csv if csv is not None else rows <= CSV_LIMIT
    if written:
        write_csv(out / "objects.csv", read_objects(out))
    return {"rows": rows, "csv": written}
