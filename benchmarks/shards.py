"""Files per label array with and without shards (issue 31 item 1), measured on one dense run side by
side: the same volume and blocks with ``output.shards: none`` and with shards; the file count, bytes and
wall time of each array, the scratch's files just before it is removed (the fragments sharded alike,
their faces and done markers one file per task), and whether the labels are identical.

    python benchmarks/shards.py --shape 64 512 512 --write 16 64 64 --shards 64 256 256
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.run import segment
from pipeline.runtime.store import Store
from pipeline.volume import synthetic
from pipeline.volume.io import open_array, write_zarr


def array_files(root: Path) -> dict[str, tuple[int, int]]:
    """Per array under ``root`` (a folder holding a ``zarr.json`` of an array): files and bytes of its chunks."""
    out = {}
    for meta in sorted(root.rglob("zarr.json")):
        folder = meta.parent.resolve()
        if '"node_type": "array"' not in meta.read_text() or {"scratch", "qc"} & set(meta.parent.relative_to(root).parts):
            continue
        chunk_files = [p for p in (folder / "c").rglob("*") if p.is_file()] if (folder / "c").is_dir() else []
        out[str(meta.parent.relative_to(root))] = (len(chunk_files), sum(p.stat().st_size for p in chunk_files))
    return out


def scratch_files(root: Path) -> dict[str, tuple[int, int]]:
    """Files and bytes of each folder of ``root/scratch`` (the fragments: their chunk or shard files)."""
    out = {}
    for folder in sorted((root / "scratch").iterdir()):
        if folder.is_dir():
            files = [p for p in folder.rglob("*") if p.is_file() and p.name != "zarr.json"]
            out[folder.name] = (len(files), sum(p.stat().st_size for p in files))
    return out


def segment_watched(cfg: dict) -> tuple[Path, dict[str, tuple[int, int]]]:
    """:func:`segment`, with the scratch's files counted when the run finishes (before they go)."""
    seen: dict[str, tuple[int, int]] = {}
    finish = Store.finish

    def counted(self: Store, attrs: dict) -> None:
        seen.update(scratch_files(Path(self.path)))
        return finish(self, attrs)

    Store.finish = counted  # type: ignore[method-assign]
    try:
        return segment(cfg), seen
    finally:
        Store.finish = finish  # type: ignore[method-assign]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[64, 512, 512])
    ap.add_argument("--write", type=int, nargs=3, default=[16, 64, 64])
    ap.add_argument("--shards", type=int, nargs=3, default=[64, 256, 256])
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="shards-"))
    image, _ = synthetic.generate(synthetic.appearance("demo", shape=tuple(args.shape)), seed=7)
    write_zarr(tmp / "in.zarr", image, chunks=args.write, name="raw")
    print(f"volume {tuple(args.shape)} dense synthetic nuclei, blocks {tuple(args.write)}; load {os.getloadavg()[0]:.1f}")
    warm = {"input": {"path": str(tmp / "in.zarr"), "dataset": "raw"}, "output": {"path": str(tmp / "warm.zarr")},
            "blocks": {"write_shape": list(args.write)}, "cluster": {"kind": "serial"}}
    segment(warm)  # compiled kernels and the model loaded once, before either is timed
    results = {}
    for name, shards in (("none", "none"), ("sharded", list(args.shards))):
        cfg = {"input": {"path": str(tmp / "in.zarr"), "dataset": "raw"},
               "output": {"path": str(tmp / f"{name}.zarr"), "shards": shards},
               "blocks": {"write_shape": list(args.write)}, "cluster": {"kind": "serial"}}
        t0 = time.perf_counter()
        out, scratch = segment_watched(cfg)
        wall = time.perf_counter() - t0
        results[name] = (out, array_files(out), wall)
        print(f"\noutput.shards: {shards} ({wall:.1f} s)")
        for array, (n, size) in results[name][1].items():
            print(f"  {array:32s} {n:6d} files {size / 2**20:8.2f} MiB")
        for folder, (n, size) in scratch.items():
            print(f"  {'scratch/' + folder:32s} {n:6d} files {size / 2**20:8.2f} MiB (at the end, before removal)")
    same = np.array_equal(open_array(results["none"][0] / "segmentation", mode="r")[...],
                          open_array(results["sharded"][0] / "segmentation", mode="r")[...])
    total = {k: sum(n for n, _ in v[1].values()) for k, v in results.items()}
    print(f"\nlabel files in all: {total['none']} -> {total['sharded']} "
          f"({total['none'] / max(total['sharded'], 1):.0f}x fewer); segmentation identical: {same}")


if __name__ == "__main__":
    main()
