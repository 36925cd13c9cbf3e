"""Finding a result on disk: zarr group attributes, NGFF metadata, the label images this project
wrote, the result group a path stands for, the paths a run recorded and the run's label image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zarr


def group_attrs(path: Path) -> dict[str, Any] | None:
    """The attributes of the zarr group at ``path`` (None: not a zarr group)."""
    if not ((path / "zarr.json").exists() or (path / ".zgroup").exists()):
        return None
    try:
        return dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:  # noqa: BLE001 - unreadable: not ours to open
        return None


def ome(attrs: dict[str, Any]) -> dict[str, Any]:
    """NGFF metadata: under ``ome`` (0.5) or at the top (0.4)."""
    inner = attrs.get("ome")
    return inner if isinstance(inner, dict) else attrs


def our_label_images(image: Path) -> list[Path]:
    """Label images this project wrote under an OME-Zarr image (``labels/<name>`` groups that
    record the run output that wrote them)."""
    labels = group_attrs(image / "labels")
    names = ome(labels).get("labels", []) if labels else []
    found = []
    for name in names:
        attrs = group_attrs(image / "labels" / str(name))
        if attrs and isinstance(attrs.get("pipeline"), dict) and attrs["pipeline"].get("output"):
            found.append(image / "labels" / str(name))
    return found


def result_of(path: Path) -> Path | None:
    """The result group ``path`` stands for: itself, the run output recorded by one of our label
    images (``path`` is that label image, or an OME-Zarr image holding one); None: not ours."""
    attrs = group_attrs(path)
    if attrs is None:
        return None
    if isinstance(attrs.get("pipeline"), dict) and (path / "segmentation").exists():
        return path
    images = [path] if "image-label" in ome(attrs) else our_label_images(path)
    for label in images:
        recorded = (group_attrs(label) or {}).get("pipeline", {}).get("output")
        if recorded and group_attrs(Path(recorded)) is not None:
            return Path(recorded)
    return None


def resolve(recorded: str | Path, result: Path) -> Path | None:
    """A path a run recorded (maybe relative to the folder it ran in), found from here or from
    beside the result."""
    p = Path(recorded)
    candidates = [p] if p.is_absolute() else [p, result.parent / p, result.parent / p.name, result.parent.parent / p]
    return next((c for c in candidates if c.exists()), None)



def label_image_of(result: Path, meta: dict[str, Any]) -> Path | None:
    """The run's label image: ``labels/<name>`` of the result itself (standalone; also after the
    result was moved or copied), else the recorded one (under the input image); None: none."""
    recorded = meta.get("label_image")
    if not recorded:
        return None
    name = meta.get("config", {}).get("output", {}).get("label_name") or Path(recorded).name
    inside = result / "labels" / name
    if group_attrs(inside) is not None:
        return inside
    found = resolve(recorded, result)
    return found if found is not None and group_attrs(found) is not None else None
