"""Everything about Slurm: job and state types, the state table, and the backends that query it."""
