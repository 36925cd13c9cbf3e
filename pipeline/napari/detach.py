"""``python -m pipeline.napari.detach RECORD CONFIG``: the CLI's ``pipeline -q run CONFIG`` for a run
the viewer launched (see :mod:`pipeline.napari.launch`), then its exit code into the run record."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..cli import main as cli_main
from .launch import Run

RECORD_WAIT_S = 30.0  # the launcher writes the record right after starting this process


def main(record: str, config: str) -> int:
    code = 1
    try:
        code = cli_main(["-q", "run", config])
    finally:
        path = Path(record)
        deadline = time.monotonic() + RECORD_WAIT_S
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if path.exists():
            run = Run.load(path)
            Run(run.record, run.pid, run.config, run.output, run.log, run.started, run.create_time, code).save(
                finished=time.time())
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
