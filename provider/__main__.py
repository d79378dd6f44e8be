"""``python -m provider``: the same command line as ``ucloud-slurm-provider``."""

from provider.cli import main

raise SystemExit(main())
