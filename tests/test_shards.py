"""Sharded label arrays (``output.shards``): the shard geometry, one writer per shard (the relabel
batches are whole shards, recorded by their done markers), and a sharded run equal to an unsharded one
in its segmentation, objects table and label image, which every reader opens."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.cli import main
from pipeline.plan.shards import AUTO_FILES, describe_files, files, shard_batches, shard_shape
from pipeline.run import segment
from pipeline.runtime.store import Store
from pipeline.stages.objects import read_objects
from pipeline.volume import synthetic
from pipeline.volume.io import open_array, write_zarr


def test_shard_shape_rounds_to_whole_chunks_and_auto_only_for_many_files():
    assert shard_shape("none", (2048, 16384, 16384), (64, 256, 256)) is None
    assert shard_shape([100, 300, 300], (1000, 1000, 1000), (64, 256, 256)) == (128, 512, 512)
    assert shard_shape([4096, 300, 300], (100, 1000, 1000), (64, 256, 256)) == (128, 512, 512)  # cut to the array
    assert shard_shape([64, 256, 256], (1000, 1000, 1000), (64, 256, 256)) is None  # a shard of one chunk
    assert shard_shape("auto", (256, 1024, 1024), (64, 256, 256)) is None  # 64 chunk files
    tb = (2048, 16384, 16384)  # a dense 1 TB uint16 volume: the target, <= 10^4 files per array
    shard = shard_shape("auto", tb, (64, 256, 256))
    assert shard is not None and files(tb, shard) <= 10**4 < files(tb, (64, 256, 256))
    assert files(tb, shard_shape("auto", tb, (64, 64, 64))) <= 10**4
    assert "8,192" in describe_files("auto", {"segmentation": (tb, (64, 256, 256))})
    assert files((10, 10), (3, 4)) == 12 and AUTO_FILES == 10_000


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=3).flatmap(
    lambda grid: st.tuples(st.just(grid), st.lists(st.integers(1, 4), min_size=len(grid), max_size=len(grid)),
                           st.permutations(range(int(np.prod(grid)))).map(lambda p: p[: max(1, len(p) // 2)]))))
def test_shard_batches_partition_blocks_by_shard(case):
    grid, per, todo = case
    batches = shard_batches(todo, grid, per)
    assert sorted(i for b in batches for i in b) == sorted(todo)  # every block once
    shard_of = {i: tuple(c // p for c, p in zip(np.unravel_index(i, grid), per, strict=True)) for i in todo}
    owners = [{shard_of[i] for i in b} for b in batches]
    assert all(len(o) == 1 for o in owners)  # a batch is one shard
    assert len({next(iter(o)) for o in owners}) == len(batches)  # a shard is one batch
    for b in batches:  # the given order within a shard
        assert b == [i for i in todo if shard_of[i] == shard_of[b[0]]]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=3).flatmap(
    lambda grid: st.tuples(st.just(grid), st.lists(st.integers(1, 3), min_size=len(grid), max_size=len(grid)),
                           st.lists(st.integers(0, int(np.prod(grid)) - 1), max_size=5))))
def test_shard_mates_are_the_blocks_of_the_touched_shards(case):
    from pipeline.plan.blocks import BlockPlan
    from pipeline.stages.sharded import shard_mates

    grid, per, linears = case
    write = (2,) * len(grid)
    plan = BlockPlan(tuple(g * 2 for g in grid), write, (0,) * len(grid), (1,) * len(grid))
    assert tuple(plan.grid) == tuple(grid)
    shard = lambda i: tuple(c // p for c, p in zip(np.unravel_index(i, grid), per, strict=True))  # noqa: E731
    want = sorted(i for i in range(int(np.prod(grid))) if shard(i) in {shard(j) for j in linears})
    assert shard_mates(plan, [p * 2 for p in per], linears).tolist() == want


def test_clustering_threads_keep_the_order():
    import time

    from pipeline.stages.fragments import in_order

    def job(k):
        def run():
            time.sleep(0.002 * ((7 * k) % 5))  # finishing out of order
            return k
        return run

    for threads in (0, 1, 3):
        assert list(in_order((job(k) for k in range(20)), threads)) == list(range(20))


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    image, _ = synthetic.generate(synthetic.appearance("demo", shape=(32, 192, 192)), seed=3)
    write_zarr(root / "in.zarr", image, chunks=(16, 48, 48), name="raw")
    return root


def run(root: Path, name: str, shards, cluster, watch: dict | None = None) -> Path:
    cfg = {"input": {"path": str(root / "in.zarr"), "dataset": "raw"},
           "output": {"path": str(root / f"{name}.zarr"), "shards": shards},
           "blocks": {"write_shape": [16, 48, 48]}, "cluster": cluster}
    if watch is None:
        return segment(cfg)
    finish = Store.finish

    def snapshot(self, attrs):  # the relabel and fragments markers and files, before the scratch goes
        index = self.index("relabel", 32)
        watch["owner"], watch["names"] = index.owner.copy(), index.names
        watch["fragments"] = self.index("fragments", 32).owner.copy()
        watch["fragment_files"] = chunk_files(Path(self.path) / "scratch" / "fragments")
        watch["face_files"] = len(list((Path(self.path) / "scratch" / "faces").iterdir()))
        return finish(self, attrs)

    Store.finish = snapshot
    try:
        return segment(cfg)
    finally:
        Store.finish = finish


def chunk_files(array: Path) -> int:
    return sum(1 for p in (array / "c").rglob("*") if p.is_file()) if (array / "c").is_dir() else 0


@pytest.mark.parametrize("cluster", [{"kind": "serial"}, {"kind": "local", "n_workers": 2, "threads_per_worker": 2}],
                         ids=["serial", "dask"])
def test_sharded_run_equals_unsharded_one_writer_per_shard(volume, cluster):
    plain = run(volume, f"plain-{cluster['kind']}", "none", cluster)
    watch: dict = {}
    sharded = run(volume, f"sharded-{cluster['kind']}", [32, 96, 96], cluster, watch)
    seg, ref = open_array(sharded / "segmentation", mode="r"), open_array(plain / "segmentation", mode="r")
    assert seg.shards == (32, 96, 96) and seg.chunks == (16, 48, 48) and ref.shards is None
    np.testing.assert_array_equal(seg[...], ref[...])
    a, b = read_objects(sharded), read_objects(plain)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert chunk_files(sharded / "segmentation") == 4 < chunk_files(plain / "segmentation")
    # one writer per shard: the blocks of each shard (grid (2, 4, 4), 2 x 2 blocks in y, x per shard)
    # were relabelled by one task, whose marker names them all; the same for the fragments scratch,
    # sharded alike: one file and one task (one faces file) per shard
    for key in ("owner", "fragments"):
        owner = watch[key].reshape(2, 4, 4)
        for y in range(2):
            for x in range(2):
                held = owner[:, 2 * y: 2 * y + 2, 2 * x: 2 * x + 2]
                assert len(set(held[held >= 0].tolist())) == 1
        assert len(set(watch[key][watch[key] >= 0].tolist())) == 4
    assert watch["fragment_files"] == 4 and watch["face_files"] == 4
    # the label image: every level equal, sharded where asked, valid OME-Zarr 0.5
    levels = json.loads((sharded / "labels" / "segmentation" / "zarr.json").read_text())["attributes"]["ome"]
    for ds in levels["multiscales"][0]["datasets"]:
        x, y = (zarr.open_array(str(p / "labels" / "segmentation" / ds["path"]), mode="r") for p in (sharded, plain))
        np.testing.assert_array_equal(x[...], y[...])


def test_sharded_output_opens_everywhere(volume, capsys):
    out = run(volume, "readers", [32, 96, 96], {"kind": "serial"})
    from ome_zarr_models.v05 import Image, ImageLabel, Labels  # noqa: F401 - the label image validates

    ImageLabel.from_zarr(zarr.open_group(str(out / "labels" / "segmentation"), mode="r"))
    from ome_zarr.io import parse_url  # what napari-ome-zarr reads with
    from ome_zarr.reader import Label, Reader

    from pipeline.qc.integrity import check_integrity

    nodes = [n for n in Reader(parse_url(str(out / "labels" / "segmentation")))() if n.load(Label) is not None]
    assert nodes and np.array_equal(np.asarray(nodes[0].data[0]), open_array(out / "segmentation", mode="r")[...])
    found = check_integrity(out)
    assert not found["damaged"], found
    assert main(["-q", "report", str(out)]) == 0
    from pipeline.napari._reader import get_reader

    layers = get_reader(str(out))(str(out))
    assert any(np.asarray(data[0] if isinstance(data, list) else data).max() > 0 for data, *_ in layers)


def test_lost_shard_found_and_repaired(volume, tmp_path):
    """A finished sharded output loses a segmentation shard: the integrity check names it, `run
    --repair` computes its region again (one writer: the repair) and the output is as before."""
    import yaml

    from pipeline.qc.integrity import check_integrity

    cfg = {"input": {"path": str(volume / "in.zarr"), "dataset": "raw"},
           "output": {"path": str(tmp_path / "out.zarr"), "shards": [32, 96, 96]},
           "blocks": {"write_shape": [16, 48, 48]}, "cluster": {"kind": "serial"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["-q", "run", str(tmp_path / "c.yaml")]) == 0
    out = tmp_path / "out.zarr"
    before = open_array(out / "segmentation", mode="r")[...]
    seg = (out / "segmentation").resolve()
    victim = sorted(p for p in (seg / "c").rglob("*") if p.is_file())[1]
    victim.unlink()
    found = check_integrity(out)
    assert len(found["damaged"]) == 1, found
    assert main(["-q", "run", str(tmp_path / "c.yaml"), "--repair"]) == 0
    assert victim.exists() and not check_integrity(out)["damaged"]
    np.testing.assert_array_equal(open_array(out / "segmentation", mode="r")[...], before)
