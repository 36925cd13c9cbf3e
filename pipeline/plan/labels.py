"""The label image a run writes, planned before anything runs: where it goes (under the input
OME-Zarr image, or standalone in the output), its NGFF version, levels and axes (see
:mod:`pipeline.volume.ome`), whether this run may write it there, and whether the segmentation
can be its full-resolution level (one copy, a symbolic link). Reads metadata only; writes nothing.
The :mod:`pipeline.stages.labels` stage writes it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zarr

from ..runtime.links import Link, can_link
from ..runtime.output import unfinished_key
from ..stages.relabel import SEGMENTATION
from ..volume.errors import OutputError
from ..volume.ome import Level, PyramidLevel, plan_levels
from ..volume.ome_metadata import global_transforms, input_pyramid, label_attrs, relative_source, spatial_axes

if TYPE_CHECKING:
    from ..config import Config
    from ..volume.input_volume import InputVolume
    from .prepare import Prepared

LABELS = "labels"  # the NGFF group that lists label images


@dataclass(frozen=True)
class LabelTarget:
    """Where and what the label image is: ``group`` (``<parent>/labels/<name>``), its NGFF
    ``version`` (0.4: zarr v2, 0.5: zarr v3), levels, axes and the path to its key image."""

    mode: str  # image | standalone
    group: Path
    name: str
    version: str
    levels: tuple[Level, ...]
    axes: tuple[dict[str, Any], ...]
    source: str | None
    global_ct: tuple[dict[str, Any], ...] | None = None

    @property
    def labels_group(self) -> Path:
        return self.group.parent

    @property
    def zarr_format(self) -> int:
        return 2 if self.version == "0.4" else 3

    @property
    def copy(self) -> Level:
        """The level that holds the segmentation at its own resolution."""
        return next(level for level in self.levels if level.kind == "copy")

    def segmentation(self) -> Link:
        """The segmentation written once, as this label image's full-resolution level."""
        return Link(SEGMENTATION, str(self.group / self.copy.path), tuple(str(a["name"]) for a in self.axes))

    def attrs(self, output: Path) -> dict[str, Any]:
        """The group's final attributes: NGFF metadata and which run output wrote it."""
        meta = label_attrs(self.levels, self.axes, self.version, self.name, self.source,
                           list(self.global_ct) if self.global_ct else None)
        return {**meta, "pipeline": {"output": str(output.resolve())}}


def image_path(config: Config) -> Path:
    """The input OME-Zarr image group."""
    c = config.input
    return Path(c.path) / c.dataset if c.dataset else Path(c.path)


def label_target(run: Prepared) -> LabelTarget | None:
    """The label image ``output.labels`` asks for (None: ``none``); reads input metadata only."""
    return label_target_of(run.config, run.volume)


def label_target_of(config: Config, vol: InputVolume) -> LabelTarget | None:
    """:func:`label_target` of a run's config and its opened input."""
    out = config.output
    if out.labels == "none":
        return None
    if out.labels == "image" and vol.ome is None:
        raise OutputError(
            f"output.labels: image needs an OME-Zarr image input, and '{config.input.path}' is not one; "
            "set output.labels: standalone (or auto) to write the label image into output.path"
        )
    mode = "image" if out.labels == "image" or (out.labels == "auto" and vol.ome is not None) else "standalone"
    segmented = PyramidLevel(vol.shape, tuple(vol.voxel_size or (1.0,) * vol.ndim), (0.0,) * vol.ndim)
    pyramid, version, global_ct = None, "0.5", None
    if vol.ome is not None:
        group = zarr.open_group(str(image_path(config)), mode="r")
        multiscale = vol.ome["multiscales"][0]
        shapes = [group[d["path"]].shape for d in multiscale["datasets"]]
        pyramid = input_pyramid(multiscale, shapes, vol.spatial_axes)
        segmented = pyramid[config.input.scale_level]
        global_ct = global_transforms(multiscale, vol.spatial_axes)
        if mode == "image":
            version = "0.4" if group.metadata.zarr_format == 2 else "0.5"
    levels = plan_levels(segmented, pyramid, config.input.scale_level, mode == "image")
    parent = image_path(config) if mode == "image" else Path(out.path)
    group_path = parent / LABELS / out.label_name
    source = None
    if mode == "image":
        source = "../../"
    elif vol.ome is not None:
        source = relative_source(group_path, image_path(config))
    axes = spatial_axes(vol.ome["axes"] if vol.ome else [], vol.ndim, vol.units)
    return LabelTarget(mode, group_path, out.label_name, version, tuple(levels), tuple(axes), source,
                       tuple(global_ct) if global_ct else None)


def _is_group(path: Path) -> bool:
    return (path / "zarr.json").exists() or (path / ".zgroup").exists()


def check_labels(target: LabelTarget, output: Path, overwrite: bool) -> None:
    """Fail early (before a cluster starts) on a label image this run may not replace, and on
    an input image that cannot be written; writes nothing."""
    where = target.group
    if target.mode == "image":
        probe = where.parent if where.parent.is_dir() else where.parent.parent
        try:
            (probe / ".pipeline-write-test").touch()
            (probe / ".pipeline-write-test").unlink()
        except OSError as exc:
            raise OutputError(
                f"cannot write the label image into the input image '{where.parent.parent}' ({exc.strerror}); "
                "set output.labels: standalone to write it into output.path instead"
            ) from None
    if not where.exists() or overwrite:
        if where.exists() and not _is_group(where):
            raise OutputError(f"label image path '{where}' exists and is not a zarr group: refusing to replace it")
        return
    ours = recorded_output(where) == str(output.resolve()) and unfinished_key(output) is not None
    if not ours:  # an earlier run's interrupted label image is resumed; anything else is kept
        raise OutputError(
            f"label image '{where}' already exists; set output.overwrite: true (--overwrite) to replace it, "
            "or output.label_name to write another"
        )


def recorded_output(group: Path) -> str | None:
    """The output path of the run that wrote the label image ``group`` (None: unknown)."""
    try:
        found = dict(zarr.open_group(str(group), mode="r").attrs).get("pipeline", {}).get("output")
    except Exception:  # noqa: BLE001 - not a readable group: not ours
        return None
    return str(found) if found else None


def linkable(target: LabelTarget | None, output: Path) -> bool:
    """Whether this run writes the segmentation once, as the label image's full-resolution
    level: a label image is planned, the output's filesystem takes symbolic links, and the
    output does not already hold a segmentation of its own (an interrupted run of an earlier
    layout, resumed as it began)."""
    if target is None:
        return False
    at = output / SEGMENTATION
    if at.exists() and not at.is_symlink():
        return False
    base = next((a for a in (output.absolute(), *output.absolute().parents) if a.is_dir()), Path("/"))
    return can_link(base)
