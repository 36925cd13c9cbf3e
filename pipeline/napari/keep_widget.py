"""The "Edit and keep" dock widget: an editable copy of the view of a result's labels, kept as a new
label image of the result or as a training crop (:mod:`.keep`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import QCheckBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QPushButton, QVBoxLayout

from ..errors import UsageError
from ..geometry import Box
from .keep import annotated_mask, save_crop, save_label_image
from .result import group_attrs, label_image_of, resolve
from .viewer import layer_frame, level0, opened_result, pipeline_meta, result_labels, view_box
from .widget_parts import DockWidget, LayerChoice


class KeepWidget(DockWidget):
    """Correct labels on an editable copy of the view; keep them as a label image or a training crop."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.labels = LayerChoice(napari_viewer, result_labels, "no labels layer of a result: open a pipeline "
                                  "result first")
        form.addRow("labels", self.labels)
        self.edit = QPushButton("Edit a copy of this view")
        form.addRow(self.edit)
        self.name = QLineEdit("corrected")
        self.save = QPushButton("Save into the result")
        row = QHBoxLayout()
        row.addWidget(self.name, 1)
        row.addWidget(self.save)
        form.addRow("label image", row)
        self.overwrite = QCheckBox("replace an existing label image of that name (even the run's own, which is its segmentation)")
        form.addRow(self.overwrite)
        self.crops = QLineEdit()
        self.crops_edited = False  # the user's own folder is never replaced
        self.crops.textEdited.connect(lambda _: setattr(self, "crops_edited", True))
        self.labels.currentTextChanged.connect(self.propose_crops)
        self.propose_crops()
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

    def propose_crops(self, *_: Any) -> None:
        """``<result>-crops`` beside the chosen labels' result (a folder crops are added to: kept when
        it exists; ``crops`` in the current folder without a result), until the user types a folder."""
        if self.crops_edited:
            return
        name = self.labels.currentText()
        result = opened_result(self.viewer.layers[name]) if name and name in self.viewer.layers else None
        self.crops.setText(str(result.parent / f"{result.name.removesuffix('.zarr')}-crops" if result else
                               Path.cwd() / "crops"))

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
