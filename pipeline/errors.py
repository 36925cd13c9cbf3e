"""The base class of errors a user must fix (bad config, input, checkpoint, ...)."""

from __future__ import annotations


class UsageError(ValueError):
    """An error the user must fix: the CLI prints its one-line message and exits 2."""
