"""python -m whatruns: the command line (see whatruns.cli)."""

from .cli import main

raise SystemExit(main())
