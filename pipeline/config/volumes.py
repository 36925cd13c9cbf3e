"""The volumes of a run: where the input is read (:class:`InputConfig`, its object diameter checked by
:func:`check_diameter`) and where the output goes (:class:`OutputConfig`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .validation import Frozen


def check_diameter(value: Any, auto: bool = False) -> Any:
    """A diameter: one positive number, or a list of them (one per axis), or ``auto`` where
    allowed; one message otherwise."""
    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    if value is None or (auto and value == "auto") or (number(value) and value > 0):
        return value
    if isinstance(value, list | tuple) and value and all(number(v) and v > 0 for v in value):
        return tuple(value)
    raise PydanticCustomError(
        "diameter", "give the typical object diameter in voxels: one positive number, or one per axis "
        "(z, y, x), e.g. [12, 24, 24]" + (", or auto (measured by the model on sampled boxes)" if auto else ""),
        {"value": value})


class InputConfig(Frozen):
    """Where the raw volume is: a zarr array, an OME-Zarr image (group with multiscales), a TIFF
    file, a folder of 2D TIFF slices, an HDF5 file (BigDataViewer layout included), an N5
    container (BigStitcher multiscale groups included) or an Imaris ``.ims`` file."""

    path: Path
    dataset: str | None = Field(
        None, description="array (or OME-Zarr image group) inside a zarr `path`, or HDF5 dataset (e.g. `raw`); "
        "none: `path` itself, an HDF5 file's only dataset, or a BigDataViewer file's `t00000/s00/<level>/cells`"
    )
    scale_level: int = Field(0, ge=0, description="OME-Zarr multiscale or BigDataViewer level (0 = full resolution)")
    channel: int | None = Field(
        None, ge=0, description="the one channel to read from a multi-channel input (BigDataViewer: the setup); "
        "none: every channel"
    )
    timepoints: Literal["all"] | tuple[Annotated[int, Field(ge=0)], ...] | str = Field(
        "all", description="time-lapse inputs (a t axis; Imaris, BigDataViewer, N5 and CZI time points): the time "
        "points to segment, each on its own, into one (t, z, y, x) label image: all, a list [0, 5, 9], or a "
        "range 'first..last' ('0..9', '5..' to the end); t in the output and the objects table is the index in "
        "this selection")
    timepoint: int | None = Field(
        None, ge=0, description="read only this time point of a time-lapse input, as a 3D volume (a run of one "
        "time point; the result equals that time point of the whole time-lapse run); none: every time point "
        "in input.timepoints")
    diameter: float | tuple[float, ...] | Literal["auto"] | None = Field(
        None, description="typical object diameter in voxels of this input: one per axis (z, y, x), or one number "
        "(then every axis is scaled by the model's in-plane diameter over it, like cellpose's diameter). The input "
        "is resampled so objects have the model's training diameter (`pipeline model info` shows it) and the labels "
        "are mapped back; auto: measured per axis by the model on a few sampled boxes at several zooms before "
        "planning (pipeline plan shows it; seconds on a CPU); none: no resampling"
    )
    diameter_unit: Literal["voxel", "physical"] = Field(
        "voxel", description="physical: input.diameter is in the input's units (OME-Zarr, TIFF, HDF5 voxel size), "
        "converted per axis, so one number suits anisotropic voxels")
    unreadable: Literal["error", "empty"] = Field(
        "error", description="an input chunk, TIFF page or HDF5 chunk that cannot be read (corrupt, truncated): "
        "error = stop with one line naming it and its region; empty = read it as the array's fill value (0) and "
        "go on; the regions are recorded in the result's attributes (pipeline.unreadable_input), "
        "qc/unreadable.json and the report")
    chunk_cache_mib: int | None = Field(
        None, ge=0, description="decoded input chunks kept per process (MiB), so that neighbouring blocks' halos "
        "decode each zarr chunk once; none: 1/8 of the worker's memory limit (the machine's, serially), at most "
        "2048; 0: no cache (every read decodes the chunks it touches). TIFF and HDF5 inputs are not cached")

    _diameter = field_validator("diameter", mode="before")(classmethod(lambda cls, v: check_diameter(v, auto=True)))

    @field_validator("timepoints", mode="before")
    @classmethod
    def _timepoints(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            return (v,)
        if isinstance(v, str) and v != "all" and not re.fullmatch(r"\d*\.\.\d*", v.strip()):
            raise PydanticCustomError(
                "timepoints", "input.timepoints is all, a list of time points [0, 5, 9] or a range 'first..last' "
                "('0..9', '5..' from 5 to the end)", {"value": v})
        if isinstance(v, list | tuple):
            if len(set(v)) != len(v) or not v:
                raise PydanticCustomError("timepoints", "input.timepoints lists each time point once, at least one",
                                          {"value": v})
        return v

    @model_validator(mode="after")
    def _one_or_many(self) -> InputConfig:
        if self.timepoint is not None and self.timepoints != "all":
            raise PydanticCustomError(
                "timepoints", "input.timepoint ({timepoint}) reads one time point and input.timepoints selects "
                "several: set one of them", {"timepoint": self.timepoint})
        return self

    def selected(self, n: int) -> list[int]:
        """The time points ``input.timepoints`` names of an input with ``n`` of them (raises
        :class:`ValueError` naming those out of range)."""
        if self.timepoints == "all":
            return list(range(n))
        if isinstance(self.timepoints, str):
            first, last = self.timepoints.strip().split("..")
            chosen = list(range(int(first or 0), min(n, int(last) + 1 if last else n)))
            if not chosen:
                raise ValueError(f"input.timepoints '{self.timepoints}' selects none of the input's {n} time "
                                 f"points (0..{n - 1})")
            return chosen
        outside = [t for t in self.timepoints if t >= n]
        if outside:
            raise ValueError(f"input.timepoints {outside} out of range: the input has {n} time point(s) (0..{n - 1})")
        return sorted(self.timepoints)


class OutputConfig(Frozen):
    path: Path
    overwrite: bool = Field(False, description="replace an existing output (never done silently)")
    objects_csv: bool | None = Field(
        None, description="also write objects.csv (the table is always written as Parquet parts under objects/); "
        "none: only when there are at most 100,000 objects"
    )
    shards: Literal["auto", "none"] | tuple[Annotated[int, Field(gt=0)], ...] = Field(
        "auto", description="the label arrays (segmentation, the label image's levels) and the fragments scratch as zarr v3 shards, one file "
        "per brick of chunks, each written by one task: [z, y, x] voxels per shard (rounded up to whole "
        "chunks); auto = shards of about 2**26 voxels for an array of more than 10,000 chunks (a dense 1 TB "
        "volume: 8,192 files instead of 2 million), else one file per chunk; none = one file per chunk. "
        "zarr v2 outputs (under an OME-Zarr 0.4 image) are never sharded")
    labels: Literal["auto", "image", "standalone", "none"] = Field(
        "auto", description="where the OME-Zarr label image (a pyramid of the segmentation) goes: image = under "
        "the input OME-Zarr image's labels/ group (napari shows it with the image); standalone = "
        "<output.path>/labels/<label_name>; auto = image for an OME-Zarr input, else standalone; none = not written"
    )
    tracker_maps: bool = Field(
        False, description="time-lapses: also write foreground (1 in objects) and contours (1 on the objects' inner "
        "boundaries, as scikit-image's find_boundaries mode inner), uint8 (t, z, y, x) arrays of the output group, "
        "the inputs of trackers that take foreground and contour maps (Ultrack)")
    label_name: str = Field(
        "segmentation", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=128,
        description="name of the label image (its group under labels/); an existing one is replaced only with "
        "output.overwrite"
    )
    changed_input: Literal["refuse", "recompute"] = Field(
        "refuse", description="resuming an interrupted run whose finished blocks now read different input: "
        "refuse (one line naming the input and where it changed), or recompute those blocks and every later "
        "stage (--recompute-changed)")
    resume_check: Literal["metadata", "content"] = Field(
        "metadata", description="how a resumed run checks that finished blocks' input is unchanged: metadata = "
        "the size and modification time of the chunk files each block read, re-reading and comparing the "
        "content digest only where they differ; content = re-read every finished block and compare digests")
    check_space: bool = Field(
        True, description="refuse to start when the output's filesystem has clearly less free space than the "
        "run's estimated output (`pipeline plan` shows the estimate)")



class ObjectsConfig(Frozen):
    """What the objects table measures besides voxels, boxes and centroids (columns in the README)."""

    intensity: bool = Field(
        True, description="measure the segmented channel's raw intensity per object (intensity_mean, _min, _max, "
        "_sum, _std, and with ring > 0 background and intensity_mean_corrected); not for an input whose every "
        "channel the network reads (name them in channels)")
    channels: tuple[int, ...] = Field(
        (), description="other channels of the input array (indices along its c axis) measured the same way; "
        "their columns end in _c<index>, e.g. intensity_mean_c1")
    ring: int = Field(
        0, ge=0, le=16, description="background per object: the mean intensity of the voxels in no object within "
        "this many voxels of it (chessboard distance, on the input grid), as column background, and "
        "intensity_mean_corrected = intensity_mean - background; 0: none. 2 costs about 0.05 CPU-s per Mvox "
        "on dense nuclei (benchmarks/RESULTS.md), a quarter of the CPU side of a GPU run")

    @field_validator("channels")
    @classmethod
    def _distinct(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(c < 0 for c in v) or len(set(v)) != len(v):
            raise ValueError(f"channels must be distinct indices >= 0, got {list(v)}")
        return tuple(sorted(v))
