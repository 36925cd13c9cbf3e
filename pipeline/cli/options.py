"""The config options commands share: a YAML config file with ``--set`` overrides (and
``--overwrite``, ``--recompute-changed`` for commands that write an output), and the config they give."""

from __future__ import annotations

import argparse
from typing import Any

from ..config import load_config


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
