from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.network.loss import LossWeights, discriminative_loss, discriminative_terms
from pipeline.qc.metrics import evaluate


def test_terms_hand_computed():
    # 1D "image" of 4 voxels, 2D embeddings; instance 1 = voxels 0,1; instance 2 = voxels 2,3
    emb = torch.tensor([[0.0, 2.0, 3.0, 3.0], [0.0, 0.0, 0.0, 0.0]])
    lab = torch.tensor([1, 1, 2, 2])
    var, dist, reg = discriminative_terms(emb, lab, delta_v=0.5, delta_d=1.5)
    # means: (1, 0) and (3, 0); instance 1 distances 1, 1 -> hinge (1-0.5)^2 = 0.25; instance 2: 0
    assert math.isclose(float(var), (0.25 + 0.0) / 2)
    # ||mu1 - mu2|| = 2 < 2*1.5 = 3 -> (3-2)^2 = 1 for both ordered pairs
    assert math.isclose(float(dist), 1.0)
    assert math.isclose(float(reg), (1 + 3) / 2)


def test_background_cut_and_absent_instances():
    emb = torch.zeros(2, 3, 3)
    lab = torch.zeros(3, 3, dtype=torch.long)
    assert all(float(t) == 0 for t in discriminative_terms(emb, lab, 0.5, 1.5))
    lab[0, 0] = 7  # one instance (e.g. cut by the crop): no distance term
    var, dist, reg = discriminative_terms(emb, lab, 0.5, 1.5)
    assert float(var) == 0 and float(dist) == 0 and float(reg) == 0


def test_batch_is_per_sample():
    w = LossWeights(foreground=0.0, gamma=0.0)
    out = torch.zeros(2, 3, 4)  # B=2, E=2 (+ fg), 4 voxels
    out[0, 0] = torch.tensor([0.0, 2.0, 3.0, 3.0])
    out[1, 0] = torch.tensor([5.0, 5.0, 5.0, 5.0])
    lab = torch.tensor([[1, 1, 2, 2], [1, 1, 2, 2]])  # same ids, different samples: not one instance
    _loss, parts = discriminative_loss(out, lab, w)
    # sample 0: var 0.125, dist 1; sample 1: var 0, dist (3-0)^2 = 9 -> means 0.0625 and 5
    assert math.isclose(parts["var"], 0.0625) and math.isclose(parts["dist"], 5.0)
    sample1_alone, _ = discriminative_loss(out[1:], lab[1:], w)
    assert math.isclose(float(sample1_alone), 9.0)


def test_foreground_term_and_gradients():
    out = torch.zeros(1, 3, 2, 2, requires_grad=True)
    lab = torch.tensor([[[0, 1], [1, 0]]])
    loss, parts = discriminative_loss(out, lab, LossWeights(alpha=0, beta=0, gamma=0))
    assert math.isclose(parts["fg"], math.log(2), rel_tol=1e-6)
    loss.backward()
    assert out.grad is not None and torch.isfinite(out.grad).all()
    with pytest.raises(ValueError, match="do not match"):
        discriminative_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, dtype=torch.long))


def _two_objects():
    gt = np.zeros((10, 10), int)
    gt[1:4, 1:4] = 1  # 9 voxels
    gt[5:9, 5:9] = 2  # 16 voxels
    return gt


def test_metrics_perfect():
    gt = _two_objects()
    s = evaluate(gt * 3, gt)  # ids differ, partition identical
    assert s.at(0.5)["ap"] == 1.0 and s.avap == 1.0 and s.at(0.95)["f1"] == 1.0
    assert s.false_splits == 0 and s.false_merges == 0


def test_metrics_one_split():
    gt = _two_objects()
    p = gt.copy()
    p[5:9, 7:9] = 3  # object 2 split in halves: IoU 0.5 each
    s = evaluate(p, gt)
    assert s.at(0.5) == {"ap": 2 / 3, "precision": 2 / 3, "recall": 1.0, "f1": 0.8, "tp": 2, "fp": 1, "fn": 0}
    assert s.at(0.55)["ap"] == 1 / 4  # only object 1 matches: 1 / (1 + 2 + 1)
    assert s.false_splits == 1 and s.false_merges == 0


def test_metrics_one_merge():
    gt = _two_objects()
    p = np.where(gt > 0, 1, 0)  # both in one: IoUs 9/25 and 16/25
    s = evaluate(p, gt)
    assert s.at(0.5)["ap"] == 0.5 and s.at(0.35)["ap"] == 0.5 and s.at(0.7)["ap"] == 0.0
    assert s.false_merges == 1 and s.false_splits == 0


def test_metrics_one_missed():
    gt = _two_objects()
    p = np.where(gt == 2, 2, 0)
    s = evaluate(p, gt)
    assert s.at(0.5) == {"ap": 0.5, "precision": 1.0, "recall": 0.5, "f1": 2 / 3, "tp": 1, "fp": 0, "fn": 1}


def test_metrics_shifted_labels():
    gt = _two_objects()
    p = np.roll(gt, 1, axis=1)  # object 1: IoU 6/12 = 0.5; object 2: IoU 12/20 = 0.6
    s = evaluate(p, gt)
    assert s.at(0.5)["tp"] == 2 and s.at(0.55)["tp"] == 1 and s.at(0.65)["tp"] == 0
    assert math.isclose(s.avap, (1.0 + 1 / 3 + 1 / 3) / 10)


