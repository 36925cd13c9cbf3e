"""The dock widgets: "Segment this view", "Run the whole volume", "Edit and keep".

Each is a form over the Python API: the settings become a config dict (validated like a YAML
file), the preview is :func:`pipeline.segment` with ``region`` in a ``thread_worker``, the full run
is ``pipeline run`` launched detached (:mod:`.launch`), corrections go through :mod:`.keep`.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..errors import UsageError
from ..geometry import Box
from ..plan.region import RegionRecord, exact_mask, read_record, region_box
from . import launch
from .features import objects_features
from .frame import Frame
from .keep import annotated_mask, save_crop, save_label_image
from .result import group_attrs, label_image_of

logger = logging.getLogger(__name__)

METHODS = ("model default", "connectivity", "agglomeration", "meanshift")
GUARANTEE = ("Computes the blocks of the full run's grid that meet the region, with the whole volume's "
             "normalisation. Objects clear of the computed box's edge (column 'exact') are exactly what "
             "`pipeline run` writes there; objects on the edge may be cut.")
WHOLE_LAYER_VOXELS = 1 << 24  # "whole layer" is offered for layers up to this size
PREVIEW_VOXELS = 1 << 27  # the most a preview computes (its labels are held in memory)


class Cancelled(Exception):
    """The user pressed Cancel."""


def source_of(layer: Any) -> dict[str, Any] | None:
    """The input config (path, dataset, ...) an image layer was read from, when it records one."""
    return pipeline_meta(layer).get("input")


def level0(layer: Any) -> Any:
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def layer_frame(layer: Any) -> Frame:
    return Frame(tuple(float(s) for s in layer.scale), tuple(float(t) for t in layer.translate))


def view_box(viewer: Any, layer: Any) -> Box:
    """The part of ``layer`` (level 0 voxels) shown on the canvas: the displayed axes' corner pixels,
    the current plane on the others."""
    shape = level0(layer).shape
    corners = np.asarray(layer.corner_pixels, dtype=float)
    if getattr(layer, "multiscale", False):
        corners = corners * np.asarray(layer.downsample_factors[layer.data_level])
    point = np.asarray(layer.world_to_data(viewer.dims.point), dtype=float)
    bounds = []
    for axis, n in enumerate(shape):
        if axis in viewer.dims.displayed:
            bounds.append((int(np.floor(corners[0, axis])), int(np.ceil(corners[1, axis])) + 1))
        else:
            at = int(np.clip(np.round(point[axis]), 0, n - 1))
            bounds.append((at, at + 1))
    return region_box(bounds, shape)


def shapes_box(shapes: Any, layer: Any, viewer: Any) -> Box:
    """The last shape of a Shapes layer, as a box of ``layer`` (level 0 voxels); a planar shape
    takes the plane it was drawn on."""
    if not len(shapes.data):
        raise UsageError(f"the Shapes layer '{shapes.name}' has no shape; draw a rectangle first")
    verts = np.asarray(shapes.data[-1], dtype=float)
    world = np.asarray([shapes.data_to_world(v) for v in verts])
    data = np.asarray([layer.world_to_data(w) for w in world])
    shape = level0(layer).shape
    nd = len(shape)
    data = data[:, -nd:] if data.shape[1] >= nd else np.concatenate(
        [np.tile(np.asarray(layer.world_to_data(viewer.dims.point))[: nd - data.shape[1]], (len(data), 1)), data], 1)
    lo, hi = np.floor(data.min(0)).astype(int), np.ceil(data.max(0)).astype(int) + 1
    return region_box(list(zip(lo.tolist(), hi.tolist(), strict=True)), shape)


class LayerChoice(QComboBox):
    """The viewer's layers that ``accept`` takes, kept up to date as layers come and go."""

    def __init__(self, viewer: Any, accept: Any, missing: str) -> None:
        super().__init__()
        self.viewer, self.accept, self.missing = viewer, accept, missing
        viewer.layers.events.inserted.connect(self.refresh)
        viewer.layers.events.removed.connect(self.refresh)
        self.refresh()

    def refresh(self, *_: Any) -> None:
        current = self.currentText()
        self.clear()
        names = [layer.name for layer in self.viewer.layers if self.accept(layer)]
        self.addItems(names)
        if current in names:
            self.setCurrentText(current)

    def layer(self) -> Any:
        name = self.currentText()
        if not name or name not in self.viewer.layers:
            raise UsageError(self.missing)
        return self.viewer.layers[name]


def pipeline_meta(layer: Any) -> dict[str, Any]:
    return (getattr(layer, "metadata", None) or {}).get("pipeline", {})


def result_labels(layer: Any) -> bool:
    """A Labels layer of a result (not an edited copy)."""
    meta = pipeline_meta(layer)
    return layer._type_string == "labels" and bool(meta.get("result")) and not meta.get("edit")


