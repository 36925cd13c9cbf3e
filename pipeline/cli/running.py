"""The commands that plan and run: ``pipeline plan``, ``predict``, ``job-script``, ``run`` and ``demo``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..errors import UsageError
from ..runtime.signals import DEFAULT_GRACE_S, stop_on_signals
from .options import _config_args, _load


def input_format(path: Path | str, vol: Any) -> str:
    """How ``pipeline plan`` names the input it found: format, axes (the channel read), the array."""
    from ..volume.formats import kind_of

    names = {"zarr": "OME-Zarr image" if vol.ome else "zarr array", "tiff": "TIFF file", "tiff-folder": "TIFF slices",
             "hdf5": "HDF5", "bdv-xml": "BigDataViewer XML + HDF5", "n5": "N5", "ims": "Imaris", "czi": "CZI"}
    kind = kind_of(Path(path))
    return (f"{names.get(kind, kind)} {vol.where}, axes {vol.axes}"
            + (f" (channel {vol.channel} read)" if vol.channel is not None else ""))


def array_files(run: Any, target: Any) -> str:
    """The most files each label array and the fragments scratch will have (output.shards)."""
    from ..plan.shards import describe_files
    from ..stages.relabel import restore_plan

    plan = restore_plan(run.volume.shape, run.plan, run.zoom) if run.zoom else run.plan
    arrays = {"segmentation": (plan.volume, plan.write_shape)}
    arrays |= {f"label level {lv.path}": (lv.shape, lv.chunks) for lv in (target.levels if target else ()) if lv.kind != "copy"}
    scratch = describe_files(run.config.output.shards, {"scratch/fragments": (run.plan.volume, run.plan.write_shape)})
    return f"{describe_files(run.config.output.shards, arrays)}; {scratch} (scratch, removed at the end)"


def cmd_plan(args: argparse.Namespace) -> int:
    from ..plan.labels import check_labels, label_target
    from ..plan.outputs import work_fraction
    from ..plan.prepare import prepare
    from ..plan.space import check_space, space_summary
    from ..plan.summary import cost_table, plan_summary
    from ..runtime.engine import Engine
    from ..runtime.output import check_output
    from ..runtime.timelapse import describe_timepoints, selected_timepoints
    from ..stages import ScanStage
    from ..stages.scan import listed_empty

    cfg = _load(args)
    timepoints = selected_timepoints(cfg)
    if timepoints is not None:  # a time-lapse: each time point is planned like the first
        cfg = cfg.model_copy(update={"input": cfg.input.model_copy(update={"timepoint": timepoints[0], "timepoints": "all"})})
    run = prepare(cfg)
    out = run.config.output
    summary = ({"timepoints": f"{len(timepoints)} ({describe_timepoints(timepoints)}), each segmented on its own; the "
                "plan of the first:"} if timepoints else {}) | plan_summary(run)
    vol = run.volume
    summary["voxel_size"] = (f"{list(vol.voxel_size)} {vol.units[0] if vol.units and vol.units[0] else ''}".strip()
                             if vol.voxel_size else "unknown (the input records none)")
    summary["input_format"] = input_format(run.config.input.path, vol)
    target = label_target(run)
    summary["label_image"] = (f"{target.group} (NGFF {target.version}, {len(target.levels)} level{'s' if len(target.levels) != 1 else ''}, "
                              f"{'under the input image' if target.mode == 'image' else 'standalone'})"
                              if target else "none (output.labels: none)")
    summary["files_per_array"] = array_files(run, target)
    summary.update(space_summary(run, target, len(timepoints or [0])))
    absent = listed_empty(run.plan, run.empty, run.config.input, run.zoom, run.listing)
    problems = []  # what `pipeline run` would refuse before starting
    for check in (lambda: check_output(out.path, out.overwrite),
                  lambda: check_labels(target, Path(out.path), out.overwrite) if target else None,
                  lambda: check_space(run, target, fraction=work_fraction(len(run.plan), None, absent),
                                      timepoints=len(timepoints or [0]))):
        try:
            check()
        except UsageError as exc:
            problems.append(str(exc))
    summary["run_would_refuse"] = "; ".join(problems) if problems else "nothing (output and label image are free, the space suffices)"
    if run.empty is not None:  # the store's listing, and one coarse read per other block (mask, pyramid)
        flags = ScanStage(run.plan, run.empty, absent).run(Engine())
        listed = f"{int(absent.sum())} of them read no stored input chunk" if absent is not None and absent.any() else ""
        summary["empty_blocks"] = (f"{int(flags.sum())} of {len(run.plan)} will be skipped" + (f" ({listed})" if listed else "")
                                   + ("; others as they are read" if run.empty.kind == "read" else ""))
    width = max(map(len, summary))
    for key, value in summary.items():
        print(f"{key:<{width}}  {value}")
    print("\nwrite shapes by predicted cost (* this plan's; cost relative to it):")
    for line in cost_table(run):
        print(f"  {line}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ..run import predict

    with stop_on_signals(args.grace):
        out = predict(_load(args), progress=not args.quiet)
    print(f"embeddings and foreground written to {out}")
    return 0


def cmd_job_script(args: argparse.Namespace) -> int:
    from ..cluster.jobqueue import job_script
    from ..config import JOBQUEUE_KINDS

    cluster = _load(args).cluster
    if cluster.kind not in JOBQUEUE_KINDS:
        raise ConfigError(f"job-script: cluster.kind is '{cluster.kind}'; it needs a batch scheduler kind "
                          f"({', '.join(JOBQUEUE_KINDS)}), e.g. --set cluster.kind=slurm")
    print(job_script(cluster))
    if cluster.tls:
        print("# TLS: the run adds --tls-ca-file/--tls-cert/--tls-key for credentials it makes when it starts "
              f"(temporary, in {cluster.log_directory}/.credentials)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from ..qc.repair import repair
    from ..run import segment

    with stop_on_signals(args.grace):
        if args.repair:
            out = repair(_load(args), progress=not args.quiet)
            print(f"{out}: every file as the run wrote it")
            return 0
        out = segment(_load(args), progress=not args.quiet)
    print(f"segmentation written to {out}/segmentation, objects table {out}/objects.csv")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    if args.crops is None:
        args.crops = 0 if args.look == "demo" else 3
    result = run_demo(Path(args.out), size=args.size, seed=args.seed, overwrite=args.overwrite,
                      n_workers=args.workers, progress=not args.quiet, look=args.look, crops=args.crops,
                      model=args.model)
    print(f"demo volume: {result['input']}")
    print(f"segmentation: {result['output']}/segmentation ({result['objects']} objects, "
          f"ground truth {result['gt_objects']})")
    print(f"AP@0.5 {result['ap50']:.3f}  AP@0.75 {result['ap75']:.3f}  avAP {result['avap']:.3f}  "
          f"({result['seconds']:.1f} s)")
    if result["finetune"]:
        print(f"partly annotated training crops and their fine-tuning config: {result['finetune']}")
    return 0


def _grace_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grace", type=float, default=DEFAULT_GRACE_S, metavar="SECONDS",
                   help="on SIGTERM or SIGINT: seconds the running tasks get to finish before the run stops "
                   f"(resumable; exit 128+signal; default {DEFAULT_GRACE_S:g})")


def add_plan_commands(sub: Any) -> None:
    p = sub.add_parser("plan", help="print the block plan and exit without computing")
    _config_args(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("predict", help="write embeddings + foreground for the whole volume")
    _config_args(p, overwrite=True)
    _grace_arg(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("job-script", help="print the worker job script a batch cluster kind (slurm, pbs, sge, "
                       "lsf, htcondor) would submit; starts and submits nothing")
    _config_args(p)
    p.set_defaults(func=cmd_job_script)


def add_run_command(sub: Any) -> None:
    p = sub.add_parser("run", help="predict + cluster + merge + relabel: the global instance volume")
    _config_args(p, overwrite=True)
    _grace_arg(p)
    p.add_argument("--repair", action="store_true", help="a finished output: compute again the files `pipeline verify "
                   "--integrity` finds missing or damaged (segmentation chunks, label levels)")
    p.set_defaults(func=cmd_run)


def add_demo_command(sub: Any) -> None:
    p = sub.add_parser("demo", help="generate a synthetic volume, segment it with a bundled model, score it")
    p.add_argument("--out", default="pipeline-demo", help="folder for the demo input and output")
    p.add_argument("--size", type=int, nargs=3, default=[48, 128, 128], metavar=("Z", "Y", "X"))
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--look", default="demo", help="appearance of the volume: demo (the bundled model's training "
                   "look), lightsheet, lightsheet-dense, confocal, stardist-like, widefield")
    p.add_argument("--model", default="demo", help="the model that segments it (and that --crops' config "
                   "fine-tunes): demo (the default) or generalist (every look), or a checkpoint file")
    p.add_argument("--crops", type=int, default=None, help="also write this many partly annotated training crops and "
                   "a fine-tuning config (default: 3 with a --look other than demo, else 0)")
    p.set_defaults(func=cmd_demo)
