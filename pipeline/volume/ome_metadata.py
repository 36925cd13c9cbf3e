"""OME-Zarr metadata: what an input image's ``multiscales`` say of its levels and coordinates,
and the attributes of the label image that :mod:`pipeline.volume.ome` plans (NGFF 0.4 at the
group's top level, 0.5 under ``ome``; axes with the units NGFF knows; the path to the image).

Pure (dictionaries); :mod:`pipeline.stages.labels` writes the attributes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .ome import Level, PyramidLevel


def input_pyramid(multiscale: dict[str, Any], shapes: Sequence[Sequence[int]], spatial: Sequence[int]) -> list[PyramidLevel]:
    """The spatial shape, scale and translation of every level of an input's multiscales
    entry (``shapes``: the full array shapes of its datasets; ``spatial``: spatial axes)."""
    out = []
    for d, shape in zip(multiscale.get("datasets", []), shapes, strict=False):
        scale = [1.0] * len(shape)
        translation = [0.0] * len(shape)
        for t in d.get("coordinateTransformations", []):
            if t.get("type") == "scale" and "scale" in t:
                scale = [float(v) for v in t["scale"]]
            elif t.get("type") == "translation" and "translation" in t:
                translation = [float(v) for v in t["translation"]]
        out.append(PyramidLevel(tuple(int(shape[i]) for i in spatial), tuple(scale[i] for i in spatial),
                                tuple(translation[i] for i in spatial)))
    return out


def global_transforms(multiscale: dict[str, Any], spatial: Sequence[int]) -> list[dict[str, Any]] | None:
    """The multiscales entry's own ``coordinateTransformations``, on the spatial axes only."""
    found = multiscale.get("coordinateTransformations")
    if not found:
        return None
    out = []
    for t in found:
        key = t.get("type")
        if key in ("scale", "translation") and key in t:
            out.append({"type": key, key: [t[key][i] for i in spatial]})
    return out or None


def _transforms(level: Level) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"type": "scale", "scale": list(level.scale)}]
    if any(t != 0 for t in level.translation):
        out.append({"type": "translation", "translation": list(level.translation)})
    return out


def label_attrs(
    levels: Sequence[Level], axes: Sequence[dict[str, Any]], version: str, name: str, source: str | None,
    global_ct: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The label image group's attributes: NGFF 0.4 at the top level, 0.5 under ``ome``."""
    multiscale: dict[str, Any] = {
        "name": name,
        "axes": [dict(a) for a in axes],
        "datasets": [{"path": lv.path, "coordinateTransformations": _transforms(lv)} for lv in levels],
        "type": "mode (label-safe); finer levels: nearest",
    }
    if global_ct:
        multiscale["coordinateTransformations"] = global_ct
    label: dict[str, Any] = {"version": version}
    if source is not None:
        label["source"] = {"image": source}
    if version == "0.4":
        return {"multiscales": [{"version": "0.4", **multiscale}], "image-label": label}
    return {"ome": {"version": version, "multiscales": [multiscale], "image-label": label}}


def labels_list(attrs: dict[str, Any], version: str, name: str) -> dict[str, Any]:
    """A ``labels`` group's attributes with ``name`` listed (existing entries kept)."""
    ome = attrs.get("ome", {}) if version != "0.4" else attrs
    names = [str(n) for n in ome.get("labels", [])]
    names += [] if name in names else [name]
    if version == "0.4":
        return {**attrs, "labels": names}
    return {**attrs, "ome": {**ome, "version": version, "labels": names}}


def relative_source(label_group: Path, image: Path) -> str:
    """The path of ``image`` relative to the label image group, ending in ``/`` (NGFF: a
    relative path to the key image, e.g. ``../../`` for a label under the image)."""
    rel = os.path.relpath(image.resolve(), label_group.resolve()).replace(os.sep, "/")
    return rel.rstrip("/") + "/"


SPACE_UNITS = frozenset({  # NGFF: the UDUNITS-2 length units an axis may name
    "angstrom", "attometer", "centimeter", "decimeter", "exameter", "femtometer", "foot", "gigameter",
    "hectometer", "inch", "kilometer", "megameter", "meter", "micrometer", "mile", "millimeter", "nanometer",
    "parsec", "petameter", "picometer", "terameter", "yard", "yoctometer", "yottameter", "zeptometer",
    "zettameter"})


def spatial_axes(axes: Sequence[Any], ndim: int, units: Sequence[str | None] | None = None) -> list[dict[str, Any]]:
    """Axis dictionaries (name, type, unit as given) of the label image; without OME axes, zyx with
    the input's ``units`` (TIFF, HDF5 metadata) where NGFF knows them."""
    if axes:
        return [dict(a) if isinstance(a, dict) else {"name": str(a), "type": "space"} for a in axes]
    units = list(units) if units else [None] * ndim
    return [{"name": a, "type": "space", **({"unit": u} if u in SPACE_UNITS else {})}
            for a, u in zip("zyx"[-ndim:], units, strict=True)]


def physical_grid(vol: Any, scale_level: int) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Voxel size and origin (the centre of voxel 0) of the segmented level in the image's
    coordinates: the level's scale and translation, then the multiscales entry's own transforms
    (OME-Zarr); the voxel size and origin 0 otherwise; None without a voxel size."""
    if vol.voxel_size is None:
        return None
    scale, origin = [float(v) for v in vol.voxel_size], [0.0] * vol.ndim
    if vol.ome:
        multiscale = vol.ome["multiscales"][0]
        level = multiscale["datasets"][scale_level]
        for t in level.get("coordinateTransformations", []):
            if t.get("type") == "translation" and "translation" in t:
                origin = [float(t["translation"][i]) for i in vol.spatial_axes]
        for t in global_transforms(multiscale, vol.spatial_axes) or []:
            if t["type"] == "scale":
                scale = [s * float(g) for s, g in zip(scale, t["scale"], strict=True)]
                origin = [o * float(g) for o, g in zip(origin, t["scale"], strict=True)]
            else:
                origin = [o + float(g) for o, g in zip(origin, t["translation"], strict=True)]
    return tuple(scale), tuple(origin)
