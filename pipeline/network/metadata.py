"""What a checkpoint records besides its network: its typed metadata.

:class:`CheckpointInfo` is everything in a checkpoint's ``extra`` JSON (what training and
calibration record); :class:`Calibration` is its ``clustering`` section. Reading, writing and
validating the file is in :mod:`pipeline.network.checkpoint`.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import pwd
import shutil
import subprocess
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

logger = logging.getLogger(__name__)


class Calibration(BaseModel):
    """Clustering method and parameters calibrated on validation data (``clustering``).

    Only the values that were calibrated are set; the rest come from the run config or
    the loss-margin defaults (see :func:`pipeline.run.clustering_params`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    method: str = Field("connectivity", description="checkpoints calibrated before methods were recorded: "
                        "connectivity")
    foreground_threshold: float | None = Field(None, gt=0, lt=1)
    threshold: float | None = Field(None, gt=0)
    merge_distance: float | None = Field(None, gt=0)
    grow_threshold: float | None = Field(None, gt=0, lt=1)
    grow_distance: float | None = Field(None, ge=0)
    bandwidth: float | None = Field(None, gt=0)
    min_size: int | None = Field(None, ge=0)

    def values(self) -> dict[str, Any]:
        """The calibrated values (fields that are not None), ``method`` included."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class CheckpointInfo(BaseModel):
    """Everything in a checkpoint's ``extra`` JSON.

    The field order is the order training has always written them in, so that
    checkpoints written from a :class:`CheckpointInfo` are byte-identical to older ones.
    """

    model_config = ConfigDict(frozen=True, extra="allow")
    trained: bool = False
    iterations: int = Field(0, ge=0)
    delta_v: float = Field(0.5, gt=0)
    delta_d: float = Field(1.5, gt=0)
    metrics: dict[str, float] = {}
    seed: int | None = None
    train_seconds: float | None = Field(None, ge=0)
    clustering: Calibration | None = None
    diameter: tuple[float, ...] | None = Field(
        None, description="typical object diameter of the training data, voxels per axis (input.diameter "
        "resamples other data to it)")
    foreground_target: Literal["mask", "interior"] | None = Field(
        None, description="what the foreground channel learnt: every object voxel, or the interior (touching "
        "objects apart); a fine-tune of this model keeps it")
    authors: tuple[str, ...] | None = Field(
        None, description="who trained it (then the authors of the model it was fine-tuned from): the names an "
        "exported bioimage.io package lists unless `model export --author` names others")

    def to_json(self) -> str:
        """The ``extra`` string of a checkpoint: the fields that were given, in field order."""
        return json.dumps(self.model_dump(mode="json", exclude_unset=True))


def local_author() -> str:
    """The name of the person running this: git's ``user.name``, else the account's full name
    (GECOS), else the login name."""
    git = shutil.which("git")
    if git:
        try:
            found = subprocess.run([git, "config", "user.name"], capture_output=True, text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            found = ""
        if found:
            return found
    try:
        gecos = pwd.getpwuid(os.getuid()).pw_gecos.split(",")[0].strip()
    except (KeyError, OSError):
        gecos = ""
    try:
        return gecos or getpass.getuser()
    except (KeyError, OSError):  # no login name (a container's anonymous uid)
        return f"uid {os.getuid()}"
