"""Sample data (File > Open Sample > pipeline): the demo volume, generated (never downloaded) into a
cache folder once, so the widgets can segment it like any input on disk."""

from __future__ import annotations

import os
from pathlib import Path

import zarr

from ..demo import write_demo_input
from .frame import LayerData, with_axis_labels


def cache_folder() -> Path:
    """``$PIPELINE_CACHE``, else ``$XDG_CACHE_HOME/pipeline`` (``~/.cache/pipeline``)."""
    if os.environ.get("PIPELINE_CACHE"):
        return Path(os.environ["PIPELINE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pipeline"


def demo_input() -> Path:
    """The demo volume's zarr group (``raw``, ``labels``), generated on first use."""
    path = cache_folder() / "napari-demo" / "input.zarr"
    done = path / "complete"
    if not done.exists():
        partial = path.with_name(f".input-{os.getpid()}.zarr")
        write_demo_input(partial)
        if path.exists():
            import shutil

            shutil.rmtree(path)
        partial.rename(path)
        done.touch()
    return path


def demo_sample() -> list[LayerData]:
    """The demo volume and (hidden) its ground truth; the image records where it lies on disk."""
    path = demo_input()
    raw = zarr.open_array(str(path / "raw"), mode="r")
    labels = zarr.open_array(str(path / "labels"), mode="r")
    source = {"pipeline": {"input": {"path": str(path), "dataset": "raw"}}}
    return [with_axis_labels((raw, {"name": "demo raw", "metadata": source}, "image"), raw.ndim),
            with_axis_labels((labels, {"name": "demo ground truth", "visible": False, "opacity": 0.5}, "labels"),
                             labels.ndim)]
