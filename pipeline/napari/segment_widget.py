"""The "Segment this view" dock widget: the current view, a drawn box or the whole layer segmented
exactly as the full run would, by :func:`pipeline.segment` with ``region`` in a ``thread_worker``;
the plan's numbers first, the preview as a Labels layer with an ``exact`` column."""

from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QComboBox, QLabel

from ..errors import UsageError
from ..geometry import Box
from ..plan.region import RegionRecord, exact_mask, read_record
from .features import objects_features
from .frame import Frame
from .viewer import layer_frame, level0, shapes_box, view_box
from .widget_parts import SettingsWidget, add_controls, pin_blocks, show_progress

logger = logging.getLogger(__name__)

GUARANTEE = ("Computes the blocks of the full run's grid that meet the region, with the whole volume's "
             "normalisation. Objects clear of the computed box's edge (column 'exact') are exactly what "
             "`pipeline run` writes there; objects on the edge may be cut.")
WHOLE_LAYER_VOXELS = 1 << 24  # "whole layer" is offered for layers up to this size
PREVIEW_VOXELS = 1 << 27  # the most a preview computes (its labels are held in memory)


class Cancelled(Exception):
    """The user pressed Cancel."""


class Bridge(QObject):
    """Signals from a worker thread to the widget (queued into the GUI thread)."""

    progress = Signal(str, int, int)
    plan = Signal(str)


def where(target: Any) -> str:
    """Where the full run's label image goes (the preview's own output is a scratch folder)."""
    if target is None:
        return "none (output.labels: none)"
    if target.mode == "image":
        return f"under the input image, {target.group} (NGFF {target.version}, {len(target.levels)} levels)"
    return f"standalone, <output>/labels/{target.name} (NGFF {target.version}, {len(target.levels)} levels)"


def at_timepoint(config: dict[str, Any], region: Box, layer: Any, viewer: Any) -> Box:
    """A time-lapse layer (t, z, y, x): ``region`` at the time point shown (``config`` reads that one
    of the input), without its t axis; any other layer: ``region``."""
    times = (getattr(layer, "metadata", {}) or {}).get("pipeline", {}).get("timepoints")
    if times is None:
        return region
    t = int(np.clip(np.round(np.asarray(layer.world_to_data(viewer.dims.point))[0]), 0, len(times) - 1))
    config["input"] = {**config["input"], "timepoint": int(times[t]), "timepoints": "all"}
    return Box(region.offset[1:], region.shape[1:])


def plan_text(config: dict[str, Any], region: Box) -> str:
    """``pipeline plan``'s numbers for the whole volume (the run the preview stands for: its label
    image too), and the blocks the preview of ``region`` computes; a preview larger than
    :data:`PREVIEW_VOXELS` is refused (zoom in, or draw a smaller box)."""
    from ..plan.labels import label_target
    from ..plan.prepare import prepare
    from ..plan.region import covering_blocks, zoomed_region
    from ..plan.summary import plan_summary

    output = {k: v for k, v in config["output"].items() if k != "labels"}
    run = prepare({**config, "output": output})
    s = plan_summary(run)
    target = label_target(run)
    grid = zoomed_region(region, run.zoom, run.plan.volume) if run.zoom else region
    blocks = len(covering_blocks(run.plan, grid))
    voxels = blocks * int(np.prod(run.plan.write_shape))
    if voxels > PREVIEW_VOXELS:
        raise UsageError(f"the region {list(region.shape)} needs {blocks} blocks ({voxels / 1e6:.0f} Mvoxels) to "
                         f"preview, more than {PREVIEW_VOXELS / 1e6:.0f}; zoom in or draw a smaller box")
    return (f"whole volume {s['volume_shape']}: {s['blocks']} blocks of {s['write_shape']} "
            f"(grid {s['grid']}), {s['memory_per_block_mib']} MiB per block ({s['blocks_sized_for']})\n"
            f"empty blocks: {s['empty_blocks_from']}\n"
            f"label image: {where(target)}\n"
            f"this preview: {blocks} block{'s' if blocks != 1 else ''}")


