"""Embedding clustering: one block's embeddings -> fragments, and the cross-block rules.

Not to be confused with Dask clusters (:mod:`pipeline.cluster.deploy`). Each method is a class
in its own module (``connectivity``, ``agglomeration``, ``meanshift``), found here by
importing every module of this package; :func:`make_method` builds the one a run uses.
Fragment labels are ``int64`` numbered ``1..k`` in raster order of their first voxel;
0 is background.
"""

from __future__ import annotations

import importlib
import pkgutil

import numpy as np

from .base import METHOD_NAMES, ClusteringParams, EvidenceMethod, Method, method_class, register
from .kernels import connectivity_fragments, label_components, region_adjacency, remove_small
from .params import resolve_params

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

METHODS: tuple[str, ...] = tuple(METHOD_NAMES)


def make_method(params: ClusteringParams, min_contact: int = 1, max_distance: float | None = None,
                backend: str = "auto", device: str = "auto") -> Method:
    """The method named by ``params.method``, with its parameters, merge rule and backend."""
    return method_class(params.method)(params, min_contact, max_distance, backend, device)


def fragments(emb: np.ndarray, fg: np.ndarray, params: ClusteringParams, backend: str = "auto") -> np.ndarray:
    """Block-local fragments of one block's embeddings ``(E, *S)`` and foreground ``(*S)``."""
    return make_method(params, backend=backend).fragments(emb, fg)


__all__ = [
    "METHODS", "METHOD_NAMES", "ClusteringParams", "EvidenceMethod", "Method", "connectivity_fragments", "fragments",
    "label_components", "make_method", "method_class", "region_adjacency", "register", "remove_small", "resolve_params",
]
