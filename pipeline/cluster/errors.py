"""Errors of Dask clusters: one that cannot be started as configured (:class:`ClusterError`), and
job-queue workers all lost beyond their restart budget (:class:`WorkersLost`, raised by
:class:`pipeline.cluster.guard.JobGuard`)."""

from __future__ import annotations

from ..errors import UsageError


class ClusterError(UsageError):
    """A cluster that cannot be started as configured."""


class WorkersLost(UsageError):
    """Every worker is gone and none can be replaced: the run stops (and resumes when rerun)."""
