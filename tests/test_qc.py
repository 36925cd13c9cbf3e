"""The quality record and the tools that read it: seam audit (against the ground truth of a
hand-made volume), per-block record, `pipeline verify`, `pipeline report`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from matplotlib.image import imread

from pipeline.cli import main
from pipeline.plan.blocks import BlockPlan
from pipeline.run import segment
from pipeline.runtime.faces import face_axes
from pipeline.volume.io import open_array, write_zarr

from .conftest import make_checkpoint, random_volume
from .helpers import passthrough_checkpoint, same_partition

SHAPE, WRITE = (16, 32, 32), (8, 16, 16)


def _objects() -> np.ndarray:
    """Ground truth: a ball across every central face (8 blocks), a box across one x face,
    and two boxes of different intensity that meet exactly on an x face (one block each)."""
    gt = np.zeros(SHAPE, np.uint32)
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    gt[(z - 8) ** 2 + (y - 16) ** 2 + (x - 16) ** 2 <= 25] = 1
    gt[2:6, 2:6, 12:20] = 2
    gt[10:14, 24:30, 4:16] = 3
    gt[10:14, 24:30, 16:28] = 4
    return gt


VALUE = np.array([0.0, 0.7, 0.8, 0.6, 0.95], np.float32)  # embedding = 10 * value (pass-through model)


def _face_reference(gt: np.ndarray, plan: BlockPlan) -> dict[tuple[int, int], dict[str, int]]:
    """Per face: touching object pairs (= fragment pairs: each object's part of a block is
    convex, so one fragment), accepted = same object, contact voxels."""
    ref = {}
    for block in plan:
        for axis in face_axes(plan):
            if block.index[axis] == plan.grid[axis] - 1:
                continue
            sl = list(block.valid.to_slices())
            last = sl[axis].stop - 1
            sl[axis] = last
            a = gt[tuple(sl)]
            sl[axis] = last + 1
            b = gt[tuple(sl)]
            both = (a > 0) & (b > 0)
            pairs = {(int(p), int(q)) for p, q in zip(a[both], b[both])}
            ref[(block.linear, axis)] = {"touching": len(pairs), "accepted": sum(p == q for p, q in pairs),
                                         "contact": int(both.sum()), "objects_cut": sum(p == q for p, q in pairs)}
    return ref


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audit")
    gt = _objects()
    write_zarr(tmp / "in.zarr", VALUE[gt], name="raw")
    out = segment({"input": {"path": str(tmp / "in.zarr"), "dataset": "raw"}, "output": {"path": str(tmp / "out.zarr")},
                   "model": {"checkpoint": str(passthrough_checkpoint(tmp / "pt.pt"))},
                   "blocks": {"write_shape": list(WRITE)}, "cluster": {"kind": "serial"},
                   "clustering": {"method": "connectivity"}})
    return gt, out


def test_seam_audit_matches_the_ground_truth(audited):
    gt, out = audited
    seg = open_array(out / "segmentation")[...]
    assert same_partition(seg, gt)  # the merge joined exactly the right fragments
    audit = json.loads((out / "qc" / "seam_audit.json").read_text())
    plan = BlockPlan(SHAPE, WRITE, (0, 0, 0), (2, 2, 2))
    ref = _face_reference(gt, plan)
    rows = {(r["block"], r["axis"]): r for r in audit["face_rows"]}
    assert set(rows) == set(ref) and audit["faces"] == 12
    for key, expected in ref.items():
        assert {k: rows[key][k] for k in expected} == expected, key
    assert audit["accepted_pairs"] == sum(r["accepted"] for r in ref.values()) == 12 + 1  # ball: 12 faces, box: 1
    assert audit["rejected_pairs"] == 1
    (rejected,) = audit["closest_rejected"]
    assert rejected["axis"] == 2 and rejected["contact"] == 4 * 6 and rejected["distance"] == pytest.approx(3.5, abs=1e-5)
    assert max(r["distance"] for r in audit["farthest_accepted"]) == pytest.approx(0.0, abs=1e-5)
    assert audit["objects_spanning_blocks"] == 2 and audit["blocks_per_spanning_object"] == {"2": 1, "8": 1}
    assert audit["objects"] == 4 and audit["rule"]["method"] == "connectivity"


def test_block_record(audited):
    gt, out = audited
    plan = BlockPlan(SHAPE, WRITE, (0, 0, 0), (2, 2, 2))
    with np.load(out / "qc" / "blocks.npz") as z:
        record = {k: z[k] for k in z.files}
    expected = [len(np.unique(gt[b.valid.to_slices()])) - 1 for b in plan]
    np.testing.assert_array_equal(record["count"], expected)
    assert np.all(record["predict_s"] > 0) and np.all(record["cluster_s"] > 0)


@pytest.fixture(scope="module")
def verify_config(tmp_path_factory):
    """A random model (step 4, base 3 features) on a small smooth volume, blocks of (8, 16, 16)."""
    tmp = tmp_path_factory.mktemp("verify")
    write_zarr(tmp / "in.zarr", random_volume((8, 32, 32), seed=1), name="raw")
    cfg = {"input": {"path": str(tmp / "in.zarr"), "dataset": "raw"}, "output": {"path": str(tmp / "out.zarr")},
           "model": {"checkpoint": str(make_checkpoint(tmp / "m.pt", seed=2)), "device": "cpu"},
           "blocks": {"write_shape": [8, 16, 16]}}
    (tmp / "c.yaml").write_text(yaml.safe_dump(cfg))
    return tmp / "c.yaml"


def test_verify_exact_with_aligned_tilings(verify_config, capsys):
    assert main(["-q", "verify", str(verify_config), "--control", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["exact"] and result["max_difference"] <= result["tolerance"] < 1e-3
    names = [t["name"] for t in result["tilings"]]
    assert names == ["run blocks", "other aligned", "misaligned (control)"]
    assert result["control_detected"] and result["tilings"][2]["max_difference"] > result["tolerance"]
    assert result["region"] == {"offset": [0, 0, 0], "shape": [8, 32, 32]}  # the blocks around the corner (0, 16, 16)


def test_verify_fails_on_forced_misaligned_tiles(verify_config, capsys):
    assert main(["-q", "verify", str(verify_config), "--force-misaligned", "--region", "0:8,4:32,4:32"]) == 1
    out = capsys.readouterr().out
    assert "NOT EXACT" in out and "misaligned (forced)" in out
    assert main(["-q", "verify", str(verify_config), "--region", "0:8,4:32"]) == 2  # a usage error


def test_report_html_and_figures(audited, tmp_path):
    """The report of a finished run: HTML with >= 4 non-blank figures and the seam numbers."""
    _, out = audited
    assert main(["-q", "report", str(out), "--out", str(tmp_path / "rep")]) == 0
    page = (tmp_path / "rep" / "index.html").read_text()
    pngs = sorted((tmp_path / "rep").glob("*.png"))
    assert len(pngs) >= 4
    for png in pngs:
        assert f"src='{png.name}'" in page
        pixels = imread(png)[..., :3]
        assert pixels.std() > 0.05, png.name  # not blank
    seams = json.loads((tmp_path / "rep" / "seams.json").read_text())
    assert seams["audit"] == json.loads((out / "qc" / "seam_audit.json").read_text())
    assert seams["gradient"]["region"] == {"offset": [0, 0, 0], "shape": [16, 32, 32]}
    assert "Seam audit" in page and "Provenance" in page
    assert "Objects to check" in page and "suspects.png" in page


def test_report_refuses_what_is_not_a_result(tmp_path):
    assert main(["-q", "report", str(tmp_path)]) == 2
