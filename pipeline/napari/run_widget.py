"""The "Run the whole volume" dock widget: the settings written as a config file the user keeps,
``pipeline run`` launched detached (:mod:`.launch`), its progress followed, the result opened."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QComboBox, QFormLayout, QHBoxLayout, QLineEdit, QSpinBox

from ..errors import UsageError
from . import launch
from .viewer import opened_result, proposed_path
from .widget_parts import SettingsWidget, add_controls, fold_button, pin_blocks, show_progress


class RunWidget(SettingsWidget):
    """Write the config, launch ``pipeline run`` detached, follow it, open the result."""

    POLL_MS = 2000

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        layout = self.column
        form = QFormLayout()
        self.output = QLineEdit()
        self.output_edited = False  # the user's own path is never replaced
        self.output.textEdited.connect(lambda _: setattr(self, "output_edited", True))
        self.settings.image.currentTextChanged.connect(self.propose_output)
        self.propose_output()
        form.addRow("output", self.output)
        self.kind = QComboBox()
        self.kind.addItems(["local", "serial", "slurm", "pbs", "sge", "lsf", "htcondor"])
        self.workers = QSpinBox()
        self.workers.setRange(1, 100000)
        self.workers.setValue(2)
        self.workers.setPrefix("workers ")
        self.more, section, more = fold_button("files")
        row = QHBoxLayout()
        row.addWidget(self.kind, 1)
        row.addWidget(self.workers, 1)
        row.addWidget(self.more)
        form.addRow("cluster", row)
        self.yaml = QLineEdit()
        self.yaml.setPlaceholderText("<output>.yaml")
        more.addRow("config file", self.yaml)
        self.cluster_file = QLineEdit()
        self.cluster_file.setPlaceholderText("optional: take cluster: from this YAML (e.g. deploy/jobqueue.yaml)")
        more.addRow("cluster from", self.cluster_file)
        form.addRow(section)
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

    def propose_output(self, *_: Any) -> None:
        """A free ``<result>-rerun.zarr`` beside the result the chosen image was opened from (else
        ``result.zarr`` in the current folder), until the user types a path."""
        if self.output_edited:
            return
        name = self.settings.image.currentText()
        layer = self.viewer.layers[name] if name and name in self.viewer.layers else None
        self.output.setText(str(proposed_path(layer, "rerun.zarr") if opened_result(layer) else
                                proposed_path(None, "result.zarr")))

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