class Settings(QWidget):
    """Model, object size and clustering: the parts of a config both widgets share."""

    def __init__(self, viewer: Any) -> None:
        super().__init__()
        self.viewer = viewer
        form = QFormLayout(self)
        self.image = LayerChoice(viewer, source_of, "no image layer with a source on disk: open a pipeline result "
                                 "or the sample data")
        form.addRow("image", self.image)
        self.model = QLineEdit("demo")
        browse = QPushButton("...")
        browse.clicked.connect(self._browse_model)
        row = QHBoxLayout()
        row.addWidget(self.model)
        row.addWidget(browse)
        form.addRow("model", row)
        self.diameter = QLineEdit()
        self.diameter.setPlaceholderText("as trained (e.g. 12, 24, 24 voxels z, y, x)")
        form.addRow("diameter", self.diameter)
        self.method = QComboBox()
        self.method.addItems(METHODS)
        form.addRow("clustering", self.method)
        self.fields: dict[str, QLineEdit] = {}
        for key in ("foreground_threshold", "threshold", "merge_distance", "min_size"):
            self.fields[key] = QLineEdit()
            form.addRow(key.replace("_", " "), self.fields[key])
        self.model.editingFinished.connect(self.show_defaults)
        self.method.currentIndexChanged.connect(self.show_defaults)
        self.show_defaults()

    def _browse_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "checkpoint", filter="checkpoints (*.pt);;all files (*)")
        if path:
            self.model.setText(path)
            self.show_defaults()

    def layer(self) -> Any:
        return self.image.layer()

    def show_defaults(self) -> None:
        """The model's calibrated clustering values as placeholders (what an empty field means)."""
        from ..config import validate_config
        from ..network.checkpoint import open_checkpoint
        from ..run import clustering_params

        method = self.method.currentText()
        try:
            info = open_checkpoint(self.model.text().strip() or "demo").info
        except UsageError as exc:  # a bad path is shown while typing, not raised
            for f in self.fields.values():
                f.setPlaceholderText(f"model: {exc}"[:80])
            return
        cfg = validate_config({"input": {"path": "-"}, "output": {"path": "-"},
                               "clustering": {"method": None if method == METHODS[0] else method}})
        params = clustering_params(cfg, info)
        for key, f in self.fields.items():
            f.setPlaceholderText(f"model default: {getattr(params, key)}")

    def config(self, output: Path, cluster: dict[str, Any]) -> dict[str, Any]:
        """The config dict of these settings, with the blocks, empty and merge sections of the run the
        image came from (same block grid); validated by the caller."""
        clustering: dict[str, Any] = {}
        if self.method.currentText() != METHODS[0]:
            clustering["method"] = self.method.currentText()
        for key, f in self.fields.items():
            text = f.text().strip()
            if text:
                try:
                    clustering[key] = int(text) if key == "min_size" else float(text)
                except ValueError:
                    raise UsageError(f"clustering.{key}: '{text}' is not a number") from None
        layer = self.layer()
        source = dict(source_of(layer) or {})
        text = self.diameter.text().replace(",", " ").split()
        if text:
            try:
                source["diameter"] = [float(v) for v in text] if len(text) > 1 else float(text[0])
            except ValueError:
                raise UsageError(f"diameter '{self.diameter.text()}': give one number or one per axis") from None
        return {**pipeline_meta(layer).get("run", {}), "input": source, "output": {"path": str(output)},
                "model": {"checkpoint": self.model.text().strip() or "demo"},
                "cluster": cluster, **({"clustering": clustering} if clustering else {})}


def add_controls(layout: Any, *names: str) -> tuple[list[QPushButton], QProgressBar, QLabel]:
    """A row of buttons, a progress bar and a status line under ``layout``."""
    row = QHBoxLayout()
    buttons = [QPushButton(n) for n in names]
    for b in buttons:
        row.addWidget(b)
    layout.addLayout(row)
    bar = QProgressBar()
    layout.addWidget(bar)
    status = QLabel("")
    status.setWordWrap(True)
    layout.addWidget(status)
    return buttons, bar, status


def show_progress(bar: QProgressBar, desc: str, done: int, total: int) -> None:
    bar.setMaximum(max(total, 1))
    bar.setValue(done)
    bar.setFormat(f"{desc}: %v/%m")


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


