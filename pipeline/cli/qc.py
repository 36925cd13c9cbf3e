"""The quality commands of the CLI: ``pipeline report`` and ``pipeline verify``."""

from __future__ import annotations

import argparse
import json
from typing import Any


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
    from . import _load

    run = prepare(_load(args))
    region = parse_region(args.region, run.plan.volume, run.plan.step) if args.region else None
    result = verify(run, region, force_misaligned=args.force_misaligned, control=args.control)
    print(json.dumps(result, indent=2) if args.json else "\n".join(describe(result)))
    return 0 if result["exact"] else 1


def add_qc_commands(sub: Any) -> None:
    from . import _config_args

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
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)
