"""Resume after the driver is killed (SIGKILL), and refusal of stale markers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from scipy import ndimage

from pipeline.cli import main
from pipeline.runtime.markers import marked_blocks
from pipeline.volume.io import open_array, open_group, write_zarr

from .helpers import passthrough_checkpoint


def _config(tmp_path, name, **over):
    rng = np.random.default_rng(1)
    if not (tmp_path / "in.zarr").exists():
        fg = ndimage.gaussian_filter(rng.random((16, 64, 64)), 1.5) > 0.5
        write_zarr(tmp_path / "in.zarr", fg.astype(np.float32), chunks=(16, 32, 32), name="raw")
        passthrough_checkpoint(tmp_path / "pt.pt")
    cfg = {"input": {"path": str(tmp_path / "in.zarr"), "dataset": "raw"},
           "output": {"path": str(tmp_path / f"{name}.zarr")},
           "model": {"checkpoint": str(tmp_path / "pt.pt")},
           "blocks": {"write_shape": [4, 8, 8]}, "cluster": {"kind": "serial"}, **over}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("command", ["run", "predict"])
def test_sigkill_then_rerun_resumes_and_matches(tmp_path, command):
    ref_cfg = _config(tmp_path, "reference")
    assert main(["-q", command, str(ref_cfg)]) == 0
    cfg = _config(tmp_path, "crashed")
    out = tmp_path / "crashed.zarr"
    marker_dir = out / ("scratch/done_fragments" if command == "run" else "scratch/done_predict")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "-q", command, str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        n = marked_blocks(marker_dir)
        if n >= 40:
            break
        if proc.poll() is not None:
            pytest.fail("the run ended before it could be killed")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert open_group(out).attrs["complete"] is False
    # rerun the same command: resumes, skips the finished blocks, same result
    assert main(["-q", command, str(cfg)]) == 0
    attrs = open_group(out).attrs
    assert attrs["complete"] is True and 40 <= attrs["resumed_blocks"] < 4 * 8 * 8
    names = ["segmentation"] if command == "run" else ["embeddings", "foreground"]
    for name in names:
        np.testing.assert_array_equal(open_array(out / name)[...], open_array(tmp_path / "reference.zarr" / name)[...])
    if command == "run":
        assert (out / "objects.csv").read_text() == (tmp_path / "reference.zarr" / "objects.csv").read_text()


def test_stale_markers_are_refused(tmp_path, capsys):
    cfg = _config(tmp_path, "a")
    out = tmp_path / "a.zarr"
    from pipeline.config import load_config
    from pipeline.run import prepare
    from pipeline.runtime.resume import resume_parts
    from pipeline.runtime.store import Store
    from pipeline.stages.objects import ROWS_PER_PART

    s = prepare(load_config(cfg))
    layout = {"object_rows_per_part": ROWS_PER_PART}
    Store.open(out, False, resume_parts(s, "segment", {"x": 1}, layout), "other")  # a run with other parameters
    assert main(["-q", "run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "other settings (clustering/merge parameters:" in err and "--overwrite" in err
    # an unfinished run of an earlier version, whose scratch files are laid out otherwise: refused too
    Store.open(out, True, resume_parts(s, "segment", {"x": 1}, {"object_rows_per_part": 2**20}), "older")
    assert main(["-q", "run", str(cfg)]) == 2
    assert "scratch layout (another version of the pipeline): object_rows_per_part 1048576" in capsys.readouterr().err
    assert main(["-q", "run", str(cfg), "--overwrite"]) == 0
    assert open_group(out).attrs["complete"] is True
    # a complete output is never replaced without --overwrite
    assert main(["-q", "run", str(cfg)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_scratch_files_in_proportion_to_batches(tmp_path, monkeypatch):
    """256 small blocks, 8 per task: each stage leaves one done marker per batch (not one per
    block), the faces one file per batch, and the object statistics one file per batch and id range."""
    from pipeline.runtime.store import Store

    cfg = _config(tmp_path, "many", blocks={"write_shape": [4, 8, 8], "blocks_per_task": 8})
    seen: dict[str, int] = {}
    finish = Store.finish

    def count_then_finish(self, attrs):
        scratch = tmp_path / "many.zarr" / "scratch"
        for folder in scratch.iterdir():
            seen[folder.name] = sum(1 for p in folder.rglob("*") if p.is_file())
        return finish(self, attrs)

    monkeypatch.setattr(Store, "finish", count_then_finish)
    assert main(["-q", "run", str(cfg)]) == 0
    batches = 4 * 8 * 8 // 8
    assert seen["done_fragments"] == batches
    assert 0 < seen["done_relabel"] <= batches and 0 < seen["stats"] <= batches
    assert seen["done_labels"] == 0 and "done_labels_0" not in seen  # level 0 is the segmentation: no task
    assert all(n <= 4 for name, n in seen.items() if name.startswith("done_labels_"))
    assert sum(n for name, n in seen.items() if name.startswith("done_") or name == "stats") <= 3 * batches + 8
    assert 0 < seen["faces"] <= batches  # one per batch with fragments, not one per block
