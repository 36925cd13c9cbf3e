"""The reader contribution: a result group, one of our label images, or an OME-Zarr image holding
one, opened as the layers of :func:`pipeline.napari.layers.result_layers`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .frame import LayerData
from .layers import result_layers
from .result import result_of


def get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """A reader for ``path`` when it is ours (one path), else None (napari asks other plugins)."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    result = result_of(Path(path))
    if result is None:
        return None
    return lambda _: result_layers(result)
