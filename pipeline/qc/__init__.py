"""Quality control: the run's audit, seams, the report (what it reads of a result and predicts again,
figures, page, views), verify, metrics and suspect objects."""
