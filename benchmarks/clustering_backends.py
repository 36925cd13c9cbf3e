"""Clustering throughput per CPU core, numba and torch vs the numpy reference, on demo-model
embeddings; checks that all give identical fragments. Timed by the process's CPU time (best of
``--repeats``), so other jobs on the machine move the numbers less than wall time would.

    python benchmarks/clustering_backends.py [--shape 64 256 256] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, synthetic_volume

from pipeline.clustering import make_method, resolve_params
from pipeline.config import validate_config
from pipeline.network.checkpoint import open_checkpoint
from pipeline.network.predict import NormStats, Predictor, predict_whole


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=3, default=[64, 256, 256])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="torch device for the torch backend")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ck = open_checkpoint("demo")
    img, _ = synthetic_volume(args.shape, seed=3)
    lo, hi = np.percentile(img, [1, 99.8])
    out = predict_whole(Predictor(ck.model), img[None], NormStats.from_values(ck.spec.normalisation, lo, hi))
    emb, fg = out[:-1], out[-1]
    print(f"machine: {machine()}; {args.threads} thread(s); volume {args.shape} ({emb[0].size / 1e6:.2f} Mvox)")
    backends = ("numpy", "torch", "numba")
    print(f"{'method':<15} " + " ".join(f"{b + ' Mvox/s':>13}" for b in backends) + f" {'numba/numpy':>12}  identical")
    for method in ("connectivity", "agglomeration"):
        cfg = validate_config({"input": {"path": "x"}, "output": {"path": "y"}, "clustering": {"method": method}})
        params = resolve_params(cfg.clustering, ck.info)
        rates, results = {}, {}
        for backend in backends:
            m = make_method(params, backend=backend, device=args.device)
            results[backend] = m.fragments(emb, fg)  # warm-up
            best = min(_timed(m.fragments, emb, fg) for _ in range(args.repeats))
            rates[backend] = emb[0].size / best / 1e6
        same = all(np.array_equal(results["numpy"], results[b]) for b in backends)
        print(f"{method:<15} " + " ".join(f"{rates[b]:>13.2f}" for b in backends)
              + f" {rates['numba'] / rates['numpy']:>12.2f}  {same} ({results['numpy'].max()} fragments)")


def _timed(fn, *a) -> float:  # type: ignore[no-untyped-def]
    t0 = time.process_time()
    fn(*a)
    return time.process_time() - t0


if __name__ == "__main__":
    main()
