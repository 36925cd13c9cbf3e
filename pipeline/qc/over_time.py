"""``pipeline evaluate`` of a time-lapse: (t, z, y, x) labels whose ids are unique per time point (the
same id at two time points is two objects). Each time point is scored on its own, and all of them
together as one set of objects: every time point's ids moved past the ids of the time points before it
(background stays 0), so a match never crosses time points."""

from __future__ import annotations

from typing import Any

import numpy as np

from .metrics import Contingency, contingency, scores


def shifted(table: Contingency, by_pred: int, by_gt: int) -> Contingency:
    """``table`` with its non-zero predicted ids raised by ``by_pred`` and ground-truth ids by ``by_gt``."""
    pred, gt, counts = table.arrays()
    pred = np.where(pred > 0, pred + by_pred, 0)
    gt = np.where(gt > 0, gt + by_gt, 0)
    return Contingency(dict(zip(zip(pred.tolist(), gt.tolist()), counts.tolist())))


def over_time(pred: Any, gt: Any) -> tuple[Contingency, list[dict[str, Any]]]:
    """The pooled contingency of (t, ...) label stacks ``pred`` and ``gt`` (numpy or zarr, read one
    time point at a time), and per time point its objects and AP at IoU 0.5."""
    pooled, rows = Contingency(), []
    by_pred = by_gt = 0
    for t in range(pred.shape[0]):
        table = contingency(pred[t], gt[t])
        s = scores(table)
        rows.append({"t": t, "predicted": s.n_pred, "ground_truth": s.n_gt, "ap50": s.at(0.5)["ap"]})
        p, g, _ = table.arrays()
        for key, count in shifted(table, by_pred, by_gt).keys.items():
            pooled.keys[key] = pooled.keys.get(key, 0) + count
        by_pred += int(p.max(initial=0))
        by_gt += int(g.max(initial=0))
    return pooled, rows
