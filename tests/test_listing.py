"""The store's listing as one flag per chunk: the directory walk of a local store and the streamed key
listing of any store both equal the chunks written, in every key layout zarr has (v3 ``c/z/y/x``, v3 with
v2 keys, v2 ``z.y.x`` and ``z/y/x``, sharded); keys outside the grid and metadata are ignored."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

import pipeline.plan.listing as listing
from pipeline.config import InputConfig
from pipeline.volume.io import open_input

LAYOUTS = {
    "v3": {"zarr_format": 3},
    "v3-v2-keys-dot": {"zarr_format": 3, "chunk_key_encoding": {"name": "v2", "separator": "."}},
    "v3-v2-keys-slash": {"zarr_format": 3, "chunk_key_encoding": {"name": "v2", "separator": "/"}},
    "v2-dot": {"zarr_format": 2},
    "v2-slash": {"zarr_format": 2, "chunk_key_encoding": {"name": "v2", "separator": "/"}},
    "v3-sharded": {"zarr_format": 3, "shards": (8, 8, 16)},
}


@pytest.mark.parametrize("walk", [True, False], ids=["walk", "keys"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_listing_equals_the_chunks_written(tmp_path, layout, walk, monkeypatch):
    kw = dict(LAYOUTS[layout])
    sharded = kw.get("shards")
    arr = zarr.create_array(str(tmp_path / "in.zarr"), shape=(20, 30, 70), chunks=(4, 4, 8), dtype="uint16",
                            fill_value=0, **kw)
    cell = sharded or (4, 4, 8)
    grid = tuple(-(-n // c) for n, c in zip(arr.shape, cell, strict=True))
    rng = np.random.default_rng(len(layout))
    want = rng.random(grid) < 0.3
    for idx in zip(*np.nonzero(want), strict=True):
        box = tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(idx, cell, arr.shape, strict=True))
        arr[box] = 7
    if not walk:
        monkeypatch.setattr(listing, "_walk_local", lambda *a: False)
        monkeypatch.setattr(listing, "LIST_BATCH", 5)  # several batches
    stored, size = listing.stored_chunks(open_input(InputConfig(path=tmp_path / "in.zarr")))
    assert size == cell
    np.testing.assert_array_equal(stored, want)


def test_listing_ignores_what_is_not_a_chunk_of_the_grid(tmp_path):
    arr = zarr.create_array(str(tmp_path / "in.zarr"), shape=(8, 8), chunks=(4, 4), dtype="uint8")
    arr[:4, :4] = 1
    (tmp_path / "in.zarr" / "c" / "9").mkdir()
    (tmp_path / "in.zarr" / "c" / "9" / "0").write_bytes(b"x")  # past the grid
    (tmp_path / "in.zarr" / "c" / "0" / "notes.txt").write_text("x")  # not a chunk name
    stored, _ = listing.stored_chunks(open_input(InputConfig(path=tmp_path / "in.zarr")))
    np.testing.assert_array_equal(stored, [[True, False], [False, False]])
