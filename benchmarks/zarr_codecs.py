"""Writing and reading our chunks: zarr-python (plain, and through ``write_region``), the zarrs
codec pipeline and tensorstore, side by side in one run (issue 29, item 3).

The arrays are what a run writes per (64, 256, 256) block: the ``fragments`` (block-local ids,
uint32) and the ``segmentation`` (uint32, objects numbered on across blocks), from demo-model agglomeration of synthetic nuclei, 4 blocks
side by side; chunks (64, 256, 256), zstd (zarr's default codecs). Every path must read back the
same values and, where it writes, leave chunks zarr-python reads. CPU seconds per Mvox (the
process's user + system time, median of ``--repeats``), and the bytes on disk.

    python benchmarks/zarr_codecs.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, synthetic_volume

CHUNK = (64, 256, 256)


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def volumes() -> dict[str, np.ndarray]:
    from pipeline.clustering import make_method, resolve_params
    from pipeline.config import validate_config
    from pipeline.network.checkpoint import open_checkpoint
    from pipeline.network.predict import NormStats, Predictor, predict_whole
    from pipeline.stages.ids import fragment_dtype, fragment_ids

    ck = open_checkpoint("demo")
    img, _ = synthetic_volume(list(CHUNK), seed=3)
    lo, hi = np.percentile(img, [1, 99.8])
    out = predict_whole(Predictor(ck.model), img[None], NormStats.from_values(ck.spec.normalisation, lo, hi))
    cfg = validate_config({"input": {"path": "x"}, "output": {"path": "y"}})
    local = make_method(resolve_params(cfg.clustering, ck.info)).fragments(out[:-1], out[-1])
    stride = local.size
    labels = [fragment_ids(local, b, int(local.max())).astype(np.uint32) for b in range(4)]  # objects numbered on across blocks
    return {f"fragments ({fragment_dtype(stride)}, block-local)": np.concatenate([local.astype(fragment_dtype(stride))] * 4, axis=2),
            "segmentation (uint32)": np.concatenate(labels, axis=2)}


def zarr_python(path: Path, data: np.ndarray, ours: bool, pipeline: str | None = None) -> tuple[Callable, Callable]:
    from pipeline.volume.io import write_region

    config = {"codec_pipeline.path": pipeline} if pipeline else {}
    with zarr.config.set(config):
        arr = zarr.create_array(str(path), shape=data.shape, chunks=CHUNK, dtype=data.dtype, fill_value=0, overwrite=True)

    def write(i: int, block: np.ndarray) -> None:
        sl = (slice(None), slice(None), slice(i * CHUNK[2], (i + 1) * CHUNK[2]))
        with zarr.config.set(config):
            if ours:
                write_region(arr, sl, block)
            else:
                arr[sl] = block

    def read(i: int) -> np.ndarray:
        with zarr.config.set(config):
            return arr[:, :, i * CHUNK[2]:(i + 1) * CHUNK[2]]

    return write, read


def tensorstore(path: Path, data: np.ndarray) -> tuple[Callable, Callable]:
    import tensorstore as ts

    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path)},
            "metadata": {"shape": list(data.shape), "data_type": str(data.dtype), "fill_value": 0,
                         "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(CHUNK)}},
                         "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                                    {"name": "zstd", "configuration": {"level": 0, "checksum": False}}]},
            "create": True, "delete_existing": True}
    arr = ts.open(spec).result()

    def write(i: int, block: np.ndarray) -> None:
        arr[:, :, i * CHUNK[2]:(i + 1) * CHUNK[2]].write(block).result()

    def read(i: int) -> np.ndarray:
        return arr[:, :, i * CHUNK[2]:(i + 1) * CHUNK[2]].read().result()

    return write, read


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    vols = volumes()
    tmp = Path(tempfile.mkdtemp(prefix="codecs-"))
    paths: dict[str, Callable] = {
        "zarr-python": lambda p, d: zarr_python(p, d, ours=False),
        "zarr-python + write_region": lambda p, d: zarr_python(p, d, ours=True),
    }
    try:
        import zarrs  # noqa: F401

        paths["zarrs pipeline + write_region"] = lambda p, d: zarr_python(p, d, True, "zarrs.ZarrsCodecPipeline")
    except ImportError:
        print("zarrs not installed: pip install zarrs")
    try:
        import tensorstore as _

        paths["tensorstore"] = tensorstore
    except ImportError:
        print("tensorstore not installed: pip install tensorstore")
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}; chunks {CHUNK}, zstd level 0 (3)")
    print("| array | path | write CPU-s/Mvox | read CPU-s/Mvox | MB on disk | read back equal, by zarr-python too |")
    print("|---|---|---|---|---|---|")
    for key, data in vols.items():
        mvox = data.size / 1e6
        blocks = [np.ascontiguousarray(data[:, :, i * CHUNK[2]:(i + 1) * CHUNK[2]]) for i in range(4)]
        for name, make in paths.items():
            path = tmp / f"{name.replace(' ', '_')}-{key.split()[0]}.zarr"
            write, read = make(path, data)
            rows = []
            for _ in range(args.repeats + 1):  # the first repeat warms up (allocator, page cache) and is dropped
                c0 = cpu()
                for i, b in enumerate(blocks):
                    write(i, b)
                c1 = cpu()
                got = [read(i) for i in range(4)]
                rows.append((c1 - c0, cpu() - c1))
            same = all(np.array_equal(g, b) for g, b in zip(got, blocks, strict=True))
            same = same and np.array_equal(zarr.open_array(str(path))[...], data)
            w, r = np.median(np.array(rows[1:]), axis=0) / mvox
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6
            print(f"| {key} | {name} | {w:.4f} | {r:.4f} | {size:.2f} | {same} |", flush=True)


if __name__ == "__main__":
    main()
