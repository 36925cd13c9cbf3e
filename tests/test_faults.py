"""Never a wrong result after a fault (issue 21): every fault ends in the result of an
uninterrupted run or in a one-line refusal (exit 2) with no traceback, and loses nothing.

Faults: the input replaced by another of identical statistics, the model file or a config
value changed between a crash and its rerun, unreadable input (zarr chunk, TIFF page, HDF5
chunk; also on a LocalCluster and on SLURM), a full disk before and during a run, two runs on
one output (and the lock of a killed run), the client killed (SIGKILL) in every stage. The
slower matrix (LocalCluster variants, a large volume, costs) is ``benchmarks/faults.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from scipy import ndimage

from pipeline.cli import main
from pipeline.runtime.markers import marked_blocks
from pipeline.volume.io import open_array, open_group, write_zarr

from .helpers import KILL_CLIENT, passthrough_checkpoint
from .test_slurm import slurm  # noqa: F401 - the fixture: skipped without SLURM (required in CI)

SHAPE = (16, 64, 64)
BLOCKS = [8, 16, 16]  # 2 x 4 x 4 = 32 blocks


def volume(seed: int = 1) -> np.ndarray:
    """Foreground patches of two intensity levels (the passthrough model's embeddings)."""
    rng = np.random.default_rng(seed)
    fg = ndimage.gaussian_filter(rng.random(SHAPE), 1.5) > 0.5
    return (fg * np.where(ndimage.gaussian_filter(rng.random(SHAPE), 3) > 0.5, 1.0, 0.8)).astype(np.float32)


def config(tmp: Path, name: str, src: str = "in.zarr", **over: dict) -> Path:
    if not (tmp / "pt.pt").exists():
        passthrough_checkpoint(tmp / "pt.pt")
    cfg = {"input": {"path": str(tmp / src), "dataset": "raw"}, "output": {"path": str(tmp / f"{name}.zarr")},
           "model": {"checkpoint": str(tmp / "pt.pt")}, "blocks": {"write_shape": BLOCKS},
           "cluster": {"kind": "serial"}}
    for key, value in over.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(args: list[str], capsys) -> tuple[int, str]:
    code = main(["-q", *args])
    return code, capsys.readouterr().err


def one_line(err: str, *needles: str) -> str:
    """``err`` is one line (log lines of this run aside), no traceback, holding every needle."""
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and err.strip().splitlines()[-1] == lines[0], err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Box(" not in lines[0], lines[0]
    return lines[0]


def same_result(out: Path, ref: Path) -> None:
    np.testing.assert_array_equal(open_array(out / "segmentation")[...], open_array(ref / "segmentation")[...])
    assert (out / "objects.csv").read_text() == (ref / "objects.csv").read_text()
    if (ref / "labels" / "segmentation" / "0").exists():
        np.testing.assert_array_equal(open_array(out / "labels/segmentation/0")[...],
                                      open_array(ref / "labels/segmentation/0")[...])
    assert open_group(out).attrs["complete"] is True


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The input, a second input with identical statistics (the first mirrored along x), and
    the uninterrupted reference result of each."""
    tmp = tmp_path_factory.mktemp("faults")
    vol = volume()
    write_zarr(tmp / "in.zarr", vol, chunks=(8, 32, 32), name="raw")
    write_zarr(tmp / "mirrored.zarr", vol[..., ::-1].copy(), chunks=(8, 32, 32), name="raw")
    for name, src in (("reference", "in.zarr"), ("reference-mirrored", "mirrored.zarr")):
        assert main(["-q", "run", str(config(tmp, name, src))]) == 0
    return tmp


def crash_in(monkeypatch, cfg: Path, stage: str = "fragments", after: int = 6, mid: bool = False) -> None:
    """The client stops in a blockwise stage after ``after`` blocks (as if killed; its lock is
    released, which a killed run's is not: see the SIGKILL tests). ``mid``: the next batch
    writes every block (and its statistics) first, and stops just before its done marker."""
    from pipeline.runtime.store import Store
    from pipeline.stages.base import BlockStage

    done = []
    original, mark = BlockStage.run_batch, Store.mark_done

    def run_batch(self, linears, loaded, *args):
        if self.name == stage and len(done) >= after and not mid:
            raise KeyboardInterrupt  # what the CLI sees when the client is stopped
        if self.name == stage:
            done.extend(linears)
        return original(self, linears, loaded, *args)

    def mark_done(self, name, linears, records=None, files=()):
        if name == stage and len(done) > after:
            raise KeyboardInterrupt
        return mark(self, name, linears, records, files)

    with monkeypatch.context() as m:
        m.setattr(BlockStage, "run_batch", run_batch)
        m.setattr(Store, "mark_done", mark_done)
        assert main(["-q", "run", str(cfg)]) == 130


def copy_input(tmp: Path, src: str, dst: str) -> None:
    shutil.rmtree(tmp / dst, ignore_errors=True)
    shutil.copytree(tmp / src, tmp / dst)


# ---------------------------------------------------------------- 1. resume only over the same input


@pytest.mark.parametrize("stage", ["fragments", "relabel"])
def test_input_replaced_by_one_with_identical_statistics(data, monkeypatch, capsys, stage):
    """The issue's bug: a run stopped (in fragments, or in relabel: every fragment finished), its
    input replaced at the same path by another volume with the same statistics. The rerun refuses
    in one line (exit 2) naming the input and where it changed; with --recompute-changed it
    recomputes the changed blocks and every later stage, giving exactly the uninterrupted result
    of the new input."""
    copy_input(data, "in.zarr", "replaced-in.zarr")
    cfg = config(data, f"replaced-{stage}", "replaced-in.zarr")
    crash_in(monkeypatch, cfg, stage)
    out = data / f"replaced-{stage}.zarr"
    assert marked_blocks(out / "scratch" / f"done_{stage}") == 6  # in 3 marker files: 2 blocks per task
    assert len(list((out / "scratch" / f"done_{stage}").iterdir())) == 3
    copy_input(data, "mirrored.zarr", "replaced-in.zarr")  # same values, so the same percentiles
    code, err = run(["run", str(cfg)], capsys)
    assert code == 2
    one_line(err, "input '", "replaced-in.zarr' dataset 'raw' changed since this output was started",
             "finished blocks read different data", "first at z 0:", "--recompute-changed", "--overwrite")
    assert open_group(out).attrs["complete"] is False  # refused: nothing was written
    code, err = run(["run", str(cfg), "--recompute-changed"], capsys)
    assert code == 0, err
    same_result(out, data / "reference-mirrored.zarr")
    recomputed = open_group(out).attrs["pipeline"]["recomputed_blocks"]
    assert 0 < recomputed <= (6 if stage == "fragments" else 32)


@pytest.mark.parametrize("stage,min_size", [("fragments", 0), ("relabel", 0), ("fragments", 60)])
def test_killed_mid_batch_resumes_exactly(data, monkeypatch, capsys, stage, min_size):
    """A run stopped after a batch wrote its blocks (and statistics) but before its one done
    marker: the rerun, batching blocks otherwise (3 per task, not 4), computes that batch again,
    drops its unmarked statistics and gives the uninterrupted result (with ``min_size``: the
    fragment sizes kept in the markers' records)."""
    over = {"clustering": {"min_size": min_size}} if min_size else {}
    ref = data / "reference.zarr"
    if min_size:
        ref = data / "reference-min-size.zarr"
        assert main(["-q", "run", str(config(data, "reference-min-size", **over))]) == 0
    name = f"mid-{stage}-{min_size}"
    cfg = config(data, name, blocks={"blocks_per_task": 4}, **over)
    crash_in(monkeypatch, cfg, stage, after=8, mid=True)
    out = data / f"{name}.zarr"
    markers = out / "scratch" / f"done_{stage}"
    assert sorted(p.name for p in markers.iterdir()) == ["0-3-4.json", "4-7-4.json"]
    if stage == "relabel":  # the stopped batch's statistics were written, not marked
        assert len(list((out / "scratch" / "stats" / "0").iterdir())) == 3
    if min_size:
        assert all("sizes" in r for p in markers.iterdir() for r in json.loads(p.read_text().split("\n")[1]))
    cfg = config(data, name, blocks={"blocks_per_task": 3}, **over)
    code, err = run(["run", str(cfg)], capsys)
    assert code == 0, err
    same_result(out, ref)
    assert open_group(out).attrs["resumed_blocks"] == (8 if stage == "fragments" else 32)


def test_killed_mid_batch_resumed_on_a_dask_cluster(data, monkeypatch, client1):
    """The same, resumed on a Dask cluster with the input files touched (new times): the tasks
    that check inputs and recover finished blocks get their marker files by name, and rewrite
    the markers whose stamps changed (the next check reads nothing)."""
    from pipeline.config import load_config
    from pipeline.run import segment

    copy_input(data, "in.zarr", "dask-in.zarr")
    cfg = config(data, "mid-dask", "dask-in.zarr", blocks={"blocks_per_task": 4})
    crash_in(monkeypatch, cfg, "fragments", after=8, mid=True)
    markers = data / "mid-dask.zarr" / "scratch" / "done_fragments"
    before = {p.name: json.loads(p.read_text().split("\n")[1]) for p in markers.iterdir()}
    for f in (data / "dask-in.zarr").rglob("*"):  # the same voxels, new times
        os.utime(f, (time.time() + 10, time.time() + 10))
    with monkeypatch.context() as m:  # see the markers before the run finishes
        from pipeline.runtime.store import Store

        seen = {}
        finish = Store.finish
        m.setattr(Store, "finish", lambda self, attrs: (seen.update(
            (p.name, json.loads(p.read_text().split("\n")[1])) for p in markers.iterdir()), finish(self, attrs))[1])
        segment(load_config(cfg), client=client1)
    same_result(data / "mid-dask.zarr", data / "reference.zarr")
    assert open_group(data / "mid-dask.zarr").attrs["resumed_blocks"] == 8
    for name, records in before.items():  # restamped in place: same blocks, same digests, new stamps
        assert [r["input"] for r in seen[name]] == [r["input"] for r in records]
        assert [r["stamp"] for r in seen[name]] != [r["stamp"] for r in records]


SHARDS = {"shards": [16, 32, 32]}  # 4 shards of 2 x 2 x 2 blocks


@pytest.mark.parametrize("mid", [False, True], ids=["between-shards", "mid-shard"])
def test_sharded_fragments_resume_exactly(data, monkeypatch, capsys, mid):
    """Sharded fragments (one task per shard, streamed): a run stopped after its first shard (or with
    the second shard written but not marked) resumes to the uninterrupted result; the scratch holds one
    file per shard written."""
    name = f"sharded-{'mid' if mid else 'between'}"
    cfg = config(data, name, output=SHARDS)
    crash_in(monkeypatch, cfg, "fragments", after=8, mid=mid)
    out = data / f"{name}.zarr"
    assert marked_blocks(out / "scratch" / "done_fragments") == 8  # the first shard, one marker
    assert len(list((out / "scratch" / "done_fragments").iterdir())) == 1
    files = [p for p in (out / "scratch" / "fragments" / "c").rglob("*") if p.is_file()]
    assert len(files) == (2 if mid else 1)
    code, err = run(["run", str(cfg)], capsys)
    assert code == 0, err
    same_result(out, data / "reference.zarr")
    assert open_group(out).attrs["resumed_blocks"] == 8


def test_sharded_fragments_changed_input_recomputes_whole_shards(data, monkeypatch, capsys):
    """The input changed near one corner after the first shard finished (the blocks whose reads see it:
    8 of that shard's 16): --recompute-changed computes the whole shard again (a shard has one writer,
    its batch; its marker would otherwise vouch for a file rewritten since), and the result is the
    uninterrupted one of the new input."""
    copy_input(data, "in.zarr", "sharded-in.zarr")
    cfg = config(data, "sharded-replaced", "sharded-in.zarr", output={"shards": [16, 32, 64]})  # 2 x 2 x 4 blocks
    crash_in(monkeypatch, cfg, "fragments", after=16)
    raw = zarr.open_array(str(data / "sharded-in.zarr" / "raw"), mode="r+")
    raw[2:6, 4:12, 4:12] = 1.0  # inside block 0 (z 0:8, y 0:16, x 0:16): read by it and its 7 neighbours
    code, err = run(["run", str(cfg), "--recompute-changed"], capsys)
    assert code == 0, err
    out = data / "sharded-replaced.zarr"
    assert open_group(out).attrs["pipeline"]["recomputed_blocks"] == 16
    assert main(["-q", "run", str(config(data, "sharded-replaced-ref", "sharded-in.zarr"))]) == 0
    same_result(out, data / "sharded-replaced-ref.zarr")


def test_empty_mask_changed(data, tmp_path, monkeypatch, capsys):
    """Finished blocks that a changed empty.mask now skips: refused; recomputed (dropped) with
    consent, giving the uninterrupted result with the new mask."""
    mask = np.ones((2, 4, 4), np.uint8)
    write_zarr(tmp_path / "mask.zarr", mask, name="m")
    cfg = config(data, "masked", empty={"mask": {"path": str(tmp_path / "mask.zarr"), "dataset": "m"}})
    crash_in(monkeypatch, cfg)  # blocks 0..5 finished
    mask[:, :2, :3] = 0  # blocks 0 and 1 are now empty space (a block's mask box is grown by one mask voxel)
    write_zarr(tmp_path / "mask.zarr", mask, name="m")
    code, err = run(["run", str(cfg)], capsys)
    assert code == 2
    one_line(err, "2 finished blocks are now skipped as empty space (empty.mask")
    code, err = run(["run", str(cfg), "--recompute-changed"], capsys)
    assert code == 0, err
    ref = config(data, "masked-reference", empty={"mask": {"path": str(tmp_path / "mask.zarr"), "dataset": "m"}})
    assert main(["-q", "run", str(ref)]) == 0
    same_result(data / "masked.zarr", data / "masked-reference.zarr")


def test_input_restored_or_copied_again_resumes(data, monkeypatch, capsys):
    """Input files rewritten with the same content (a copy: new times) are checked by content and
    trusted: the run resumes every finished block and equals the reference."""
    copy_input(data, "in.zarr", "copied-in.zarr")
    cfg = config(data, "copied", "copied-in.zarr")
    crash_in(monkeypatch, cfg)
    time.sleep(0.01)
    copy_input(data, "in.zarr", "copied-in.zarr")  # the same voxels, new files
    code, err = run(["run", str(cfg)], capsys)
    assert code == 0, err
    same_result(data / "copied.zarr", data / "reference.zarr")
    assert open_group(data / "copied.zarr").attrs["resumed_blocks"] == 6


def test_changed_model_or_settings_refused_by_name(data, monkeypatch, capsys):
    """A changed model file (same path) and every config value that changes block outputs: one
    line naming it; --overwrite starts again."""
    cfg = config(data, "settings")
    crash_in(monkeypatch, cfg)
    (data / "pt.pt").rename(data / "pt.keep")
    passthrough_checkpoint(data / "pt.pt", gain=12.0)
    code, err = run(["run", str(cfg)], capsys)
    (data / "pt.pt").unlink()
    (data / "pt.keep").rename(data / "pt.pt")
    assert code == 2
    one_line(err, "other settings", f"model.checkpoint '{data / 'pt.pt'}' changed (digest", "--overwrite")
    for change, needle in [("clustering.threshold=0.7", "clustering/merge parameters: threshold"),
                           ("merge.min_contact=3", "min_contact 1 -> 3"),
                           ("empty.threshold=0.3", "empty: threshold 0.1 -> 0.3"),
                           ("blocks.write_shape=[8,32,32]", "blocks: write_shape [8, 16, 16] -> [8, 32, 32]"),
                           ("model.precision=float64", "model.precision float32 -> float64")]:
        code, err = run(["run", str(cfg), "--set", change], capsys)
        assert code == 2, change
        one_line(err, "holds an unfinished run made with other settings", needle)
    # without a write shape the resumed run keeps the one it began with (not the cost choice of today's cluster)
    code, err = run(["run", str(cfg), "--set", "blocks.write_shape=null"], capsys)
    assert code == 0, err
    same_result(data / "settings.zarr", data / "reference.zarr")
    code, err = run(["run", str(cfg), "--overwrite"], capsys)
    assert code == 0, err
    same_result(data / "settings.zarr", data / "reference.zarr")


def test_changed_statistics_are_named(tmp_path, monkeypatch, capsys):
    """With a percentile-normalised model, an input whose intensities changed is named as such."""
    from .conftest import make_checkpoint, random_volume

    write_zarr(tmp_path / "in.zarr", random_volume((8, 32, 32)), chunks=(8, 16, 16), name="raw")
    make_checkpoint(tmp_path / "m.pt")
    cfg = config(tmp_path, "o", model={"checkpoint": str(tmp_path / "m.pt")}, blocks={"write_shape": [4, 16, 16]})
    crash_in(monkeypatch, cfg, after=2)
    write_zarr(tmp_path / "in.zarr", random_volume((8, 32, 32)) // 2, chunks=(8, 16, 16), name="raw")
    code, err = run(["run", str(cfg)], capsys)
    assert code == 2
    one_line(err, "the input's intensity statistics (normalisation offset", "the input changed")


# ---------------------------------------------------------------- 2. unreadable input


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_corrupt_zarr_chunk(data, capsys):
    """A truncated chunk: one line naming the chunk file, its region and the fixes; with
    input.unreadable: empty the run finishes and records the chunk and region."""
    copy_input(data, "in.zarr", "corrupt-in.zarr")
    truncate(data / "corrupt-in.zarr" / "raw" / "c" / "1" / "0" / "1")
    cfg = config(data, "corrupt", "corrupt-in.zarr")
    code, err = run(["run", str(cfg)], capsys)
    assert code == 2
    one_line(err, f"chunk file '{data / 'corrupt-in.zarr' / 'raw' / 'c' / '1' / '0' / '1'}'",
             "(z 8:16, y 0:32, x 32:64) cannot be read", "copy the file again", "input.unreadable: empty",
             "empty.mask")
    code, err = run(["run", str(cfg), "--set", "input.unreadable=empty"], capsys)  # resumes
    assert code == 0, err
    meta = open_group(data / "corrupt.zarr").attrs["pipeline"]
    assert meta["unreadable_input"]["chunks"] == 1
    assert meta["unreadable_input"]["first"][0]["region"] == [8, 16, 0, 32, 32, 64]
    rows = json.loads((data / "corrupt.zarr" / "qc" / "unreadable.json").read_text())
    assert rows == meta["unreadable_input"]["first"]
    seg = open_array(data / "corrupt.zarr" / "segmentation")[...]
    assert not seg[8:16, 0:32, 32:64].any()  # read as empty (0): background
    from pipeline.qc.page import provenance_rows

    assert ("unreadable input", f"1 chunk(s) read as empty: chunk file '{data / 'corrupt-in.zarr/raw/c/1/0/1'}' "
            "(z 8:16, y 0:32, x 32:64)") in provenance_rows(meta)  # the report's provenance table


def test_truncated_tiff_page_and_corrupt_hdf5_chunk(tmp_path, capsys):
    import h5py
    import tifffile

    vol = (volume()[:8, :32, :32] * 1000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "v.tif", vol, compression="zlib")
    with tifffile.TiffFile(tmp_path / "v.tif") as tif:
        page = tif.pages[5]
        offset, count = page.dataoffsets[0], page.databytecounts[0]
    raw = bytearray((tmp_path / "v.tif").read_bytes())
    raw[offset:offset + count] = b"\0" * count
    (tmp_path / "v.tif").write_bytes(bytes(raw))
    cfg = config(tmp_path, "tif", "v.tif", input={"dataset": None}, blocks={"write_shape": [8, 16, 16]})
    code, err = run(["run", str(cfg)], capsys)
    assert code == 2
    one_line(err, f"input '{tmp_path / 'v.tif'}': page 5 (z 5:6, y 0:32, x 0:32) cannot be read")

    with h5py.File(tmp_path / "v.h5", "w") as f:
        f.create_dataset("raw", data=vol, chunks=(4, 16, 16), compression="gzip")
    with h5py.File(tmp_path / "v.h5", "r") as f:
        info = f["raw"].id.get_chunk_info(3)
    raw = bytearray((tmp_path / "v.h5").read_bytes())
    raw[info.byte_offset:info.byte_offset + info.size] = b"\xff" * info.size
    (tmp_path / "v.h5").write_bytes(bytes(raw))
    cfg = config(tmp_path, "h5", "v.h5", blocks={"write_shape": [8, 16, 16]})
    code, err = run(["run", str(cfg)], capsys)
    assert code == 2
    one_line(err, "input '", "v.h5' dataset 'raw': HDF5 chunk [0, 1, 1] of dataset '/raw'",
             "(z 0:4, y 16:32, x 16:32) cannot be read")


def test_corrupt_chunk_on_a_local_cluster_no_worker_traceback(data, tmp_path):
    """The same on a LocalCluster: the worker's error reaches the user as the one line; no
    worker logs a traceback (their logs are this process' stderr)."""
    copy_input(data, "in.zarr", "corrupt-local-in.zarr")
    truncate(data / "corrupt-local-in.zarr" / "raw" / "c" / "0" / "1" / "0")
    cfg = config(data, "corrupt-local", "corrupt-local-in.zarr", cluster={"kind": "local", "n_workers": 2})
    r = subprocess.run([sys.executable, "-m", "pipeline", "-q", "run", str(cfg)], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "Compute Failed" not in r.stderr, r.stderr
    one_line(r.stderr, "(z 0:8, y 32:64, x 0:32) cannot be read")


# ---------------------------------------------------------------- 3. space


@pytest.fixture
def small_disk(tmp_path):
    """A 6 MiB tmpfs (root only: skipped where it cannot be mounted)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({made.stderr.decode().strip()})")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_before_and_during_a_run(data, small_disk, capsys):
    """Clearly too little space: refused before starting, with the numbers (`pipeline plan`
    shows the estimate). The disk filling up mid-run: one line naming the path and what the run
    needs, exit 2, what was written kept; after space is freed the rerun resumes and gives the
    uninterrupted result."""
    out = small_disk / "out.zarr"
    cfg = config(data, "small", output={"path": str(out)})
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * ((6 << 20) - (64 << 10)))  # leaves 64 KiB
    code, err = run(["run", str(cfg)], capsys)
    assert code == 2
    one_line(err, f"output.path '{out}': its filesystem has", "free, and this run needs about", "segmentation",
             "check_space: false")
    assert not out.exists()
    assert main(["plan", str(cfg)]) == 0
    printed = capsys.readouterr().out
    assert "output_size" in printed and "output_free_space" in printed and "its filesystem has" in printed
    filler.unlink()
    filler.write_bytes(b"\0" * ((6 << 20) - (600 << 10)))  # 600 KiB left: the run starts (no check), fills it
    code, err = run(["run", str(cfg), "--set", "output.check_space=false"], capsys)
    assert code == 2
    one_line(err, "no space left on the device writing ", str(out), "free on its filesystem now: ",
             "this run needs about", "everything written so far is kept", "rerun the same command to resume")
    filler.unlink()
    code, err = run(["run", str(cfg), "--set", "output.check_space=false"], capsys)
    assert code == 0, err
    same_result(out, data / "reference.zarr")


# ---------------------------------------------------------------- 4. one run per output


def test_second_run_refused_then_killed_run_taken_over(data, tmp_path, caplog, capsys):
    """Two runs on one output: the second refuses naming the first (host, pid, since when). The
    first killed (SIGKILL, its lock left behind): the rerun takes the lock over with a warning,
    resumes and gives the uninterrupted result."""
    cfg = config(data, "twice")
    out = data / "twice.zarr"
    (tmp_path / "kill.py").write_text(KILL_CLIENT)
    first = subprocess.Popen([sys.executable, str(tmp_path / "kill.py"), "none", "0", "-q", "run", str(cfg)],
                             env={**os.environ, "PIPELINE_TEST_DELAY": "0.5"},  # a run that lasts
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while marked_blocks(out / "scratch" / "done_fragments") < 4:
        assert first.poll() is None and time.time() < deadline, "the first run ended before the second started"
        time.sleep(0.05)
    code, err = run(["run", str(cfg)], capsys)
    assert code == 2
    one_line(err, f"output.path '{out}' is in use by another run", f"pid {first.pid}", "since 20")
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert (out / "lock.json").exists()
    with caplog.at_level("WARNING", logger="pipeline.runtime.lock"):
        code, err = run(["run", str(cfg)], capsys)
    assert code == 0, err
    assert f"taking over the lock of an earlier run (host {os.uname().nodename}, pid {first.pid}" in caplog.text
    assert "is gone" in caplog.text
    assert not (out / "lock.json").exists()
    assert open_group(out).attrs["resumed_blocks"] >= 4
    same_result(out, data / "reference.zarr")


def test_lock_of_another_host(tmp_path, caplog):
    """Another host's lock: refused while it is refreshed, taken over once it is stale."""
    from pipeline.runtime.lock import LOCK, STALE_S, LockError, RunLock

    info = {"host": "elsewhere", "pid": 4242, "run_id": "r1", "started": time.time() - 60}
    (tmp_path / LOCK).write_text(json.dumps(info))
    lock = RunLock(tmp_path, "r2")
    with pytest.raises(LockError, match=r"in use by another run \(host elsewhere, pid 4242, since .*run r1"):
        lock.acquire()
    os.utime(tmp_path / LOCK, (time.time() - STALE_S - 10,) * 2)
    with caplog.at_level("WARNING", logger="pipeline.runtime.lock"):
        lock.acquire()
    assert "not refreshed for" in caplog.text
    assert json.loads((tmp_path / LOCK).read_text())["run_id"] == "r2"
    assert not list(tmp_path.glob("*.claim"))
    other = RunLock(tmp_path, "r3")
    with pytest.raises(LockError, match="run r2"):
        other.acquire()
    lock.release()
    assert not (tmp_path / LOCK).exists()
    other.release()


def test_lock_refreshed_recreated_and_lost(tmp_path, monkeypatch):
    """While a run lasts its lock's time is refreshed; a lock deleted by hand is made again; a
    lock another run took over stops this run at its next check, and is left to that run."""
    import pipeline.runtime.lock as lock_module
    from pipeline.runtime.lock import LOCK, LockError, RunLock

    monkeypatch.setattr(lock_module, "REFRESH_S", 0.02)
    lock = RunLock(tmp_path, "mine")
    lock.acquire()
    path = tmp_path / LOCK
    os.utime(path, (time.time() - 100,) * 2)
    time.sleep(0.3)
    assert time.time() - path.stat().st_mtime < 50
    path.unlink()
    time.sleep(0.3)
    assert json.loads(path.read_text())["run_id"] == "mine"
    (tmp_path / "other").write_text(json.dumps({"host": "elsewhere", "pid": 7, "run_id": "theirs", "started": 0}))
    os.replace(tmp_path / "other", path)
    time.sleep(0.3)
    with pytest.raises(LockError, match=r"taken over by another run \(host elsewhere, pid 7"):
        lock.check()
    lock.release()
    assert json.loads(path.read_text())["run_id"] == "theirs"


# ---------------------------------------------------------------- 6. the client killed in every stage



@pytest.mark.parametrize("stage,after", [("fragments", 3), ("merge", 1), ("relabel", 2), ("objects", 1)])
def test_client_killed_in_every_stage(data, tmp_path, stage, after, capsys):
    """SIGKILL of the client in each stage: the rerun of the same command takes the dead run's
    lock over, resumes what was finished, logs no traceback and gives the uninterrupted result."""
    cfg = config(data, f"killed-{stage}")
    (tmp_path / "kill.py").write_text(KILL_CLIENT)
    r = subprocess.run([sys.executable, str(tmp_path / "kill.py"), stage, str(after), "-q", "run", str(cfg)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr
    out = data / f"killed-{stage}.zarr"
    assert open_group(out).attrs["complete"] is False and (out / "lock.json").exists()
    code, err = run(["run", str(cfg)], capsys)
    assert code == 0 and "Traceback" not in err, err
    same_result(out, data / "reference.zarr")
    resumed = open_group(out).attrs["resumed_blocks"]
    assert resumed == (3 * 2 if stage == "fragments" else 32)  # nothing finished was lost (2 blocks per task)


def test_client_killed_in_the_label_pyramid(tmp_path, capsys):
    """SIGKILL of the client while it writes the label image's coarser levels (level 0 is the
    segmentation, already written): the rerun resumes and gives the uninterrupted result."""
    vol = np.concatenate([volume(), volume(2)[..., ::-1], volume(3), volume(4)[:, ::-1]], axis=2)  # (16, 64, 256)
    write_zarr(tmp_path / "wide.zarr", vol, chunks=(8, 32, 32), name="raw")
    ref = config(tmp_path, "wide-ref", "wide.zarr")
    assert main(["-q", "run", str(ref)]) == 0
    assert (tmp_path / "wide-ref.zarr" / "labels" / "segmentation" / "1").exists()  # a pyramid to write
    cfg = config(tmp_path, "wide-killed", "wide.zarr")
    (tmp_path / "kill.py").write_text(KILL_CLIENT)
    r = subprocess.run([sys.executable, str(tmp_path / "kill.py"), "labels", "1", "-q", "run", str(cfg)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr
    out = tmp_path / "wide-killed.zarr"
    assert open_group(out).attrs["complete"] is False
    code, err = run(["run", str(cfg)], capsys)
    assert code == 0 and "Traceback" not in err, err
    same_result(out, tmp_path / "wide-ref.zarr")
    for level in ("1",):  # (8, 32, 128): the last level
        np.testing.assert_array_equal(open_array(out / "labels/segmentation" / level)[...],
                                      open_array(tmp_path / "wide-ref.zarr/labels/segmentation" / level)[...])


@pytest.mark.usefixtures("slurm")
def test_corrupt_chunk_on_slurm_no_traceback_in_job_logs(data, tmp_path):
    """Unreadable input on SLURM workers: the one line, exit 2; no job log holds a traceback."""
    copy_input(data, "in.zarr", "corrupt-slurm-in.zarr")
    truncate(data / "corrupt-slurm-in.zarr" / "raw" / "c" / "1" / "1" / "1")
    cluster = {"kind": "slurm", "n_workers": 1, "cores": 1, "memory": "3GiB", "walltime": "00:10:00",
               "log_directory": str(tmp_path / "logs")}
    cfg = config(data, "corrupt-slurm", "corrupt-slurm-in.zarr", cluster=cluster)
    r = subprocess.run([sys.executable, "-m", "pipeline", "-q", "run", str(cfg)], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 2, r.stderr
    one_line(r.stderr, "(z 8:16, y 32:64, x 32:64) cannot be read")
    time.sleep(1)  # the cancelled job's last lines
    logs = list((tmp_path / "logs").glob("*.err"))
    assert logs
    for log in logs:
        assert "Traceback" not in log.read_text(), log.read_text()


def test_worker_that_lost_its_scheduler_logs_one_line():
    """A worker whose client was killed (LocalCluster) or whose driver ended (SLURM) logs the lost
    heartbeat as one WARNING line, not distributed's traceback."""
    import logging

    from pipeline.cluster.workerlog import ShutdownNoise

    try:
        raise ConnectionResetError(104, "Connection reset by peer")
    except ConnectionResetError:
        record = logging.LogRecord("distributed.worker", logging.ERROR, __file__, 1,
                                   "Failed to communicate with scheduler during heartbeat.", None, sys.exc_info())
    assert ShutdownNoise().filter(record) and record.exc_info is None and record.levelno == logging.WARNING
    assert record.getMessage() == ("Failed to communicate with scheduler during heartbeat. (ConnectionResetError: "
                                   "[Errno 104] Connection reset by peer)")
