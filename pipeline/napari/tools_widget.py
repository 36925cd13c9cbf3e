"""The three dock widgets as tabs of one dock, for screens too low for three docks."""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QTabWidget, QVBoxLayout

from .keep_widget import KeepWidget
from .run_widget import RunWidget
from .segment_widget import SegmentViewWidget
from .widget_parts import DockWidget


class ToolsWidget(DockWidget):
    """The three widgets as tabs of one dock (Segment this view, Run the whole volume, Edit and
    keep): as tall as the tallest, for screens too low for three docks."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        self.tabs = QTabWidget()
        self.parts = (SegmentViewWidget(napari_viewer), RunWidget(napari_viewer), KeepWidget(napari_viewer))
        for widget, title in zip(self.parts, ("Segment this view", "Run the whole volume", "Edit and keep"), strict=True):
            widget.fitted = True  # the tabs' dock fits the view once
            self.tabs.addTab(widget, title)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tabs)