def pin_blocks(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with ``blocks.write_shape`` set: the run's own, else the automatic choice for the default
    cluster (a local one). The automatic write shape depends on the cluster's workers and memory
    (:mod:`pipeline.plan.cost`); a preview (serial) and the run it previews must share one block grid."""
    blocks = dict(config.get("blocks") or {})
    if blocks.get("write_shape"):
        return config
    from ..plan.prepare import prepare

    output = {k: v for k, v in config["output"].items() if k != "labels"}
    run = prepare({**config, "output": output, "cluster": {"kind": "local"}})
    return {**config, "blocks": {**blocks, "write_shape": list(run.plan.write_shape)}}


def plan_text(config: dict[str, Any], region: Box) -> str:
    """``pipeline plan``'s numbers for the whole volume (the run the preview stands for: its label
    image too), and the blocks the preview of ``region`` computes; a preview larger than
    :data:`PREVIEW_VOXELS` is refused (zoom in, or draw a smaller box)."""
    from ..plan.prepare import plan_summary, prepare
    from ..plan.region import covering_blocks, zoomed_region
    from ..stages.labels import label_target

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


class SettingsWidget(QWidget):
    """A dock widget that starts with the shared :class:`Settings` (``self.column``: its layout)."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.column = QVBoxLayout(self)
        self.settings = Settings(napari_viewer)
        self.column.addWidget(self.settings)


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
    return viewer.add_labels(labels, name=name, features=features, **frame.scaled([1.0] * labels.ndim, rec.computed.offset),
                             metadata={"pipeline": {"result": str(out), "region": rec.to_json(),
                                                    "exact_voxels": int(exact.sum())}})


class RunWidget(SettingsWidget):
    """Write the config, launch ``pipeline run`` detached, follow it, open the result."""

    POLL_MS = 2000

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        layout = self.column
        form = QFormLayout()
        self.output = QLineEdit(str(Path.cwd() / "result.zarr"))
        form.addRow("output", self.output)
        self.yaml = QLineEdit()
        self.yaml.setPlaceholderText("<output>.yaml")
        form.addRow("config file", self.yaml)
        self.kind = QComboBox()
        self.kind.addItems(["local", "serial", "slurm", "pbs", "sge", "lsf", "htcondor"])
        form.addRow("cluster", self.kind)
        self.workers = QSpinBox()
        self.workers.setRange(1, 100000)
        self.workers.setValue(2)
        form.addRow("workers", self.workers)
        self.cluster_file = QLineEdit()
        self.cluster_file.setPlaceholderText("optional: take cluster: from this YAML (e.g. deploy/jobqueue.yaml)")
        form.addRow("cluster from", self.cluster_file)
        layout.addLayout(form)
        (self.write, self.go, self.halt), self.bar, self.status = add_controls(layout, "Write config", "Launch", "Stop")
        self.write.clicked.connect(self.write_config)
        self.go.clicked.connect(self.start)
        self.halt.clicked.connect(self.stop)
        self.run: launch.Run | None = None
        self.opened = False
        self.timer = QTimer(self)
        self.timer.timeout.connect(self.poll)
        going = launch.running()
        if going:  # a run launched before (maybe by a viewer since closed) is still going
            self.follow(going[0])

    def config_path(self) -> Path:
        text = self.yaml.text().strip()
        out = Path(self.output.text().strip()).expanduser().resolve()
        return Path(text).expanduser().resolve() if text else out.with_name(out.stem + ".yaml")

    def cluster(self) -> dict[str, Any]:
        text = self.cluster_file.text().strip()
        if text:
            from ..config import read_yaml

            section = read_yaml(Path(text)).get("cluster")
            if not isinstance(section, dict):
                raise UsageError(f"'{text}' has no cluster: section")
            return section
        kind = self.kind.currentText()
        return {"kind": kind} if kind == "serial" else {"kind": kind, "n_workers": self.workers.value()}

    def write_config(self) -> Path | None:
        try:
            out = Path(self.output.text().strip()).expanduser().resolve()
            path = self.config_path()
            launch.write_config(pin_blocks(self.settings.config(out, self.cluster())), path)
        except (UsageError, OSError) as exc:
            self.status.setText(f"error: {exc}")
            return None
        self.status.setText(f"config written: {path} (pipeline run {path})")
        return path

    def start(self) -> None:
        if self.run is not None and self.run.alive():
            self.status.setText(f"a run is going: {self.run.config}")
            return
        path = self.write_config()
        if path is None:
            return
        self.follow(launch.launch(path, Path(self.output.text().strip()).expanduser().resolve()))

    def follow(self, run: launch.Run) -> None:
        self.run, self.opened = run, False
        self.output.setText(str(run.output))
        self.status.setText(f"running: {run.config} (log {run.log})")
        self.timer.start(self.POLL_MS)

    def poll(self) -> launch.Status | None:
        if self.run is None:
            return None
        launch.reap()
        status = self.run.status()
        if status.progress:
            show_progress(self.bar, *status.progress)
        self.status.setText(status.describe() if status.state != "done" else f"done: {self.run.output}")
        if status.state != "running":
            self.timer.stop()
            if status.state == "done" and not self.opened:
                self.opened = True
                self.viewer.open(str(self.run.output), plugin="pipeline")
        return status

    def stop(self) -> None:
        if self.run is not None:
            self.run.stop()
            self.status.setText("stopping; launch again (same config) to resume")


