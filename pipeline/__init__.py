"""Out-of-core, Dask-distributed instance segmentation of huge 3D microscopy volumes."""

from __future__ import annotations

from .config import Config, load_config
from .run import predict, segment
from .version import __version__

__all__ = ["Config", "__version__", "load_config", "predict", "segment"]
