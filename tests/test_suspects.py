"""Objects to check: the extremes of the objects table, scored against the model's foreground."""

from __future__ import annotations

import numpy as np

from pipeline.geometry import Box
from pipeline.qc.suspects import Suspect, disagreement, pick, view_box


def _table(voxels, fill_box, blocks):
    n = len(voxels)
    cols = {"id": np.arange(1, n + 1), "voxels": np.array(voxels), "blocks": np.array(blocks)}
    for a, ext in zip("zyx", np.array(fill_box).T):
        cols[f"bbox_start_{a}"] = np.zeros(n, int)
        cols[f"bbox_end_{a}"] = ext
        cols[f"centroid_{a}"] = ext / 2
    return cols


def test_pick_takes_each_extreme_once():
    voxels = [100, 110, 90, 105, 900, 20, 100]
    boxes = [[5, 5, 5]] * 7
    boxes[3] = [20, 20, 20]  # 105 voxels in 8000: the least compact
    blocks = [1, 1, 1, 1, 2, 1, 6]
    found = pick(_table(voxels, boxes, blocks), 3, per_reason=1)
    reasons = {s.id: s.reason for s in found}
    assert list(reasons) == [5, 6, 4, 7]
    assert "merged nuclei" in reasons[5] and "fragment" in reasons[6] and "fills" in reasons[4]
    assert "spans 6 blocks" in reasons[7]
    assert pick(_table([10], [[2, 2, 2]], [1]), 3) == []


def test_view_box_stays_inside_and_caps_large_objects():
    s = Suspect(1, "", Box((0, 10, 10), (4, 300, 20)), (2.0, 160.0, 20.0), 1000)
    box = view_box(s, (8, 400, 64), margin=4, fov=128)
    assert box.offset == (0, 96, 6) and box.shape == (8, 128, 28)


def test_disagreement_counts_background_inside_and_foreground_beside():
    labels = np.zeros((1, 10, 10), int)
    labels[0, 2:6, 2:6] = 3
    fg = (labels > 0).astype(float)
    assert disagreement(labels, 3, fg, 0.5) == 0.0
    fg[0, 2:6, 6] = 1  # foreground beside the object that no object claims
    fg[0, 2, 2] = 0  # an object voxel the model calls background
    assert disagreement(labels, 3, fg, 0.5) == (4 + 1) / (16 + 4)
    labels[0, 2:6, 6] = 4  # claimed by another object: not a disagreement of object 3
    assert disagreement(labels, 3, fg, 0.5) == 1 / 20
