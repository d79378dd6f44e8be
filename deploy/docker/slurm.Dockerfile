# The Slurm side of the compose cluster (compose.yaml): one image for the init, mariadb, slurmdbd,
# slurmctld and slurmd (c1, c2) services, the role chosen by the command (entrypoint.sh).
# Debian 12's own packages, installed by the same script as for the local single-host cluster
# (deploy/local-slurm/install-packages.sh: slurmctld slurmd slurm-client slurmdbd munge
# mariadb-server), and started by the same functions (deploy/local-slurm/common.sh).
# Build context: the repository root (compose.yaml sets it).
FROM debian:12-slim

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV ROOT=/opt/ucloud-slurm-provider

# The packages first, so that editing the scripts does not reinstall them.
COPY deploy/local-slurm/install-packages.sh $ROOT/deploy/local-slurm/install-packages.sh
RUN "$ROOT/deploy/local-slurm/install-packages.sh" \
    && rm -rf /var/lib/apt/lists/*

COPY deploy/local-slurm/ $ROOT/deploy/local-slurm/
COPY deploy/docker/entrypoint.sh $ROOT/deploy/docker/entrypoint.sh
COPY deploy/docker/shims/ $ROOT/deploy/docker/shims/

# The same paths in every container: slurm.conf names $SLURM_LOCAL_DIR/run/munge.socket etc.
ENV SLURM_LOCAL_DIR=/var/lib/slurm-local \
    SLURM_DOCKER_SHARED=/cluster

ENTRYPOINT ["/opt/ucloud-slurm-provider/deploy/docker/entrypoint.sh"]
CMD ["--help"]
