"""Arrays of a run written elsewhere than the output group, reached through a symbolic link
there (the label image's full-resolution level is the ``segmentation``; see
:mod:`pipeline.runtime.store`)."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Link:
    """An array of the run written elsewhere, once: ``path``, the array in its own (existing)
    group, with ``dims`` as its dimension names; the output group holds a symbolic link ``name``
    to it, so readers of ``<output>/<name>`` find it. The label image's full-resolution level is
    the ``segmentation`` this way (see :mod:`pipeline.stages.labels`)."""

    name: str
    path: str
    dims: tuple[str, ...]

    def target(self, output: Path) -> str:
        """What the link says: relative inside the output group, absolute elsewhere (the input
        image's ``labels/``), so that moving the output alone keeps it valid."""
        real = Path(self.path).resolve()
        return os.path.relpath(real, output.resolve()) if real.is_relative_to(output.resolve()) else str(real)


def can_link(folder: str | Path) -> bool:
    """Whether ``folder``'s filesystem takes symbolic links (tried with a throwaway link)."""
    probe = Path(folder) / f".pipeline-link-{uuid.uuid4().hex}"
    try:
        os.symlink(".", probe)
        probe.unlink()
    except OSError:
        return False
    return True
