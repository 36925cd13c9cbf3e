"""Dask clusters: opening one (``deploy``), local and local multi-GPU clusters (``local``), job-queue
clusters such as SLURM (``jobqueue``, with ``guard`` watching their jobs), and what batch jobs run
(``worker``, ``workerlog``)."""
