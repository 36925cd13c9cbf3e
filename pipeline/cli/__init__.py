"""The command line, ``pipeline`` (the console script ``pipeline.cli:main``, ``python -m pipeline.cli``).

:func:`main` is this package's public surface, exposed here deliberately; the parser, the exit
codes and the commands are in its modules: ``parser`` (the parser, :func:`main`, exit codes),
``options`` (the config options commands share), ``running`` (plan, predict, job-script, run, demo),
``models`` (model init/info/export, train, calibrate) and ``qc`` (evaluate, report, verify).
"""

from .parser import main

__all__ = ["main"]
