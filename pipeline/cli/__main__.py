"""``python -m pipeline.cli``: the command line."""

from . import main

raise SystemExit(main())
