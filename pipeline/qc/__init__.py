"""Quality control: the run's audit, seams, the report (figures, page, views), verify, metrics and
suspect objects."""
