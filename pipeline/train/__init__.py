"""Training with the discriminative loss on (image, instance labels) volumes.

Random crops whose output window is larger than ``step`` on every axis (the paper's
condition for consistent embeddings), augmentation, a validation split scored with
AP@0.5 and avAP over a grid of clustering methods and parameters, and checkpoints that
carry the full spec (resumable) and the best clustering as the model's default.

Modules: :mod:`.config` (the training config), :mod:`.data` (volumes, crops,
augmentation, batches), :mod:`.calibrate` (validation and clustering calibration),
:mod:`.loop` (the training loop).
"""

from __future__ import annotations

# `calibrate` is both a module and its main function: the function is the package attribute
from .calibrate import calibrate, clustering_grid, split_volumes, validate
from .config import AugmentConfig, LossConfig, SyntheticSource, TrainConfig, VolumeSource, load_train_config
from .data import CropSampler, batches, interior, load_volumes, norm_stats, synthetic_volumes
from .loop import checkpoint_info, train

__all__ = [
    "AugmentConfig",
    "CropSampler",
    "LossConfig",
    "SyntheticSource",
    "TrainConfig",
    "VolumeSource",
    "batches",
    "calibrate",
    "checkpoint_info",
    "clustering_grid",
    "interior",
    "load_train_config",
    "load_volumes",
    "norm_stats",
    "split_volumes",
    "synthetic_volumes",
    "train",
    "validate",
]
