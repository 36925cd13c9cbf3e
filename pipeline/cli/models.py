"""The commands for models: ``pipeline model init|info|export``, ``train`` and ``calibrate``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..config import ConfigError


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


def add_model_commands(sub: Any) -> None:
    m = sub.add_parser("model", help="create or inspect checkpoints")
    msub = m.add_subparsers(dest="model_command", required=True)
    p = msub.add_parser("init", help="randomly initialised checkpoint from a spec")
    p.add_argument("spec", nargs="?", help="YAML ModelSpec (default: small 3D U-Net)")
    p.add_argument("--out", required=True, help="checkpoint file to write")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_model_init)
    p = msub.add_parser("info", help="print step, context, channels, parameter count")
    p.add_argument("checkpoint", help="checkpoint file, or 'demo' or 'generalist' (bundled)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_model_info)
    p = msub.add_parser("export", help="write a model package for other tools (bioimage.io format 0.5)")
    p.add_argument("checkpoint", help="checkpoint file, or 'demo' or 'generalist' (bundled)")
    p.add_argument("--format", choices=["bioimageio"], default="bioimageio")
    p.add_argument("--out", required=True, help="folder for rdf.yaml, weights, test tensors, documentation")
    p.add_argument("--name", default=None, help="the model's name (default: the checkpoint's file name)")
    p.add_argument("--author", action="append", default=[],
                   help="an author's name (repeat for several; default: the authors the checkpoint records, "
                   "else you, from git's user.name or your account)")
    p.add_argument("--overwrite", action="store_true", help="write into a folder that is not empty")
    p.set_defaults(func=cmd_model_export)


def add_train_commands(sub: Any) -> None:
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
