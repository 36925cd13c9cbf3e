"""Command line: a thin layer over the Python API.

Usage errors (every :class:`~pipeline.errors.UsageError`: bad config, input, checkpoint,
plan, cluster, existing output, unreadable input, changed input on resume, an output in use,
a full disk, ...) print one line and exit with code 2; ``--debug`` shows the full traceback
instead.

This module builds the parser (each group of commands adds its own: ``running``, ``models``,
``qc``) and runs a command in :func:`main`; the first line above is ``pipeline --help``'s description.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from collections.abc import Sequence

from ..errors import UsageError, space_error
from ..runtime.signals import Stopped
from ..version import __version__
from .models import add_model_commands, add_train_commands
from .qc import add_evaluate_command, add_qc_commands
from .running import add_demo_command, add_plan_commands, add_run_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"pipeline {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    # in the order `pipeline --help` lists them
    add_plan_commands(sub)  # plan, predict, job-script
    add_model_commands(sub)  # model init|info|export
    add_train_commands(sub)  # train, calibrate
    add_run_command(sub)
    add_evaluate_command(sub)
    add_demo_command(sub)
    add_qc_commands(sub)  # report, verify
    return parser


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
        return _dispatch(args, list(sys.argv[1:] if argv is None else argv))
    finally:
        if quiet:
            os.environ.pop("DASK_LOGGING", None)


QUIET_DASK_LOGGING = {"distributed": "warning", "distributed.worker.state_machine": "error"}


def _dispatch(args: argparse.Namespace, argv: list[str]) -> int:
    """Run the command; a user error is one line and exit code 2; a run stopped by a signal one
    line (what was done, how to resume) and exit code 128 + the signal."""
    try:
        return int(args.func(args) or 0)
    except Stopped as stop:
        print(f"{stop}; everything finished is kept: rerun the same command to resume (pipeline "
              f"{shlex.join(argv)})", file=sys.stderr)
        return stop.exit_code
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
