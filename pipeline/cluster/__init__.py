"""Dask clusters: local, local multi-GPU and job-queue (SLURM, ...) clusters, and what batch jobs run."""
