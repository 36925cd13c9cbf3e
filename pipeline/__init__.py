"""Out-of-core, Dask-distributed instance segmentation of huge 3D microscopy volumes."""

from __future__ import annotations

__version__ = "0.1.0"

from .config import Config, load_config
from .run import predict, segment

__all__ = ["Config", "__version__", "load_config", "predict", "segment"]