class KeepWidget(QWidget):
    """Correct labels on an editable copy of the view; keep them as a label image or a training crop."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.labels = LayerChoice(napari_viewer, result_labels, "no labels layer of a result: open a pipeline "
                                  "result first")
        form.addRow("labels", self.labels)
        self.edit = QPushButton("Edit a copy of this view")
        form.addRow(self.edit)
        self.name = QLineEdit("corrected")
        form.addRow("label image name", self.name)
        self.overwrite = QCheckBox("replace an existing label image of that name (even the run's own, which is its segmentation)")
        form.addRow(self.overwrite)
        self.save = QPushButton("Save into the result")
        form.addRow(self.save)
        self.crops = QLineEdit(str(Path.cwd() / "crops"))
        form.addRow("crops folder", self.crops)
        self.init = QLineEdit("demo")
        form.addRow("model to fine-tune", self.init)
        self.whole = QCheckBox("I checked the whole crop (every voxel is annotated)")
        form.addRow(self.whole)
        self.crop = QPushButton("Save as training crop")
        form.addRow(self.crop)
        layout.addLayout(form)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.edit.clicked.connect(self._guard(self.make_copy))
        self.save.clicked.connect(self._guard(self.save_labels))
        self.crop.clicked.connect(self._guard(self.save_crop))

    def _guard(self, fn: Any) -> Any:
        def run(*_: Any) -> None:
            try:
                self.status.setText(str(fn()))
            except (UsageError, OSError) as exc:
                self.status.setText(f"error: {exc}")
        return run

    def make_copy(self) -> str:
        layer = self.labels.layer()
        box = view_box(self.viewer, layer)
        meta = layer.metadata["pipeline"]
        region = meta.get("region")
        offset = Box(*region["computed"]).offset if region and layer.name == "preview" else (0,) * box.ndim
        data = np.asarray(level0(layer)[box.to_slices()])
        frame = layer_frame(layer)
        copy = self.viewer.add_labels(
            data.copy(), name=f"edit: {layer.name}", **frame.scaled([1.0] * box.ndim, box.offset),
            metadata={"pipeline": {"edit": {"result": meta["result"], "layer": layer.name,
                                            "box": [[o + d for o, d in zip(box.offset, offset, strict=True)],
                                                    list(box.shape)],
                                            "before": data}}})
        self.viewer.layers.selection.active = copy
        return f"editable copy of {box}: paint, erase, fill; then save"

    def edited(self) -> tuple[Any, dict[str, Any]]:
        active = self.viewer.layers.selection.active
        layers = [active] if active is not None else []
        layers += [lyr for lyr in reversed(self.viewer.layers) if lyr not in layers]
        for lyr in layers:
            edit = pipeline_meta(lyr).get("edit")
            if edit:
                return lyr, edit
        raise UsageError("no edited copy: press 'Edit a copy of this view' first")

    def save_labels(self) -> str:
        layer, edit = self.edited()
        result = Path(edit["result"])
        source = label_image_of(result, (group_attrs(result) or {}).get("pipeline", {}))
        if source is None:
            raise UsageError(f"the result '{result}' has no label image to correct (output.labels: none)")
        name = self.name.text().strip()
        if not name:
            raise UsageError("give the new label image a name")
        group = save_label_image(result, source, np.asarray(layer.data), Box(*edit["box"]), name,
                                 overwrite=self.overwrite.isChecked())
        return f"saved: {group}"

    def save_crop(self) -> str:
        from ..config import InputConfig
        from ..volume.io import open_input
        from .result import resolve

        layer, edit = self.edited()
        result = Path(edit["result"])
        meta = (group_attrs(result) or {}).get("pipeline", {})
        recorded = meta.get("config", {}).get("input")
        where = resolve(recorded["path"], result) if recorded else None
        if where is None:
            raise UsageError(f"the input of '{result}' is not found: a crop needs its image")
        box = Box(*edit["box"])
        image = open_input(InputConfig.model_validate({**recorded, "path": str(where)})).read(box)
        after = np.asarray(layer.data)
        annotated = annotated_mask(edit["before"], after, self.whole.isChecked())
        path, spec = save_crop(Path(self.crops.text().strip()).expanduser(), image[0] if image.shape[0] == 1 else image,
                               after, annotated, self.init.text().strip() or "demo", box)
        return f"crop saved: {path} ({int(annotated.sum())} annotated voxels); training config {spec}"
