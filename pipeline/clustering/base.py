"""What a clustering method is, the parameters it takes, and the registry of methods.

A method turns one block's embeddings and foreground into fragments (block-local labels
``1..k``, spatially connected), says what evidence it leaves on the block's faces, and
decides which fragment pairs that touch across a face belong to one object. Each method
is one class in its own module of this package, registered with :func:`register`;
adding a method means adding one module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np
import torch

from .compiled_voxels import fragment_means as compiled_fragment_means
from .faces import accept_by_evidence, face_pairs, values_at
from .kernels import fragment_means

BACKENDS = ("auto", "numba", "torch", "numpy")
_REGISTRY: dict[str, type[Method]] = {}
METHOD_NAMES: list[str] = []  # filled as method modules are imported (see __init__)


def register(cls: type[Method]) -> type[Method]:
    _REGISTRY[cls.name] = cls
    METHOD_NAMES[:] = sorted(_REGISTRY, key=lambda n: (_REGISTRY[n].rank, n))
    return cls


def method_class(name: str) -> type[Method]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"clustering.method must be one of {', '.join(METHOD_NAMES)}, got {name!r}") from None


@dataclass(frozen=True)
class ClusteringParams:
    """Every clustering key of one run, resolved (each method reads the keys it uses)."""

    method: str = "connectivity"
    foreground_threshold: float = 0.5
    threshold: float = 1.5  # connectivity/agglomeration: neighbour embedding distance
    merge_distance: float = 2.0  # agglomeration: distance of adjacent regions' means
    grow_threshold: float = 0.5  # agglomeration: foreground of the voxels cores grow into
    grow_distance: float = 3.0  # agglomeration: how far (voxels); 0 = no growth
    bandwidth: float = 1.0  # meanshift
    min_size: int = 0  # objects smaller than this are removed after merging

    def __post_init__(self) -> None:
        if self.method not in METHOD_NAMES:
            raise ValueError(f"clustering.method must be one of {', '.join(METHOD_NAMES)}, got {self.method!r}")

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ClusteringParams:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


class Method(ABC):
    """One clustering method with its resolved parameters and cross-block merge rule."""

    name: ClassVar[str]
    rank: ClassVar[int] = 100  # order in listings
    exact: ClassVar[bool] = False  # blockwise result identical to the single-block one
    cpu_backend: ClassVar[str] = "torch"  # the faster implementation on a CPU core
    backends: ClassVar[tuple[str, ...]] = ("torch", "numpy")  # the implementations it has

    def __init__(self, params: ClusteringParams, min_contact: int = 1, max_distance: float | None = None,
                 backend: str = "auto", device: str = "auto") -> None:
        if params.method != self.name:
            raise ValueError(f"parameters for {params.method!r} given to the {self.name!r} method")
        if backend not in BACKENDS:
            raise ValueError(f"clustering backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if backend != "auto" and backend not in self.backends:
            raise ValueError(f"clustering method {self.name!r} has no {backend!r} backend; use one of "
                             f"auto, {', '.join(self.backends)}")
        self.params = params
        self.min_contact = min_contact
        self.max_distance = max_distance
        self.device = device  # torch device: auto (a GPU when there is one), cpu, cuda
        # numpy: the reference; torch: the same results, on a GPU or CPU threads; numba: the same
        # results compiled for a CPU core; auto: torch on a GPU, else the fastest on a CPU core for
        # this method (measured, benchmarks/RESULTS.md)
        self.backend = backend if backend != "auto" else (
            "torch" if self.torch_device.type == "cuda" else self.cpu_backend)

    @property
    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def tensors(self, *arrays: np.ndarray) -> tuple[torch.Tensor, ...]:
        """The arrays as tensors on :attr:`torch_device` (no copy on the CPU)."""
        dev = self.torch_device
        return tuple(torch.from_numpy(np.ascontiguousarray(a)).to(dev) for a in arrays)

    @classmethod
    def defaults(cls, delta_v: float, delta_d: float) -> dict[str, Any]:
        """Default of every parameter key from the loss margins (methods override theirs)."""
        return {"foreground_threshold": 0.5, "threshold": delta_d, "merge_distance": 4 / 3 * delta_d,
                "grow_distance": ClusteringParams.grow_distance, "bandwidth": (delta_v + delta_d) / 2,
                "min_size": 0}

    @abstractmethod
    def fragments(self, emb: np.ndarray, fg: np.ndarray) -> np.ndarray:
        """Block-local labels ``1..k`` (int64) of embeddings ``(E, *S)`` and foreground ``(*S)``."""

    @abstractmethod
    def face_evidence(self, emb: np.ndarray, local: np.ndarray) -> np.ndarray:
        """``(E, *S)`` values written on the block's faces for :meth:`accept`."""

    @abstractmethod
    def accept(self, lab_a: np.ndarray, lab_b: np.ndarray, ev_a: np.ndarray, ev_b: np.ndarray) -> np.ndarray:
        """Accepted fragment-id pairs ``(m, 2)`` across one face (see :mod:`.faces`)."""

    def describe(self) -> dict[str, Any]:
        """Everything that determines the result: parameters and the merge rule."""
        return {**self.params.as_dict(), "min_contact": self.min_contact, "max_distance": self.max_distance}


@dataclass(frozen=True)
class PerLabel:
    """``values[:, labels]`` (``values`` ``(E, k + 1)`` per label, ``labels`` ``(*S)``) without making it:
    indexed with a plane, ``evidence[:, ..., i]``, it gives that plane only. The faces of a block need
    its 6 outer planes of the fragments' means; the whole ``(E, *S)`` array took 0.17 s and E x 8
    bytes per voxel of a (64, 256, 256) block."""

    values: np.ndarray
    labels: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.values.shape[0], *self.labels.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.values.dtype

    def __getitem__(self, index: tuple[Any, ...]) -> np.ndarray:
        return self.values[:, self.labels[index[1:]]]


class EvidenceMethod(Method):
    """Fragments merge across a face when they share ``min_contact`` voxel pairs and their
    mean embeddings are within ``max_distance`` (stitched embeddings are exact, so both
    sides see the same embedding of one object). Faces carry each fragment's mean."""

    @abstractmethod
    def default_max_distance(self) -> float:
        """``merge.max_distance`` when the config leaves it open."""

    def __init__(self, params: ClusteringParams, min_contact: int = 1, max_distance: float | None = None,
                 backend: str = "auto", device: str = "auto") -> None:
        super().__init__(params, min_contact, max_distance, backend, device)
        if self.max_distance is None:
            self.max_distance = self.default_max_distance()

    def face_evidence(self, emb: np.ndarray, local: np.ndarray) -> PerLabel:
        if self.backend == "numpy":
            return PerLabel(fragment_means(emb, local), local)
        return PerLabel(compiled_fragment_means(emb, local), local)

    def accept(self, lab_a: np.ndarray, lab_b: np.ndarray, ev_a: np.ndarray, ev_b: np.ndarray) -> np.ndarray:
        pairs, contact = face_pairs(lab_a, lab_b)
        if not len(pairs):
            return pairs
        mean_a, mean_b = values_at(lab_a, ev_a, pairs[:, 0]), values_at(lab_b, ev_b, pairs[:, 1])
        assert self.max_distance is not None
        return accept_by_evidence(pairs, contact, mean_a, mean_b, self.min_contact, self.max_distance)
