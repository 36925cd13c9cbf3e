"""The quality commands of the CLI: ``pipeline evaluate``, ``report`` and ``verify``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from ..volume.errors import InputError
from .options import _config_args, _load


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..qc.metrics import by_size, contingency, restrict, scores
    from ..qc.over_time import over_time
    from ..volume.io import open_label_array

    pred = open_label_array(args.pred, args.pred_dataset)
    gt = open_label_array(args.gt, args.gt_dataset)
    if pred.shape != gt.shape:
        raise InputError(f"--pred {list(pred.shape)} and --gt {list(gt.shape)} differ in shape")
    if args.annotated:  # a partly annotated ground truth: score what was annotated (read whole)
        mask = open_label_array(args.annotated, args.annotated_dataset)
        if mask.shape != gt.shape:
            raise InputError(f"--annotated {list(mask.shape)} and --gt {list(gt.shape)} differ in shape")
        pred, gt = restrict(np.asarray(pred[...]), np.asarray(gt[...]), np.asarray(mask[...]) != 0)
    timelapse = args.time or (pred.ndim == 4 and _is_timelapse(args.pred))
    table, per_t = over_time(pred, gt) if timelapse else (contingency(pred, gt), None)
    s, sizes = scores(table), by_size(table)
    if args.json:
        print(json.dumps({**s.summary(), "per_threshold": [
            {"threshold": t, **s.at(t)} for t in s.thresholds], "by_size": sizes,
            **({"per_timepoint": per_t} if per_t is not None else {})}, indent=2))
        return 0
    if per_t is not None:
        print(f"a time-lapse of {len(per_t)} time points, ids per time point; AP@0.5 per time point: "
              + ", ".join(f"t{r['t']} {r['ap50']:.3f} ({r['predicted']}/{r['ground_truth']})" for r in per_t))
        print("all time points together:")
    print(f"objects: predicted {s.n_pred}, ground truth {s.n_gt}; false splits {s.false_splits}, "
          f"false merges {s.false_merges}")
    print("threshold     AP  precision  recall     F1")
    for t in s.thresholds:
        r = s.at(t)
        print(f"{t:9.2f} {r['ap']:6.3f} {r['precision']:10.3f} {r['recall']:7.3f} {r['f1']:6.3f}")
    print(f"avAP(0.5:0.95) {s.avap:.3f}")
    if sizes:
        print("by ground-truth object size (voxels; groups of about equal count), at IoU 0.5:")
        print("        size   objects  found  missed  false splits  false merges")
        for r in sizes:
            size = f"{r['voxels_from']}-{r['voxels_to']}"
            print(f"{size:>12} {r['objects']:9d} {r['found']:6d} {r['missed']:7d} {r['false_splits']:13d} "
                  f"{r['false_merges']:13d}")
    return 0


def _is_timelapse(path: str) -> bool:
    """Whether ``path`` is a time-lapse result (its attributes say so)."""
    from ..qc.result import result_meta

    try:
        return bool(result_meta(Path(path)).get("timelapse"))
    except UsageError:
        return False


def cmd_report(args: argparse.Namespace) -> int:
    from ..qc.report import report

    out = report(args.result, args.out, seams=not args.no_seams)
    ratio = out["gradient_ratio"]
    print(f"report written to {out['html']} ({len(out['figures'])} figures, {out['seconds']:.1f} s"
          + (f", seam gradient ratio {ratio:.3f})" if ratio else ")"))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ..plan.prepare import prepare
    from ..qc.verify import describe, parse_region, verify

    if args.integrity:
        from ..qc.integrity import check_integrity, describe_integrity

        root = _load(args).output.path
        found = check_integrity(root)
        print(json.dumps({**found, "damaged": [{**d, "region": d["region"].describe() if d["region"] else None}
                                               for d in found["damaged"]]}, indent=2) if args.json
              else "\n".join(describe_integrity(root, found)))
        return 1 if found["damaged"] else 0
    run = prepare(_load(args))
    region = parse_region(args.region, run.plan.volume, run.plan.step) if args.region else None
    result = verify(run, region, force_misaligned=args.force_misaligned, control=args.control)
    print(json.dumps(result, indent=2) if args.json else "\n".join(describe(result)))
    return 0 if result["exact"] else 1


def add_evaluate_command(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="AP, precision, recall, F1 at IoU thresholds; splits and merges")
    p.add_argument("--pred", required=True, help="labels: a run's output group, a zarr array (or group with "
                   "--pred-dataset), an OME-Zarr label image, a TIFF file or folder, an HDF5 file")
    p.add_argument("--gt", required=True, help="labels, in any of --pred's formats (a group with --gt-dataset)")
    p.add_argument("--pred-dataset", default=None)
    p.add_argument("--gt-dataset", default=None)
    p.add_argument("--annotated", default=None, help="mask of the annotated voxels of a partly annotated --gt "
                   "(nonzero = annotated): only they are scored, and predicted objects mostly outside it are ignored")
    p.add_argument("--annotated-dataset", default=None)
    p.add_argument("--time", action="store_true", help="the first axis is time (ids per time point): score each "
                   "time point and all together; automatic for a time-lapse result")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)


def add_qc_commands(sub: Any) -> None:
    p = sub.add_parser("report", help="HTML report of a result: slices with labels, block grid, objects, per-block "
                       "maps, seam audit, provenance")
    p.add_argument("result", help="the output.path of a `pipeline run` (e.g. pipeline-demo/result.zarr)")
    p.add_argument("--out", default=None, help="folder for index.html and the figures (default: <result>-report)")
    p.add_argument("--no-seams", action="store_true", help="skip re-predicting one block corner for the seam "
                   "gradient ratio (needs the input and the checkpoint)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("verify", help="is tile-and-stitch exact on this data, model, device and precision? "
                       "(exit 0: exact, 1: not)")
    _config_args(p)
    p.add_argument("--region", default=None, metavar="Z0:Z1,Y0:Y1,X0:X1",
                   help="the sample region (default: the blocks around the block corner nearest the centre)")
    p.add_argument("--control", action="store_true", help="also predict misaligned tiles (a positive control: they "
                   "must differ)")
    p.add_argument("--force-misaligned", action="store_true", help="compare with misaligned tiles instead of "
                   "aligned ones (the check must then fail: exit 1)")
    p.add_argument("--integrity", action="store_true", help="instead: is every file of the finished output.path as "
                   "the run wrote it (size, CRC-32)? Names missing or damaged chunks and their regions (exit 1)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)
