"""How a run executes and where it keeps its state: the engine (serial or Dask: bounded maps, tree
reductions; what runs as a task in ``tasks``), the output group (``store``, with its done
``markers``, block ``faces``, the ``output`` checks and the ``resume`` key), the run lock and
progress lines."""
