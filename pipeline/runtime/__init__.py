"""How a run executes and where it keeps its state: the engine (serial or Dask), the output store,
the run lock and progress lines."""
