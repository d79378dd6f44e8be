# The Slurm side of the compose cluster (compose.yaml): one image for the init, mariadb, slurmdbd,
# slurmctld and slurmd (c1, c2) services, the role chosen by the command (entrypoint.sh). Debian's
# own packages, installed by the same script as for the single-host cluster.
# Build context: the repository root. Base: debian:<release>-slim, made locally by cluster.sh.
ARG DEBIAN=12
FROM debian:${DEBIAN}-slim

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY deploy/local-slurm/install-packages.sh /opt/ucloud-slurm-provider/deploy/local-slurm/install-packages.sh
RUN /opt/ucloud-slurm-provider/deploy/local-slurm/install-packages.sh && rm -rf /var/lib/apt/lists/*

COPY deploy/local-slurm/ /opt/ucloud-slurm-provider/deploy/local-slurm/
COPY deploy/docker/entrypoint.sh /opt/ucloud-slurm-provider/deploy/docker/entrypoint.sh
ENTRYPOINT ["/opt/ucloud-slurm-provider/deploy/docker/entrypoint.sh"]
CMD ["--help"]