def test_metrics_optimal_assignment_below_half():
    # at low thresholds one prediction overlaps two gts: assignment must be optimal
    gt = np.array([[1, 1, 2, 2, 0, 0]])
    p = np.array([[1, 1, 1, 2, 2, 2]])
    s = evaluate(p, gt)
    assert s.at(0.1)["tp"] == 2


def test_evaluate_many_pools_volumes_without_id_collisions():
    from pipeline.qc.metrics import evaluate_many

    gt = _two_objects()
    s = evaluate_many([(gt, gt), (gt, gt)])
    assert s.n_gt == 4 and s.n_pred == 4 and s.at(0.5)["ap"] == 1.0


def test_pooled_tables_equal_the_contingency_of_all_voxels_with_offset_ids():
    """Pooling per-volume tables (calibration scores each volume and the pool from one table each) counts
    exactly what one table of every volume's voxels, ids offset per volume, counts."""
    from pipeline.qc.metrics import contingency, pooled, restrict, scores, volume_tables

    rng = np.random.default_rng(3)
    pairs = [(rng.integers(0, 5, (4, 9, 7)), rng.integers(0, 4, (4, 9, 7))),
             (rng.integers(0, 7, (6, 5)), rng.integers(0, 6, (6, 5)), rng.random((6, 5)) > 0.3),
             (np.zeros((3, 3), int), rng.integers(0, 3, (3, 3)))]
    flat_p, flat_g, p_off, g_off = [], [], 0, 0
    for p, g, *ann in pairs:
        p, g = (np.asarray(a, np.int64).ravel() for a in restrict(p, g, ann[0] if ann else None))
        flat_p.append(np.where(p > 0, p + p_off, 0))
        flat_g.append(np.where(g > 0, g + g_off, 0))
        p_off, g_off = p_off + p.max(), g_off + g.max()
    reference = contingency(np.concatenate(flat_p), np.concatenate(flat_g))
    assert pooled(volume_tables(pairs)).keys == reference.keys
    ours, theirs = scores(pooled(volume_tables(pairs))), scores(reference)
    assert (ours.ap, ours.tp, ours.n_pred, ours.n_gt) == (theirs.ap, theirs.tp, theirs.n_pred, theirs.n_gt)


def test_errors_by_object_size_add_up_to_the_totals():
    """`by_size` splits found/missed objects, false splits and merges by ground-truth size; its
    sums equal the totals of `scores` (so the breakdown neither loses nor invents errors)."""
    from pipeline.qc.metrics import by_size, contingency, scores

    gt = np.zeros((10, 40), np.int64)
    pred = np.zeros_like(gt)
    gt[1:3, 1:3] = pred[1:3, 1:3] = 1  # small, found
    gt[1:4, 5:9] = 2
    pred[1:4, 5:7], pred[1:4, 7:9] = 2, 3  # split in two
    gt[5:9, 1:9], gt[5:9, 10:18] = 3, 4
    pred[5:9, 1:18] = 4  # two large objects merged
    gt[5:9, 20:32] = 5  # a large one missed
    table = contingency(pred, gt)
    rows, s = by_size(table, bins=2), scores(table)
    assert [r["objects"] for r in rows] == [2, 3] and rows[0]["voxels_to"] < rows[1]["voxels_from"]
    assert rows[0]["false_splits"] == 1 and rows[1]["false_merges"] == 1 and rows[1]["missed"] == 3
    assert sum(r["false_splits"] for r in rows) == s.false_splits
    assert sum(r["false_merges"] for r in rows) == s.false_merges
    assert sum(r["found"] for r in rows) == s.at(0.5)["tp"]


def test_evaluate_cli_prints_errors_by_size_and_scores_annotated_voxels(tmp_path, capsys):
    import json

    from pipeline.cli import main
    from pipeline.volume.io import write_zarr

    gt = np.zeros((4, 20, 20), np.uint32)
    gt[:, 2:6, 2:6], gt[:, 10:14, 2:6], gt[:, 2:6, 12:16] = 1, 2, 3
    pred = gt.copy()
    pred[:, 2:6, 12:16] = 0  # object 3 missed ...
    mask = np.zeros_like(gt, np.uint8)
    mask[..., :9] = 1  # ... but it was never annotated
    for name, arr in (("gt", gt), ("pred", pred), ("mask", mask)):
        write_zarr(tmp_path / f"{name}.zarr", arr)
    argv = ["evaluate", "--pred", str(tmp_path / "pred.zarr"), "--gt", str(tmp_path / "gt.zarr"), "--json"]
    assert main(argv) == 0
    full = json.loads(capsys.readouterr().out)
    assert full["ap50"] < 1 and sum(r["missed"] for r in full["by_size"]) == 1
    assert main([*argv, "--annotated", str(tmp_path / "mask.zarr")]) == 0
    part = json.loads(capsys.readouterr().out)
    assert part["ap50"] == 1.0 and part["n_gt"] == 2
    assert main(argv[:-1]) == 0
    assert "by ground-truth object size" in capsys.readouterr().out