class SegmentViewWidget(SettingsWidget):
    """Segment the current view (or a drawn box, or the whole layer) exactly as the full run would."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        layout = self.column
        self.region = QComboBox()
        self.region.addItems(["current view", "last shape of a Shapes layer", "whole layer"])
        layout.addWidget(self.region)
        self.plan = QLabel("plan: press Segment (the whole volume's numbers come first)")
        self.plan.setWordWrap(True)
        layout.addWidget(self.plan)
        note = QLabel(GUARANTEE)
        note.setWordWrap(True)
        layout.addWidget(note)
        (self.go, self.cancel), self.bar, self.status = add_controls(layout, "Segment this view", "Cancel")
        self.cancel.setEnabled(False)
        self.go.clicked.connect(self.start)
        self.cancel.clicked.connect(self.stop)
        self.bridge = Bridge()
        self.bridge.progress.connect(self._progress)
        self.bridge.plan.connect(self.plan.setText)
        self.worker: Any = None
        self._cancel = threading.Event()
        self.scratch = Path(tempfile.mkdtemp(prefix="pipeline-preview-"))
        self.previews = 0

    def box(self, layer: Any) -> Box:
        choice = self.region.currentIndex()
        if choice == 0:
            return view_box(self.viewer, layer)
        if choice == 1:
            shapes = [lyr for lyr in self.viewer.layers if lyr._type_string == "shapes" and lyr.name != "block grid"]
            if not shapes:
                raise UsageError("no Shapes layer: add one and draw a rectangle over the region")
            return shapes_box(shapes[-1], layer, self.viewer)
        shape = level0(layer).shape
        if np.prod(shape) > WHOLE_LAYER_VOXELS:
            raise UsageError(f"the layer {list(shape)} is too large to preview whole; use the view or a shape")
        return Box.from_shape(shape)

    def start(self) -> None:
        from napari.qt.threading import create_worker

        try:
            layer = self.settings.layer()
            region = self.box(layer)
            self.previews += 1
            out = self.scratch / f"preview-{self.previews}.zarr"
            config = self.settings.config(out, {"kind": "serial"})
            config["output"]["labels"] = "none"
            region = at_timepoint(config, region, layer, self.viewer)
            from ..config import validate_config

            validate_config(config)
        except UsageError as exc:
            self.status.setText(f"error: {exc}")
            return
        self._cancel.clear()
        self.go.setEnabled(False)
        self.cancel.setEnabled(True)
        self.status.setText(f"segmenting {region} ...")
        self.worker = create_worker(self.segment, config, region, layer, _ignore_errors=True)  # shown by _failed
        self.worker.returned.connect(self._done)
        self.worker.errored.connect(self._failed)
        self.worker.finished.connect(self._finished)
        self.worker.start()

    def segment(self, config: dict[str, Any], region: Box, layer: Any) -> tuple[Path, Any]:
        """In the worker thread: the plan, then the region run."""
        from ..run import segment
        from ..runtime.progress import listening

        config = pin_blocks(config)
        self.bridge.plan.emit(plan_text(config, region))

        def listen(desc: str, done: int, total: int) -> None:
            if self._cancel.is_set():
                raise Cancelled
            self.bridge.progress.emit(desc, done, total)

        with listening(listen):
            return segment(config, region=region), layer

    def stop(self) -> None:
        self._cancel.set()
        self.status.setText("cancelling (after the current step) ...")

    def _progress(self, desc: str, done: int, total: int) -> None:
        show_progress(self.bar, desc, done, total)

    def _failed(self, exc: BaseException) -> None:
        if isinstance(exc, Cancelled):
            self.status.setText("cancelled")
        elif isinstance(exc, UsageError):
            self.status.setText(f"error: {exc}")
        else:
            self.status.setText(f"error: {type(exc).__name__}: {exc}")
            logger.error("preview failed", exc_info=exc)

    def _finished(self) -> None:
        self.go.setEnabled(True)
        self.cancel.setEnabled(False)

    def _done(self, value: tuple[Path, Any]) -> None:
        out, layer = value
        layer_add = add_preview(self.viewer, out, layer)
        rec = read_record(out)
        n = int(np.asarray(layer_add.features["exact"]).sum()) if "exact" in layer_add.features else 0
        self.status.setText(f"{rec.blocks} blocks computed, box {list(rec.computed.offset)} + "
                            f"{list(rec.computed.shape)}: {n} objects exact, {len(rec.edge)} on the edge")


def add_preview(viewer: Any, out: Path, image: Any) -> Any:
    """The region run's labels (its computed box) as a Labels layer over ``image``, with its
    objects table and an ``exact`` column as features."""
    import zarr

    rec: RegionRecord = read_record(out)
    labels = np.asarray(zarr.open_array(str(out / "segmentation"), mode="r")[rec.computed.to_slices()])
    features, _ = objects_features(out)
    if features:
        features["exact"] = ~np.isin(features["index"], np.asarray(rec.edge, np.int64))
    frame = layer_frame(image)
    name = "preview"
    if name in viewer.layers:
        viewer.layers.remove(name)
    exact = exact_mask(labels, rec.edge)
    coords = Frame(frame.voxel_size[-labels.ndim:], frame.origin[-labels.ndim:]).scaled([1.0] * labels.ndim,
                                                                                           rec.computed.offset)
    times = (getattr(image, "metadata", {}) or {}).get("pipeline", {}).get("timepoints")
    if times is not None:  # a time-lapse: the preview at the time point it was computed for, not over every one
        k = zarr.open_group(str(out), mode="r").attrs["pipeline"]["config"]["input"]["timepoint"]
        labels = labels[None]
        coords = {"scale": [frame.voxel_size[0], *coords["scale"]],
                  "translate": [frame.origin[0] + times.index(k) * frame.voxel_size[0], *coords["translate"]]}
    return viewer.add_labels(labels, name=name, features=features, **coords,
                             metadata={"pipeline": {"result": str(out), "region": rec.to_json(),
                                                    "exact_voxels": int(exact.sum())}})
