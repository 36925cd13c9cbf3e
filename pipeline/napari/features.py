"""The objects table as napari ``features`` of a Labels layer (``index`` = object id): every row, or
an evenly spaced sample of at most :data:`FEATURES_LIMIT` rows read from as few Parquet parts as
that takes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

FEATURES_LIMIT = 200_000  # rows of the objects table given to napari (a sample beyond)


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

