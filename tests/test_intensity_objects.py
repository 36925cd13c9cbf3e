"""The objects table's intensity statistics: the compiled passes equal their numpy references, the
blockwise table equals ``skimage.measure.regionprops_table`` and a whole-volume background ring on the
whole volume (serial, Dask, resampled, another channel), and the reduction's order does not depend on
how blocks were batched."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import regionprops_table

from pipeline.errors import UsageError
from pipeline.run import prepare, segment
from pipeline.stages.intensity import (
    block_partials,
    fragment_intensity,
    intensity_stats,
    ring_partials,
    ring_stats,
)
from pipeline.stages.objects import combine_rows, read_objects, scratch_layout, stats_rows
from pipeline.volume import synthetic
from pipeline.volume.io import open_array, write_zarr

COLUMNS = ("intensity_mean", "intensity_max", "intensity_min", "intensity_sum", "intensity_std", "background",
           "intensity_mean_corrected")


@pytest.mark.parametrize("dtype", ["uint8", "uint16", ">u2", "int32", "float32", "float64"])
@pytest.mark.parametrize("nd", [2, 3])
def test_compiled_pass_equals_numpy_reference(dtype, nd):
    for seed in range(20):
        rng = np.random.default_rng(seed)
        k, c = int(rng.integers(0, 30)), int(rng.integers(1, 4))
        shape = tuple(int(x) for x in rng.integers(1, 12, nd))
        local = rng.integers(0, k + 1, shape).astype(np.uint16)
        table = np.concatenate([[0], rng.integers(0, 8, k)]).astype(np.uint32)  # shared objects; some removed
        data = (rng.random((c, *shape)) * 200 - (50 if np.dtype(dtype).kind != "u" else 0)).astype(dtype)
        got, want = fragment_intensity(local, table, data), intensity_stats(table[local], data)
        np.testing.assert_array_equal(got["id"], want["id"])
        for key in ("imin", "imax"):
            np.testing.assert_array_equal(got[key], want[key])
        for key in ("isum", "isq"):  # integers: exact; floats: summed in another order
            (np.testing.assert_array_equal if np.dtype(dtype).kind in "ui" else np.testing.assert_allclose)(got[key], want[key])


@pytest.mark.parametrize("nd", [2, 3])
def test_ring_kernel_equals_numpy_reference(nd):
    """Ring partials of an own region inside its grown labels: compiled == shifted-copies reference,
    for objects inside, outside and across the region, at several widths and dtypes."""
    for seed in range(25):
        rng = np.random.default_rng(seed)
        r = int(rng.integers(1, 4))
        shape = tuple(int(x) for x in rng.integers(3, 14, nd))
        labels = (rng.integers(0, 6, shape) * (rng.random(shape) < 0.3)).astype([np.uint32, np.uint64][seed % 2])
        lo = [int(rng.integers(0, min(r, n - 1) + 1)) for n in shape]
        hi = [int(rng.integers(max(a + 1, n - r), n + 1)) for a, n in zip(lo, shape, strict=True)]
        own = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        data = rng.random((2, *labels[own].shape)).astype(np.float32)
        ids = np.unique(labels[own][labels[own] > 0])
        got, want = ring_partials(labels, own, data, r, ids), ring_stats(labels, data, r, own)
        np.testing.assert_array_equal(got["id"], want["id"])
        np.testing.assert_array_equal(got["rcount"], want["rcount"])
        np.testing.assert_allclose(got["rsum"], want["rsum"], rtol=1e-12)


def ring_reference(seg: np.ndarray, image: np.ndarray, r: int) -> dict[int, float]:
    """Per object, the mean of ``image`` over voxels in no object within chessboard distance ``r``:
    one binary dilation per object (the definition, not the algorithm)."""
    out = {}
    cube = np.ones((2 * r + 1,) * seg.ndim, bool)
    for i, sl in enumerate(ndimage.find_objects(seg), start=1):
        if sl is None:
            continue
        box = tuple(slice(max(s.start - r, 0), s.stop + r) for s in sl)
        ring = ndimage.binary_dilation(seg[box] == i, cube) & (seg[box] == 0)
        out[i] = float(image[box][ring].astype(np.float64).mean()) if ring.any() else np.nan
    return out


def test_whole_volume_ring_equals_dilation_definition():
    rng = np.random.default_rng(4)
    seg = ndimage.label(ndimage.binary_opening(rng.random((12, 20, 20)) < 0.35))[0].astype(np.uint32)
    image = rng.random((1, *seg.shape))
    got = ring_stats(seg, image, 2)
    want = ring_reference(seg, image[0], 2)
    for i, s, n in zip(got["id"], got["rsum"][:, 0], got["rcount"], strict=True):
        assert np.isclose(s / n, want[int(i)])


def test_reduction_order_does_not_depend_on_batches():
    """Float partials of the same blocks, written in other batches and files: the same bits."""
    rng = np.random.default_rng(3)
    labels, data = rng.integers(0, 5, (6, 7, 8)).astype(np.uint32), rng.random((1, 6, 7, 8)) * 1e3
    parts = []
    for b, s in enumerate((np.s_[:2], np.s_[2:5], np.s_[5:])):
        p = intensity_stats(labels[s], data[(slice(None), *[s])])
        found = {"id": p["id"], "count": np.bincount(np.searchsorted(p["id"], labels[s][labels[s] > 0])),
                 "lo": np.zeros((len(p["id"]), 3), np.int64), "hi": np.ones((len(p["id"]), 3), np.int64),
                 "sum": np.zeros((len(p["id"]), 3))}
        ring = {"id": np.array([1, 7], np.uint32), "rsum": rng.random((2, 1)), "rcount": np.array([3, 2])}
        parts.append(stats_rows(block_partials(found, p, ring), b))
    first = combine_rows(parts)
    for order in ([2, 0, 1], [1, 2, 0]):
        again = combine_rows([np.concatenate([parts[i] for i in order])[::-1]])
        for key, value in first.items():
            np.testing.assert_array_equal(again[key], value)
    assert list(first["id"]) == [1, 2, 3, 4, 7] and first["count"][-1] == 0  # 7: only in rings
    assert list(first["blocks"][:4]) == [3, 3, 3, 3] and first["blocks"][-1] == 0


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("intensity")
    image, _ = synthetic.generate(synthetic.appearance("demo", shape=(32, 96, 96)), seed=1)
    write_zarr(root / "in.zarr", image, chunks=(16, 48, 48), name="raw")
    other = (np.random.default_rng(2).random(image.shape) * 5e3).astype(np.float32)
    write_zarr(root / "in.zarr", np.stack([image.astype(np.float32), other]), chunks=(1, 16, 48, 48), name="two")
    return root, image, other


def run(root, name, cluster, inp=None, **more):
    out = segment({"input": {"path": str(root / "in.zarr"), "dataset": "raw", **(inp or {})},
                   "output": {"path": str(root / f"{name}.zarr")}, "blocks": {"write_shape": [16, 48, 48]},
                   "cluster": cluster, **more})
    return open_array(out / "segmentation")[...], read_objects(out)


def check_against_reference(seg, table, image, sfx="", r=2):
    ref = regionprops_table(seg.astype(np.int64), intensity_image=image,
                            properties=("label", "intensity_mean", "intensity_max", "intensity_min", "area"))
    np.testing.assert_array_equal(table["id"], ref["label"])
    np.testing.assert_array_equal(table["voxels"], ref["area"])
    np.testing.assert_array_equal(table[f"intensity_max{sfx}"], ref["intensity_max"])
    np.testing.assert_array_equal(table[f"intensity_min{sfx}"], ref["intensity_min"])
    at = seg > 0
    ids = np.searchsorted(ref["label"], seg[at])
    values = image[at].astype(np.float64)
    np.testing.assert_allclose(table[f"intensity_sum{sfx}"], np.bincount(ids, weights=values), rtol=1e-12)
    mean = np.bincount(ids, weights=values) / ref["area"]
    np.testing.assert_allclose(table[f"intensity_mean{sfx}"], mean, rtol=1e-12)
    np.testing.assert_allclose(table[f"intensity_mean{sfx}"], ref["intensity_mean"], rtol=1e-6)  # float32 sums there
    std = np.sqrt(np.bincount(ids, weights=(values - mean[ids]) ** 2) / ref["area"])  # population std
    np.testing.assert_allclose(table[f"intensity_std{sfx}"], std, rtol=1e-9, atol=1e-9)
    if r:
        ring = ring_reference(seg, image, r)
        want = np.array([ring[int(i)] for i in table["id"]])
        np.testing.assert_allclose(table[f"background{sfx}"], want, rtol=1e-12)
        np.testing.assert_allclose(table[f"intensity_mean_corrected{sfx}"], mean - want, rtol=1e-9)


def test_objects_table_intensity_equals_the_whole_volume_serial_and_dask(demo):
    root, image, _ = demo
    seg, table = run(root, "serial", {"kind": "serial"}, objects={"ring": 2})
    assert table["blocks"].max() > 1  # objects span blocks
    assert image.dtype == np.uint16 and table["intensity_max"].max() > 1  # raw units, not normalised
    check_against_reference(seg, table, image)
    np.testing.assert_array_equal(table["intensity_sum"], np.round(table["intensity_sum"]))  # uint16: exact
    seg2, table2 = run(root, "dask", {"kind": "local", "n_workers": 2}, objects={"ring": 2})
    np.testing.assert_array_equal(seg2, seg)
    for key in ("id", "voxels", "blocks", *COLUMNS):
        np.testing.assert_array_equal(table2[key], table[key])


def test_another_channel_and_a_wider_ring(demo):
    """``objects.channels`` measures a channel the network does not read (float32, columns ``_c1``)."""
    root, image, other = demo
    seg, table = run(root, "channels", {"kind": "serial"}, {"dataset": "two", "channel": 0},
                     objects={"channels": [1], "ring": 3})
    check_against_reference(seg, table, image.astype(np.float32), r=3)
    check_against_reference(seg, table, other, "_c1", r=3)


def test_objects_table_intensity_on_the_input_grid_with_diameter(demo):
    """``input.diameter``: labels restored to the input grid, intensities and rings measured there."""
    root, image, _ = demo
    seg, table = run(root, "zoomed", {"kind": "serial"}, {"diameter": [10, 14, 14]}, objects={"ring": 2})
    assert seg.shape == image.shape and len(table["id"])
    check_against_reference(seg, table, image)


def test_no_intensity_leaves_the_columns_out(demo):
    """``objects.intensity: false``: no intensity columns, the same labels and counts, and another
    scratch layout (a run begun with intensity is not resumed without it)."""
    root, *_ = demo
    seg, table = run(root, "plain", {"kind": "serial"}, objects={"intensity": False})
    assert not any(k.startswith(("intensity_", "background")) for k in table)
    seg2, measured = run(root, "measured", {"kind": "serial"})  # the default: no ring
    assert "intensity_mean" in measured and "background" not in measured
    np.testing.assert_array_equal(seg2, seg)
    np.testing.assert_array_equal(table["voxels"], measured["voxels"])
    cfg = {"input": {"path": str(root / "in.zarr"), "dataset": "raw"}, "output": {"path": str(root / "x.zarr")}}
    layouts = [scratch_layout(prepare({**cfg, "objects": o})) for o in ({}, {"intensity": False}, {"ring": 2})]
    assert layouts[1]["object_stats"] == "counts" and len({str(x) for x in layouts}) == 3


def test_a_channel_the_input_lacks_is_one_line(demo):
    root, *_ = demo
    cfg = {"input": {"path": str(root / "in.zarr"), "dataset": "raw"}, "output": {"path": str(root / "x.zarr")},
           "objects": {"channels": [2]}}
    with pytest.raises(UsageError, match=r"objects.channels names channel 2.*remove objects.channels"):
        prepare(cfg)
