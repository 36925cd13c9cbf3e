"""What the dock widgets share: the layer chooser, the settings form (image, model, object size,
clustering) and the config it makes, the block grid a preview and its run share, and the row of
buttons, progress bar and status line under each widget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..errors import UsageError
from .viewer import pipeline_meta, source_of

METHODS = ("model default", "connectivity", "agglomeration", "meanshift")


def fold_button(text: str) -> tuple[QToolButton, QWidget, QFormLayout]:
    """A button that shows or hides a section (folded at first): the button, the section and its form
    (empty fields there mean defaults, shown as placeholders). Folding keeps the three docked widgets
    within a 1000-px-high screen."""
    button = QToolButton()
    button.setText(text)
    button.setCheckable(True)
    button.setArrowType(Qt.RightArrow)
    button.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
    section = QWidget()
    form = QFormLayout(section)
    form.setContentsMargins(0, 0, 0, 0)
    section.setVisible(False)

    def fold(shown: bool) -> None:
        section.setVisible(shown)
        button.setArrowType(Qt.DownArrow if shown else Qt.RightArrow)

    button.toggled.connect(fold)
    return button, section, form


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
        self.diameter.setPlaceholderText("as trained (e.g. 12, 24, 24 voxels z, y, x, or auto)")
        form.addRow("diameter", self.diameter)
        self.method = QComboBox()
        self.method.addItems(METHODS)
        self.more, self.values, values = fold_button("values")  # three docked widgets fit a 1000-px screen
        row = QHBoxLayout()
        row.addWidget(self.method, 1)
        row.addWidget(self.more)
        form.addRow("clustering", row)
        self.fields: dict[str, QLineEdit] = {}
        for key in ("foreground_threshold", "threshold", "merge_distance", "min_size"):
            self.fields[key] = QLineEdit()
            values.addRow(key.replace("_", " "), self.fields[key])
        form.addRow(self.values)
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
        if text == ["auto"]:
            source["diameter"] = "auto"
        elif text:
            try:
                source["diameter"] = [float(v) for v in text] if len(text) > 1 else float(text[0])
            except ValueError:
                raise UsageError(f"diameter '{self.diameter.text()}': give one number, one per axis or auto") from None
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
    bar.setVisible(False)  # until there is progress to show
    layout.addWidget(bar)
    status = QLabel("")
    status.setWordWrap(True)
    layout.addWidget(status)
    return buttons, bar, status


def show_progress(bar: QProgressBar, desc: str, done: int, total: int) -> None:
    bar.setVisible(True)
    bar.setMaximum(max(total, 1))
    bar.setValue(done)
    bar.setFormat(f"{desc}: %v/%m")


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


class DockWidget(QWidget):
    """A dock widget of the viewer ``self.viewer``: the first time it shows (docked: the canvas just
    narrowed), the view is fitted again to the layers."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.fitted = False

    def showEvent(self, event: Any) -> None:  # Qt calls it by this name
        super().showEvent(event)
        if not self.fitted:
            self.fitted = True
            QTimer.singleShot(0, self.viewer.reset_view)  # after the dock's layout has resized the canvas


class SettingsWidget(DockWidget):
    """A dock widget that starts with the shared :class:`Settings` (``self.column``: its layout)."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        self.column = QVBoxLayout(self)
        self.settings = Settings(napari_viewer)
        self.column.addWidget(self.settings)
