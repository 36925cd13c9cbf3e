"""The "Run the whole volume" dock widget: the settings written as a config file the user keeps,
``pipeline run`` launched detached (:mod:`.launch`), its progress followed, the result opened."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QComboBox, QFormLayout, QLineEdit, QSpinBox

from ..errors import UsageError
from . import launch
from .widget_parts import SettingsWidget, add_controls, pin_blocks, show_progress


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
