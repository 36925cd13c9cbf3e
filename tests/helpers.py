"""Test helpers: hand-made checkpoints and comparisons."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.network.checkpoint import save_checkpoint
from pipeline.network.model import passthrough_model


def passthrough_checkpoint(path: Path, ndim: int = 3, downsample=None, gain: float = 10.0, embed_dim: int = 2) -> Path:
    """Checkpoint of :func:`pipeline.network.model.passthrough_model`: tests draw foreground and
    embeddings directly in the input volume (values >= 0)."""
    model = passthrough_model(ndim, downsample, gain, embed_dim)
    save_checkpoint(model, path, extra={"delta_v": 0.5, "delta_d": 1.5})
    return path


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True if two label arrays are equal up to a permutation of ids (0 = 0)."""
    if a.shape != b.shape or not np.array_equal(a > 0, b > 0):
        return False
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


# A client that kills itself (SIGKILL) in a stage: `python kill.py STAGE N pipeline-args...` runs the CLI and
# dies once the stage has returned N results (merge: once its tree reduction has returned; STAGE `none`:
# never); with PIPELINE_TEST_DELAY=<seconds> it waits that long after each result (a run that lasts);
# PIPELINE_TEST_SIGNAL=SIGTERM (or another name) sends that signal once instead of SIGKILL.
# Used by tests/test_faults.py and benchmarks/faults.py.
KILL_CLIENT = """
import os, signal, sys, time
import pipeline.runtime.engine as engine
stage, after = (sys.argv[1], int(sys.argv[2])) if len(sys.argv) > 2 else ("none", 0)
delay = float(os.environ.get("PIPELINE_TEST_DELAY", "0"))
sig = getattr(signal, os.environ.get("PIPELINE_TEST_SIGNAL", "SIGKILL"))
seen = []
def kill_after(desc):
    time.sleep(delay)
    if desc.split()[0] == stage:
        seen.append(desc)
        if len(seen) == after:
            os.kill(os.getpid(), sig)
original_map, original_reduce = engine.Engine.map, engine.Engine.reduce
def map_(self, fn, batches, *args, desc, **kw):
    for result in original_map(self, fn, batches, *args, desc=desc, **kw):
        yield result
        kill_after(desc)
def reduce_(self, leaf, combine, batches, *args, desc):
    ref = original_reduce(self, leaf, combine, batches, *args, desc=desc)
    kill_after(desc)
    return ref
if __name__ == "__main__":  # not in the worker processes a LocalCluster spawns (they import this module)
    engine.Engine.map, engine.Engine.reduce = map_, reduce_
    from pipeline.cli import main
    sys.exit(main(sys.argv[3:]))
"""
