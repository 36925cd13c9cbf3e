"""The objects table's intensity statistics: the compiled pass equals its numpy reference, and the
blockwise table equals ``skimage.measure.regionprops_table`` on the whole volume (serial, Dask, resampled)."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import regionprops_table

from pipeline.run import segment
from pipeline.stages.intensity import fragment_intensity, intensity_columns, intensity_stats
from pipeline.stages.objects import combine_rows, read_objects, stats_rows
from pipeline.volume import synthetic
from pipeline.volume.io import open_array, write_zarr

COLUMNS = ("intensity_mean", "intensity_max", "intensity_min", "intensity_sum", "intensity_std")


@pytest.mark.parametrize("dtype", ["uint8", "uint16", ">u2", "int32", "float32", "float64"])
@pytest.mark.parametrize("nd", [2, 3])
def test_compiled_pass_equals_numpy_reference(dtype, nd):
    for seed in range(20):
        rng = np.random.default_rng(seed)
        k = int(rng.integers(0, 30))
        shape = tuple(int(x) for x in rng.integers(1, 12, nd))
        local = rng.integers(0, k + 1, shape).astype(np.uint16)
        table = np.concatenate([[0], rng.integers(0, 8, k)]).astype(np.uint32)  # shared objects; some removed
        data = (rng.random(shape) * 200 - (50 if np.dtype(dtype).kind != "u" else 0)).astype(dtype)
        got, want = fragment_intensity(local, table, data), intensity_stats(table[local], data)
        np.testing.assert_array_equal(got["id"], want["id"])
        for key in ("imin", "imax"):
            np.testing.assert_array_equal(got[key], want[key])
        for key in ("isum", "isq"):  # integers: exact; floats: summed in another order
            (np.testing.assert_array_equal if np.dtype(dtype).kind in "ui" else np.testing.assert_allclose)(got[key], want[key])


def test_partials_reduce_to_the_whole():
    """Partials of pieces, combined, equal the statistics of the whole (population std)."""
    rng = np.random.default_rng(3)
    labels, data = rng.integers(0, 5, (6, 7, 8)).astype(np.uint32), rng.integers(0, 1000, (6, 7, 8)).astype(np.uint16)
    parts = [stats_rows({"id": p["id"], "count": np.bincount(np.searchsorted(p["id"], labels[s][labels[s] > 0])),
                         "lo": np.zeros((len(p["id"]), 3)), "hi": np.zeros((len(p["id"]), 3)),
                         "sum": np.zeros((len(p["id"]), 3)), **p})
             for s in (np.s_[:2], np.s_[2:5], np.s_[5:]) for p in [intensity_stats(labels[s], data[s])]]
    cols = intensity_columns(combine_rows(parts), combine_rows(parts)["count"])
    for i, label in enumerate(range(1, 5)):
        v = data[labels == label].astype(np.float64)
        assert (cols["intensity_sum"][i], cols["intensity_min"][i], cols["intensity_max"][i]) == (v.sum(), v.min(), v.max())
        assert np.isclose(cols["intensity_mean"][i], v.mean()) and np.isclose(cols["intensity_std"][i], v.std())


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("intensity")
    image, _ = synthetic.generate(synthetic.appearance("demo", shape=(32, 96, 96)), seed=1)
    write_zarr(root / "in.zarr", image, chunks=(16, 48, 48), name="raw")
    return root, image


def run(root, image, name, cluster, **inp):
    out = segment({"input": {"path": str(root / "in.zarr"), "dataset": "raw", **inp},
                   "output": {"path": str(root / f"{name}.zarr")}, "blocks": {"write_shape": [16, 48, 48]},
                   "cluster": cluster})
    return open_array(out / "segmentation")[...], read_objects(out)


def check_against_regionprops(seg, table, image):
    ref = regionprops_table(seg.astype(np.int64), intensity_image=image,
                            properties=("label", "intensity_mean", "intensity_max", "intensity_min", "area"))
    np.testing.assert_array_equal(table["id"], ref["label"])
    np.testing.assert_array_equal(table["voxels"], ref["area"])
    np.testing.assert_array_equal(table["intensity_max"], ref["intensity_max"])
    np.testing.assert_array_equal(table["intensity_min"], ref["intensity_min"])
    at = seg > 0
    ids = np.searchsorted(ref["label"], seg[at])
    values = image[at].astype(np.float64)
    np.testing.assert_array_equal(table["intensity_sum"], np.bincount(ids, weights=values))  # uint16: exact
    np.testing.assert_allclose(table["intensity_mean"], ref["intensity_mean"], rtol=1e-12)
    mean = np.bincount(ids, weights=values) / ref["area"]
    std = np.sqrt(np.bincount(ids, weights=(values - mean[ids]) ** 2) / ref["area"])  # population std
    np.testing.assert_allclose(table["intensity_std"], std, rtol=1e-9, atol=1e-9)


def test_objects_table_intensity_equals_regionprops_serial_and_dask(demo):
    root, image = demo
    seg, table = run(root, image, "serial", {"kind": "serial"})
    assert table["blocks"].max() > 1  # objects span blocks
    assert image.dtype == np.uint16 and table["intensity_max"].max() > 1  # raw units, not normalised
    check_against_regionprops(seg, table, image)
    seg2, table2 = run(root, image, "dask", {"kind": "local", "n_workers": 2})
    np.testing.assert_array_equal(seg2, seg)
    for key in ("id", "voxels", *COLUMNS):
        np.testing.assert_array_equal(table2[key], table[key])


def test_objects_table_intensity_on_the_input_grid_with_diameter(demo):
    """``input.diameter``: labels restored to the input grid, intensities measured there."""
    root, image = demo
    seg, table = run(root, image, "zoomed", {"kind": "serial"}, diameter=[10, 14, 14])
    assert seg.shape == image.shape and len(table["id"])
    check_against_regionprops(seg, table, image)
