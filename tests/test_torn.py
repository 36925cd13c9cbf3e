"""Torn and missing files (issue 28, item 4): a run killed, then the files it wrote last cut in
half or deleted (what a node crash does to writes not yet on disk): the rerun finds them through
what the done markers vouch for, computes those batches again, says so in one line, and ends
with the uninterrupted result; it never dies on them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.runtime.integrity import check_marker, owned_chunks, vouch
from pipeline.runtime.markers import read_marker_whole, write_marker
from pipeline.volume.io import open_group, write_zarr

from .helpers import KILL_CLIENT
from .test_faults import config, data, same_result  # noqa: F401 - data: the module's input and reference


def newest(out: Path, n: int) -> list[Path]:
    """The ``n`` files of the output written last (the lock aside: it is refreshed, not written once)."""
    files = [p for p in out.rglob("*") if p.is_file() and p.name != "lock.json"]
    return sorted(files, key=lambda p: p.stat().st_mtime_ns)[len(files) - n:]


def kill_then_tear(tmp: Path, name: str, stage: str, after: int, torn: int, delete: bool) -> list[Path]:
    cfg = config(tmp, name)
    script = tmp / "kill.py"
    script.write_text(KILL_CLIENT)
    r = subprocess.run([sys.executable, str(script), stage, str(after), "-q", "run", str(cfg)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == -9, r.stderr
    hit = newest(tmp / f"{name}.zarr", torn)
    for p in hit:
        if delete:
            p.unlink()
        else:
            data = p.read_bytes()
            p.write_bytes(data[: len(data) // 2])
    return hit


@settings(max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stage=st.sampled_from([("fragments", 1), ("fragments", 5), ("merge", 1), ("relabel", 1), ("relabel", 4),
                              ("objects", 1)]),
       torn=st.integers(1, 3), delete=st.booleans())
def test_killed_then_recent_files_torn_resumes_identically(data, stage, torn, delete):  # noqa: F811
    name = f"torn-{stage[0]}-{stage[1]}-{torn}-{delete}-{uuid.uuid4().hex[:6]}"  # (hypothesis may replay it)
    hit = kill_then_tear(data, name, *stage, torn, delete)
    cfg = data / f"{name}.yaml"
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "-q", "run", str(cfg)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, (hit, r.stderr)
    assert "Traceback" not in r.stderr and not [x for x in r.stderr.splitlines() if x.startswith("error")], r.stderr
    same_result(data / f"{name}.zarr", data / "reference.zarr")
    shutil.rmtree(data / f"{name}.zarr")


def test_a_torn_file_is_named_in_one_line(data, caplog):  # noqa: F811
    """A fragments chunk cut in half after the kill: one warning line names it and the batch is
    computed again."""
    from pipeline.cli import main

    name = "torn-named"
    kill_then_tear(data, name, "relabel", 1, 0, False)
    chunk = sorted((data / f"{name}.zarr" / "scratch" / "fragments" / "c").rglob("*"),
                   key=lambda p: p.stat().st_mtime_ns if p.is_file() else 0)[-1]
    chunk.write_bytes(chunk.read_bytes()[:10])
    assert main(["-q", "run", str(data / f"{name}.yaml")]) == 0
    lines = [r.getMessage() for r in caplog.records if "missing or damaged files" in r.getMessage()]
    assert len(lines) == 1 and "fragments: 1 finished batch(es) (2 blocks)" in lines[0], lines
    assert f"{chunk.relative_to(data / f'{name}.zarr')}: 10 of " in lines[0], lines[0]
    same_result(data / f"{name}.zarr", data / "reference.zarr")
    assert open_group(data / f"{name}.zarr").attrs["complete"] is True


def test_vouch_and_check(tmp_path):
    """A marker vouches for sizes and CRC-32; the check finds a file missing, short, changed
    (with content), or the marker itself cut short."""
    (tmp_path / "a").write_bytes(b"0123456789")
    (tmp_path / "b").write_bytes(b"abc")
    folder = tmp_path / "done"
    folder.mkdir()
    name = write_marker(folder, [3, 4], None, vouch(tmp_path, [tmp_path / "a", tmp_path / "b", tmp_path / "c"]))
    ids, records, files = read_marker_whole(folder, name)
    assert ids.tolist() == [3, 4] and records is None and files["c"] == [-1, 0] and files["a"][0] == 10
    assert check_marker(folder, name, tmp_path, content=True) is None
    (tmp_path / "b").write_bytes(b"abd")
    assert check_marker(folder, name, tmp_path, content=False) is None  # same size: only content sees it
    assert check_marker(folder, name, tmp_path, content=True) == "b: changed (CRC-32)"
    (tmp_path / "a").write_bytes(b"01234")
    assert check_marker(folder, name, tmp_path, content=False) == "a: 5 of 10 bytes"
    (tmp_path / "a").unlink()
    assert check_marker(folder, name, tmp_path, content=False) == "a: missing"
    text = (folder / name).read_text()
    (folder / name).write_text(text[: len(text) // 2])
    assert "unreadable" in check_marker(folder, name, tmp_path, content=False)
    json.loads(text.splitlines()[0])  # (the whole marker was valid)


@pytest.mark.parametrize("chunks,boxes,want", [
    ((4, 4), [((0, 0), (4, 8))], ["c/0/0", "c/0/1"]),
    ((4, 4), [((2, 0), (4, 4))], []),  # straddles two chunk rows: owns none
    ((4, 4), [((8, 8), (4, 4))], ["c/2/2"]),  # the last chunk, cut by the array's end (10)
    ((8, 8), [((0, 0), (4, 4))], []),  # a chunk larger than the block: shared, not vouched
])
def test_owned_chunks(tmp_path, chunks, boxes, want):
    import zarr

    from pipeline.geometry import Box

    a = zarr.create_array(str(tmp_path / "a.zarr"), shape=(10, 10), chunks=chunks, dtype="u1")
    got = owned_chunks(a, tmp_path / "a.zarr", [Box(o, s) for o, s in boxes])
    assert sorted(str(p.relative_to(tmp_path / "a.zarr")).replace(os.sep, "/") for p in got) == want
    assert all(isinstance(p, Path) for p in got)


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "-q", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("lost", ["segmentation", "label level"])
def test_deleted_chunk_of_a_finished_output_found_and_repaired(tmp_path, lost):
    """A finished output loses a chunk: `verify --integrity` names it and its region (exit 1),
    `run --repair` computes it again by a region run, equal to what the run wrote (same bytes),
    and the output equals the uninterrupted reference; a second check passes (exit 0)."""
    from .test_faults import volume

    vol = np.concatenate([volume(), volume(2)[..., ::-1], volume(3), volume(4)[:, ::-1]], axis=2)  # (16, 64, 256)
    write_zarr(tmp_path / "wide.zarr", vol, chunks=(8, 32, 32), name="raw")
    ref, cfg = config(tmp_path, "ref", "wide.zarr"), config(tmp_path, "out", "wide.zarr")
    for c in (ref, cfg):
        assert _run_cli("run", str(c)).returncode == 0
    out = tmp_path / "out.zarr"
    assert _run_cli("verify", str(cfg), "--integrity").returncode == 0
    level = "0" if lost == "segmentation" else "1"
    chunks = sorted(p for p in (out / "labels" / "segmentation" / level / "c").rglob("*") if p.is_file())
    victim = chunks[len(chunks) // 2]
    victim.unlink()
    r = _run_cli("verify", str(cfg), "--integrity")
    assert r.returncode == 1, r.stdout + r.stderr
    rel = str(victim.relative_to(out))
    assert f"  {rel}: missing (z " in r.stdout and "1 missing or damaged" in r.stdout, r.stdout
    r = _run_cli("run", str(cfg), "--repair")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert victim.exists() and _run_cli("verify", str(cfg), "--integrity").returncode == 0
    same_result(out, tmp_path / "ref.zarr")
    assert not (tmp_path / "out.zarr.repair").exists()


def test_damaged_metadata_of_a_finished_output_found_and_put_back(data):  # noqa: F811
    """A finished output's metadata documents cut short or lost (the group's zarr.json, the label
    group's, a label level array's): `verify --integrity` names each (exit 1), `run --repair` puts back
    the copies a finished run keeps in qc/metadata (one line each, exit 0) and the output reads as
    the reference again. A label image added afterwards (its documents changed) is not damage."""
    cfg = config(data, "metadata")
    assert _run_cli("run", str(cfg)).returncode == 0
    out = data / "metadata.zarr"
    (out / "labels" / "zarr.json").write_text(json.dumps({**json.loads((out / "labels" / "zarr.json").read_text()),
                                                          "note": "changed after the run"}))
    assert _run_cli("verify", str(cfg), "--integrity").returncode == 0
    torn = [out / "zarr.json", out / "labels" / "segmentation" / "zarr.json"]
    for p in torn:
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    lost = out / "labels" / "segmentation" / "0" / "zarr.json"
    lost.unlink()
    r = _run_cli("verify", str(cfg), "--integrity")
    assert r.returncode == 1 and "3 missing or damaged" in r.stdout, r.stdout + r.stderr
    assert "  zarr.json: unreadable (metadata: JSONDecodeError)" in r.stdout
    assert "  labels/segmentation/0/zarr.json: missing (metadata)" in r.stdout
    r = _run_cli("run", str(cfg), "--repair")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("put back its copy from qc/metadata") == 3, r.stderr
    assert _run_cli("verify", str(cfg), "--integrity").returncode == 0
    same_result(out, data / "reference.zarr")


def test_integrity_of_an_output_without_manifest_is_one_line(tmp_path):
    (tmp_path / "c.yaml").write_text(f"input: {{path: x.zarr}}\noutput: {{path: {tmp_path / 'none.zarr'}}}\n")
    (tmp_path / "none.zarr").mkdir()
    r = _run_cli("verify", str(tmp_path / "c.yaml"), "--integrity")
    assert r.returncode == 2 and r.stderr.strip().startswith("error: ") and "no integrity manifest" in r.stderr
