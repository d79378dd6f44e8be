"""ucloud-slurm-provider: a UCloud compute provider for a Slurm cluster."""

__version__ = "0.1.0"
