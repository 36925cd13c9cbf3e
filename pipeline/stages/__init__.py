"""The stages of a run, one module each: ``predict`` -> ``fragments`` -> ``merge`` ->
``relabel`` -> ``objects``. Blockwise stages derive from :class:`BlockStage`, which marks
blocks done and resumes; :mod:`pipeline.run` chains them."""

from __future__ import annotations

from .base import MODEL, BlockStage, Task
from .fragments import FragmentsStage
from .merge import MergeStage, select_tables
from .objects import ObjectsStage, read_objects
from .predict import PredictStage, predict_blocks
from .relabel import RelabelStage, RestoreStage
from .scan import ScanStage

__all__ = [
    "MODEL", "BlockStage", "FragmentsStage", "MergeStage", "ObjectsStage", "PredictStage", "RelabelStage", "RestoreStage", "ScanStage", "Task",
    "predict_blocks", "read_objects", "select_tables",
]
