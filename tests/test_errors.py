"""Every bad input gets a one-line, actionable error (exit code 2), and nothing is overwritten."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import yaml
import zarr

from pipeline.cli import main
from pipeline.run import prepare, segment
from pipeline.volume.io import open_array, write_zarr

from .conftest import make_checkpoint
from .helpers import passthrough_checkpoint


def _cfg(tmp_path, vol=None, name="c", **over):
    if vol is not None:
        write_zarr(tmp_path / "in.zarr", vol, chunks=tuple(min(8, s) for s in vol.shape), name="raw")
    if not (tmp_path / "pt.pt").exists():
        passthrough_checkpoint(tmp_path / "pt.pt")
    cfg = {"input": {"path": str(tmp_path / "in.zarr"), "dataset": "raw"},
           "output": {"path": str(tmp_path / "out.zarr")},
           "model": {"checkpoint": str(tmp_path / "pt.pt")},
           "blocks": {"write_shape": [4, 8, 8]}, "cluster": {"kind": "serial"}}
    for k, v in over.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _fails(capsys, args, *needles):
    assert main(["-q", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


def test_missing_input_and_array(tmp_path, capsys):
    cfg = _cfg(tmp_path)
    _fails(capsys, ["run", str(cfg)], "input.path", "does not exist")
    cfg = _cfg(tmp_path, np.zeros((8, 8, 8), np.float32), input={"dataset": "raww"})
    _fails(capsys, ["run", str(cfg)], "input.dataset", "raww", "available: raw")


def test_wrong_dimensions_and_channels(tmp_path, capsys):
    cfg = _cfg(tmp_path, np.zeros((16, 16), np.float32))
    _fails(capsys, ["run", str(cfg)], "is 2D", "model", "3D")
    zarr.create_array(str(tmp_path / "c4.zarr"), data=np.zeros((2, 8, 8, 8), np.float32))
    cfg = _cfg(tmp_path, name="ch", input={"path": str(tmp_path / "c4.zarr"), "dataset": None})
    _fails(capsys, ["run", str(cfg)], "2 channel(s)", "expects 1")


def test_non_numeric_dtype(tmp_path, capsys):
    g = zarr.open_group(str(tmp_path / "in.zarr"), mode="w")
    g.create_array("raw", data=np.zeros((8, 8, 8), dtype=bool))
    _fails(capsys, ["run", str(_cfg(tmp_path))], "dtype bool", "numeric")


def test_nan_in_input(tmp_path, capsys):
    vol = np.zeros((8, 16, 16), np.float32)
    vol[5, 3, 3] = np.nan
    vol[6, 3, 3] = np.inf
    err = _fails(capsys, ["run", str(_cfg(tmp_path, vol))], "NaN/inf", "replace them")
    # where they are, in volume coordinates clipped to the volume (never an internal box)
    assert "input '" in err and "at 2 voxel(s) in z 5:7, y 3:4, x 3:4" in err and "Box(" not in err


def test_all_zero_volume_gives_empty_result(tmp_path):
    out = segment(yaml.safe_load(_cfg(tmp_path, np.zeros((8, 16, 16), np.float32)).read_text()))
    assert open_array(out / "segmentation")[...].max() == 0
    assert (out / "objects.csv").read_text().count("\n") == 1  # header only


def test_volume_smaller_than_one_block(tmp_path):
    vol = np.zeros((3, 5, 6), np.float32)
    vol[1:3, 1:4, 2:5] = 1.0
    out = segment(yaml.safe_load(_cfg(tmp_path, vol, blocks={"write_shape": [8, 16, 16]}).read_text()))
    seg = open_array(out / "segmentation")[...]
    assert seg.shape == (3, 5, 6) and seg.max() == 1 and (seg > 0).sum() == 2 * 3 * 3


@pytest.mark.parametrize("shape,needle", [
    ("[4,7,8]", "axis 1: 7 -> use 6 or 8"),
    ("[1,8,8]", "axis 0: 1 -> use 2"),
    ("[4,0,8]", "blocks.write_shape.1: Input should be greater than 0"),
    ("[4,-8,8]", "greater than 0 (got -8)"),
    ("[4,8]", "has 2 axes but the volume"),
])
def test_bad_write_shapes(tmp_path, capsys, shape, needle):
    cfg = _cfg(tmp_path, np.zeros((8, 16, 16), np.float32))
    _fails(capsys, ["run", str(cfg), "--set", f"blocks.write_shape={shape}"], needle)


def test_misspelt_keys(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({"input": {"path": "x", "datset": "raw"}, "output": {"path": "y"}}))
    _fails(capsys, ["run", str(p)], "unknown key 'input.datset'", "did you mean 'dataset'")
    p.write_text(yaml.safe_dump({"input": {"path": "x"}, "output": {"path": "y"}, "clustering": {"methd": "x"}}))
    _fails(capsys, ["plan", str(p)], "did you mean 'method'")


def test_corrupt_and_incompatible_checkpoints(tmp_path, capsys):
    cfg = _cfg(tmp_path, np.zeros((8, 16, 16), np.float32))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint at all")
    _fails(capsys, ["run", str(cfg), "--set", f"model.checkpoint={tmp_path / 'bad.pt'}"], "not a readable checkpoint")
    make_checkpoint(tmp_path / "m2d.pt", ndim=2, downsample=[[2, 2]])
    _fails(capsys, ["run", str(cfg), "--set", f"model.checkpoint={tmp_path / 'm2d.pt'}"], "model", "2D")


def test_output_exists_and_unwritable(tmp_path, capsys):
    cfg = _cfg(tmp_path, np.zeros((8, 16, 16), np.float32))
    assert main(["-q", "run", str(cfg)]) == 0
    before = open_array(tmp_path / "out.zarr" / "segmentation")[...]
    _fails(capsys, ["run", str(cfg)], "already exists", "--overwrite")
    np.testing.assert_array_equal(open_array(tmp_path / "out.zarr" / "segmentation")[...], before)
    (tmp_path / "afile").write_text("x")
    _fails(capsys, ["run", str(cfg), "--set", f"output.path={tmp_path / 'afile' / 'out.zarr'}"], "not writable")


@pytest.mark.parametrize("cache", [0, 1, None])
@pytest.mark.parametrize("chunks,warns", [((8, 64, 64), True), ((4, 8, 8), False), ((5, 7, 7), False)])
def test_misaligned_input_chunks_warn(tmp_path, caplog, chunks, warns, cache):
    """Without the chunk cache, a warning when blocks decompress much more input than chunk-aligned
    blocks would: chunks as large as the volume for (4, 8, 8) blocks do (13.3x vs 5.8x); aligned
    chunks do not (1.0x), nor misaligned ones whose cost the halo dominates (2.0x vs 2.3x). With a
    cache that holds the chunks the block order reuses (1 MiB here, or automatic), none: each chunk
    is decoded once."""
    vol = np.zeros((8, 64, 64), np.float32)
    write_zarr(tmp_path / "in.zarr", vol, chunks=chunks, name="raw")
    cfg = yaml.safe_load(_cfg(tmp_path, input={"chunk_cache_mib": cache}).read_text())
    with caplog.at_level(logging.WARNING, logger="pipeline.plan.prepare"):
        prepare(cfg)
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert ("do not fit blocks.write_shape" in msg and "rechunk" in msg) == (warns and cache == 0)


@pytest.mark.parametrize("quiet", [True, False])
def test_nan_in_input_on_a_cluster_no_worker_traceback(tmp_path, quiet):
    """A user error raised inside a worker's task reaches the user as the one line, and no worker
    logs a traceback for it; with or without -q, no distributed INFO line reaches stderr."""
    import subprocess
    import sys

    vol = np.zeros((8, 16, 16), np.float32)
    vol[5, 3, 3] = np.nan
    cfg = _cfg(tmp_path, vol)
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", *(["-q"] if quiet else []), "run", str(cfg),
                        "--set", "cluster.kind=local", "--set", "cluster.n_workers=1"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "Compute Failed" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: input") and "NaN/inf" in r.stderr
    assert not [line for line in r.stderr.splitlines() if "distributed." in line], r.stderr
