"""How blocks become objects: the clustering of embeddings in each block (:class:`ClusteringConfig`,
one of the methods of :mod:`pipeline.clustering`) and the merge of fragments across block faces
(:class:`MergeConfig`)."""

from __future__ import annotations

import difflib
from typing import Literal

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from .validation import Frozen


class ClusteringConfig(Frozen):
    method: str | None = Field(
        None, description="a method of pipeline.clustering (connectivity, agglomeration, meanshift); none: the "
        "method calibrated with the model, else connectivity")
    foreground_threshold: float | None = Field(None, gt=0, lt=1, description="none: model default, else 0.5")
    threshold: float | None = Field(
        None, gt=0, description="connectivity/agglomeration: max embedding distance of neighbouring voxels; "
        "none: model default")
    merge_distance: float | None = Field(
        None, gt=0, description="agglomeration: max distance of adjacent regions' mean embeddings; none: model default")
    grow_threshold: float | None = Field(
        None, gt=0, lt=1, description="agglomeration: cores grow into voxels of foreground above this; none: model "
        "default, else min(0.5, foreground_threshold)")
    grow_distance: float | None = Field(
        None, ge=0, description="agglomeration: how far cores grow (voxels; 0: no growth); none: model default, else 3")
    bandwidth: float | None = Field(None, gt=0, description="meanshift bandwidth; none: model default")
    min_size: int | None = Field(None, ge=0, description="objects smaller than this (voxels) are removed, after "
                                 "merging; voxels of the grid the model sees (resampled with input.diameter); none: "
                                 "the model's calibrated value, else 0")
    backend: Literal["auto", "numba", "torch", "numpy"] = Field(
        "auto", description="numba (compiled, a CPU core), torch (GPU or CPU threads) or numpy (the reference), "
        "same results; auto: torch on a GPU, else the fastest per method on a CPU core (numba where the method "
        "has it)")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where torch clusters: auto = the worker's GPU when it has one, else its CPU threads")


    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str | None) -> str | None:
        from ..clustering import METHOD_NAMES  # every registered method, also ones added at run time

        if value is not None and value not in METHOD_NAMES:
            close = difflib.get_close_matches(value, METHOD_NAMES, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"use one of {', '.join(METHOD_NAMES)}"
            raise PydanticCustomError("unknown_method", "unknown clustering method; {hint}", {"hint": hint})
        return value


class MergeConfig(Frozen):
    min_contact: int = Field(1, gt=0, description="meanshift/agglomeration: voxel pairs needed to merge two "
                             "fragments across a block face")
    max_distance: float | None = Field(
        None, gt=0, description="meanshift/agglomeration: max distance of fragment mean embeddings across a block "
        "face; none: bandwidth (meanshift) or merge_distance (agglomeration)"
    )

