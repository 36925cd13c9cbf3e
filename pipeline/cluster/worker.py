"""What batch jobs run (``python -m pipeline.cluster.worker``): distributed's ``dask-worker``, whose
failure to start is one line in the job log instead of a traceback.

A job cancelled while its nanny is still starting the worker process (the end of a run, a
scancel) makes ``dask-worker`` raise "Nanny failed to start" from its top level, which Python
prints as a traceback no logging filter sees. Any other start-up failure (a wrong Python, an
unreachable scheduler) is one line too, naming the exception and its message; the exit code
stays non-zero.
"""

from __future__ import annotations

import sys


def main() -> None:
    from distributed.cli import dask_worker

    try:
        dask_worker.main()
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - reported in one line, exit code 1
        cause = f" ({type(exc.__cause__).__name__}: {exc.__cause__})" if exc.__cause__ else ""
        print(f"pipeline.cluster.worker: dask-worker stopped: {type(exc).__name__}: {exc}{cause}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
