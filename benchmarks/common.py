"""Shared helpers for the benchmark scripts (not part of the package)."""

from __future__ import annotations

import platform
import resource
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch


def machine() -> str:
    import os

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, {gpu}, torch {torch.__version__}, {platform.python_version()}"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextmanager
def timer(results: dict, key: str):
    t0 = time.perf_counter()
    yield
    results[key] = time.perf_counter() - t0


def synthetic_volume(shape, seed=0):
    from pipeline.volume.synthetic import SyntheticSpec, generate

    return generate(SyntheticSpec(shape=tuple(shape), radius=(5.0, 10.0), anisotropy=2.0, density=0.25, overlap=0.0), seed=seed)


def best_of(fn, repeats=2):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


__all__ = ["best_of", "machine", "np", "peak_rss_mib", "synthetic_volume", "timer"]
