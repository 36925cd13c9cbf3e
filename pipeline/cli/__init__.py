"""Command line: a thin layer over the Python API.

Usage errors (every :class:`~pipeline.errors.UsageError`: bad config, input, checkpoint,
plan, cluster, existing output, unreadable input, changed input on resume, an output in use,
a full disk, ...) print one line and exit with code 2; ``--debug`` shows the full traceback
instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ConfigError, load_config
from ..errors import UsageError, space_error
from ..version import __version__
from ..volume.io import InputError

logger = logging.getLogger("pipeline")


def _config_args(p: argparse.ArgumentParser, overwrite: bool = False) -> None:
    p.add_argument("config", nargs="?", help="YAML config file (omitted: built-in defaults)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set blocks.write_shape=[16,32,32]")
    if overwrite:
        p.add_argument("--overwrite", action="store_true", help="replace an existing output")
        p.add_argument("--recompute-changed", action="store_true",
                       help="resuming a run whose input changed: recompute the blocks that read changed input "
                       "and every later stage (output.changed_input: recompute)")


def _load(args: argparse.Namespace) -> Any:
    overrides = list(args.set)
    if getattr(args, "overwrite", False):
        overrides.append("output.overwrite=true")
    if getattr(args, "recompute_changed", False):
        overrides.append("output.changed_input=recompute")
    return load_config(args.config, overrides)


def cmd_plan(args: argparse.Namespace) -> int:
    from ..plan.labels import check_labels, label_target
    from ..plan.outputs import work_fraction
    from ..plan.prepare import prepare
    from ..plan.space import check_space, space_summary
    from ..plan.summary import cost_table, plan_summary
    from ..runtime.engine import Engine
    from ..runtime.output import check_output
    from ..stages import ScanStage
    from ..stages.scan import listed_empty

    run = prepare(_load(args))
    out = run.config.output
    summary = plan_summary(run)
    vol = run.volume
    summary["voxel_size"] = (f"{list(vol.voxel_size)} {vol.units[0] if vol.units and vol.units[0] else ''}".strip()
                             if vol.voxel_size else "unknown (the input records none)")
    target = label_target(run)
    summary["label_image"] = (f"{target.group} (NGFF {target.version}, {len(target.levels)} level{'s' if len(target.levels) != 1 else ''}, "
                              f"{'under the input image' if target.mode == 'image' else 'standalone'})"
                              if target else "none (output.labels: none)")
    summary.update(space_summary(run, target))
    absent = listed_empty(run.plan, run.empty, run.config.input, run.zoom)
    problems = []  # what `pipeline run` would refuse before starting
    for check in (lambda: check_output(out.path, out.overwrite),
                  lambda: check_labels(target, Path(out.path), out.overwrite) if target else None,
                  lambda: check_space(run, target, fraction=work_fraction(len(run.plan), None, absent))):
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

    out = predict(_load(args), progress=not args.quiet)
    print(f"embeddings and foreground written to {out}")
    return 0


def cmd_model_init(args: argparse.Namespace) -> int:
    import yaml

    from ..network.checkpoint import save_checkpoint
    from ..network.metadata import CheckpointInfo
    from ..network.model import ModelSpec, count_parameters, init_model

    data = {}
    if args.spec:
        p = Path(args.spec)
        if not p.is_file():
            raise ConfigError(f"model spec '{p}' does not exist (give a YAML file with ModelSpec fields)")
        data = yaml.safe_load(p.read_text()) or {}
    try:
        spec = ModelSpec.model_validate(data)
    except Exception as exc:  # noqa: BLE001 - pydantic ValidationError
        raise ConfigError(f"model spec '{args.spec}': {str(exc).splitlines()[-2].strip()} ") from None
    model = init_model(spec, seed=args.seed)
    save_checkpoint(model, args.out, CheckpointInfo(trained=False, seed=args.seed))
    print(f"wrote {args.out}: step {list(spec.step)}, context {list(spec.context)}, {count_parameters(model)} parameters")
    return 0


def cmd_model_info(args: argparse.Namespace) -> int:
    from ..network.checkpoint import open_checkpoint
    from ..network.model import count_parameters

    ckpt = open_checkpoint(args.checkpoint)
    spec = ckpt.spec
    # the metadata the checkpoint records (fields it leaves out are not shown)
    extra = ckpt.info.model_dump(mode="json", exclude_unset=True)
    info = {
        "checkpoint": args.checkpoint,
        "digest": ckpt.digest,
        "ndim": spec.ndim,
        "in_channels": spec.in_channels,
        "embed_dim": spec.embed_dim,
        "out_channels": spec.out_channels,
        "levels": spec.levels,
        "downsample": [list(f) for f in spec.downsample],
        "step": list(spec.step),
        "context": list(spec.context),
        "min_input": list(spec.input_shape(spec.step)),
        "parameters": count_parameters(ckpt.model),
        "normalisation": spec.normalisation.model_dump(),
        **{k: v for k, v in extra.items() if k in ("trained", "iterations", "delta_v", "delta_d", "metrics", "clustering",
                                                 "diameter")},
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:<13} {v}")
    return 0


def cmd_model_export(args: argparse.Namespace) -> int:
    from ..network.modelzoo import export_bioimageio

    rdf = export_bioimageio(args.checkpoint, args.out, name=args.name, authors=tuple(args.author),
                            overwrite=args.overwrite)
    print(f"bioimage.io model package written to {rdf.parent} (description {rdf}; run it with "
          f"--set model.checkpoint={rdf})")
    return 0


def cmd_job_script(args: argparse.Namespace) -> int:
    from ..cluster.deploy import job_script
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"pipeline {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plan", help="print the block plan and exit without computing")
    _config_args(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("predict", help="write embeddings + foreground for the whole volume")
    _config_args(p, overwrite=True)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("job-script", help="print the worker job script a batch cluster kind (slurm, pbs, sge, "
                       "lsf, htcondor) would submit; starts and submits nothing")
    _config_args(p)
    p.set_defaults(func=cmd_job_script)

    m = sub.add_parser("model", help="create or inspect checkpoints")
    msub = m.add_subparsers(dest="model_command", required=True)
    p = msub.add_parser("init", help="randomly initialised checkpoint from a spec")
    p.add_argument("spec", nargs="?", help="YAML ModelSpec (default: small 3D U-Net)")
    p.add_argument("--out", required=True, help="checkpoint file to write")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_model_init)
    p = msub.add_parser("info", help="print step, context, channels, parameter count")
    p.add_argument("checkpoint", help="checkpoint file or 'demo'")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_model_info)
    p = msub.add_parser("export", help="write a model package for other tools (bioimage.io format 0.5)")
    p.add_argument("checkpoint", help="checkpoint file or 'demo'")
    p.add_argument("--format", choices=["bioimageio"], default="bioimageio")
    p.add_argument("--out", required=True, help="folder for rdf.yaml, weights, test tensors, documentation")
    p.add_argument("--name", default=None, help="the model's name (default: the checkpoint's file name)")
    p.add_argument("--author", action="append", default=[], help="an author's name (repeat for several)")
    p.add_argument("--overwrite", action="store_true", help="write into a folder that is not empty")
    p.set_defaults(func=cmd_model_export)

    for extra in _EXTRA_COMMANDS:
        extra(sub)
    return parser


_EXTRA_COMMANDS: list[Any] = []


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("distributed", "tornado", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING if not args.verbose else logging.INFO)
    # tifffile warns about what our own errors then explain (e.g. a file with no pages)
    logging.getLogger("tifffile").setLevel(logging.ERROR if not args.verbose else logging.INFO)
    # distributed sets its own level when imported, here and in the workers this process starts;
    # set for this command only (the variable would otherwise follow into later jobs of a caller)
    # (the state machine warns of every task cancelled when a run stops on an error: expected)
    quiet = not args.verbose and not any(k.startswith("DASK_LOGGING") for k in os.environ)
    if quiet:
        os.environ["DASK_LOGGING"] = repr(QUIET_DASK_LOGGING)
    try:
        return _dispatch(args)
    finally:
        if quiet:
            os.environ.pop("DASK_LOGGING", None)


QUIET_DASK_LOGGING = {"distributed": "warning", "distributed.worker.state_machine": "error"}


def _dispatch(args: argparse.Namespace) -> int:
    """Run the command; a user error is one line and exit code 2."""
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        full = space_error(exc)
        if full is not None:
            print(f"error: {full}; free space (or raise the quota) and rerun", file=sys.stderr)
            return 2
        print(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        return 1


def cmd_train(args: argparse.Namespace) -> int:
    from ..train import load_train_config, train

    overrides = (*args.set, *(["overwrite=true"] if args.overwrite else []))
    out = train(load_train_config(args.config, overrides), progress=not args.quiet)
    print(f"checkpoint written to {out}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ..train import calibrate, load_train_config

    overrides = list(args.set)
    if args.checkpoint:
        overrides += [f"resume={args.checkpoint}", "init=null"]
    if args.out:
        overrides.append(f"out={args.out}")
    if args.overwrite:
        overrides.append("overwrite=true")
    out = calibrate(load_train_config(args.config, tuple(overrides)))
    print(f"calibrated checkpoint written to {out}")
    return 0


def _add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="train a model with the discriminative loss")
    p.add_argument("config", help="training YAML (see configs/train_demo.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at 'out'")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("calibrate", help="choose a checkpoint's default clustering method and parameters on the "
                       "validation volumes of a training config")
    p.add_argument("config", help="training YAML whose validation volumes are used")
    p.add_argument("--checkpoint", help="checkpoint to calibrate (default: the config's 'resume')")
    p.add_argument("--out", help="where to write the calibrated checkpoint (default: the config's 'out')")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at --out")
    p.set_defaults(func=cmd_calibrate)


_EXTRA_COMMANDS.append(_add_train)


def cmd_run(args: argparse.Namespace) -> int:
    from ..run import segment

    out = segment(_load(args), progress=not args.quiet)
    print(f"segmentation written to {out}/segmentation, objects table {out}/objects.csv")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..qc.metrics import by_size, contingency, restrict, scores
    from ..volume.formats import open_label_array

    pred = open_label_array(args.pred, args.pred_dataset)
    gt = open_label_array(args.gt, args.gt_dataset)
    if pred.shape != gt.shape:
        raise InputError(f"--pred {list(pred.shape)} and --gt {list(gt.shape)} differ in shape")
    if args.annotated:  # a partly annotated ground truth: score what was annotated (read whole)
        mask = open_label_array(args.annotated, args.annotated_dataset)
        if mask.shape != gt.shape:
            raise InputError(f"--annotated {list(mask.shape)} and --gt {list(gt.shape)} differ in shape")
        pred, gt = restrict(np.asarray(pred[...]), np.asarray(gt[...]), np.asarray(mask[...]) != 0)
    table = contingency(pred, gt)
    s, sizes = scores(table), by_size(table)
    if args.json:
        print(json.dumps({**s.summary(), "per_threshold": [
            {"threshold": t, **s.at(t)} for t in s.thresholds], "by_size": sizes}, indent=2))
        return 0
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


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    if args.crops is None:
        args.crops = 0 if args.look == "demo" else 3
    result = run_demo(Path(args.out), size=args.size, seed=args.seed, overwrite=args.overwrite,
                      n_workers=args.workers, progress=not args.quiet, look=args.look, crops=args.crops)
    print(f"demo volume: {result['input']}")
    print(f"segmentation: {result['output']}/segmentation ({result['objects']} objects, "
          f"ground truth {result['gt_objects']})")
    print(f"AP@0.5 {result['ap50']:.3f}  AP@0.75 {result['ap75']:.3f}  avAP {result['avap']:.3f}  "
          f"({result['seconds']:.1f} s)")
    if result["finetune"]:
        print(f"partly annotated training crops and their fine-tuning config: {result['finetune']}")
    return 0


def _add_more(sub: Any) -> None:
    p = sub.add_parser("run", help="predict + cluster + merge + relabel: the global instance volume")
    _config_args(p, overwrite=True)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("evaluate", help="AP, precision, recall, F1 at IoU thresholds; splits and merges")
    p.add_argument("--pred", required=True, help="labels: a run's output group, a zarr array (or group with "
                   "--pred-dataset), an OME-Zarr label image, a TIFF file or folder, an HDF5 file")
    p.add_argument("--gt", required=True, help="labels, in any of --pred's formats (a group with --gt-dataset)")
    p.add_argument("--pred-dataset", default=None)
    p.add_argument("--gt-dataset", default=None)
    p.add_argument("--annotated", default=None, help="mask of the annotated voxels of a partly annotated --gt "
                   "(nonzero = annotated): only they are scored, and predicted objects mostly outside it are ignored")
    p.add_argument("--annotated-dataset", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="generate a synthetic volume, segment it with the demo model, score it")
    p.add_argument("--out", default="pipeline-demo", help="folder for the demo input and output")
    p.add_argument("--size", type=int, nargs=3, default=[48, 128, 128], metavar=("Z", "Y", "X"))
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--look", default="demo", help="appearance of the volume: demo (the bundled model's training "
                   "look), lightsheet, lightsheet-dense, confocal, widefield")
    p.add_argument("--crops", type=int, default=None, help="also write this many partly annotated training crops and "
                   "a fine-tuning config (default: 3 with a --look other than demo, else 0)")
    p.set_defaults(func=cmd_demo)


_EXTRA_COMMANDS.append(_add_more)


def _add_qc(sub: Any) -> None:
    from .qc import add_qc_commands

    add_qc_commands(sub)


_EXTRA_COMMANDS.append(_add_qc)


if __name__ == "__main__":
    sys.exit(main())
