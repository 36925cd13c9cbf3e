"""The base class of errors a user must fix (bad config, input, checkpoint, ...), and the
translation of a full disk or an exceeded quota into one of them."""

from __future__ import annotations

import errno
import re

SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class UsageError(ValueError):
    """An error the user must fix: the CLI prints its one-line message and exits 2."""


class SpaceError(UsageError):
    """A write that failed for lack of space or quota; ``path``: what was being written, if known."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


def written_path(name: str) -> str:
    """The file a write was for: zarr and this package write ``<name>.<random>.partial`` or
    ``.<name>.<random>`` temporary files first."""
    return re.sub(r"\.[0-9a-f]{32}\.partial$", "", name)


def space_error(exc: BaseException) -> SpaceError | None:
    """``exc`` as a :class:`SpaceError` when it is a write that failed for space or quota, else None."""
    if isinstance(exc, SpaceError):
        return exc
    if not isinstance(exc, OSError) or exc.errno not in SPACE_ERRNOS:
        return None
    path = written_path(str(exc.filename)) if exc.filename else None
    what = "disk quota exceeded" if exc.errno == errno.EDQUOT else "no space left on the device"
    return SpaceError(f"{what} writing '{path}'" if path else what, path)
