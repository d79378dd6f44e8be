# The daemon (ucloud-slurm-provider serve) and the stand-in UCloud/Core (dev-core) of the compose
# cluster (compose.yaml), also the image the test suite runs in against the cluster.
# Slurm's client commands and munge come from Debian 12's packages through the same script as for
# the local cluster (deploy/local-slurm/install-packages.sh); the Python environment is made by
# deploy/bootstrap.sh (.venv with the project and its test extra). The container's munged is
# started by entrypoint.sh's "client" role with deploy/local-slurm/common.sh.
# Build context: the repository root (compose.yaml sets it).
FROM debian:12-slim

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV ROOT=/opt/ucloud-slurm-provider \
    PIP_NO_CACHE_DIR=1

# Debian 12's python3 is 3.11, which the project needs; bootstrap.sh needs python3 to be there.
COPY deploy/local-slurm/install-packages.sh $ROOT/deploy/local-slurm/install-packages.sh
# hadolint ignore=DL3008
RUN "$ROOT/deploy/local-slurm/install-packages.sh" \
    && apt-get install -y -qq --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

COPY pyproject.toml README.md $ROOT/
COPY provider/ $ROOT/provider/
COPY deploy/bootstrap.sh $ROOT/deploy/bootstrap.sh
RUN "$ROOT/deploy/bootstrap.sh"

COPY config.example.toml $ROOT/
COPY tests/ $ROOT/tests/
COPY deploy/local-slurm/ $ROOT/deploy/local-slurm/
COPY deploy/demo/ $ROOT/deploy/demo/
COPY deploy/docker/entrypoint.sh $ROOT/deploy/docker/entrypoint.sh

ENV PATH=/opt/ucloud-slurm-provider/.venv/bin:$PATH \
    SLURM_LOCAL_DIR=/var/lib/slurm-local \
    SLURM_DOCKER_SHARED=/cluster
WORKDIR /opt/ucloud-slurm-provider

ENTRYPOINT ["/opt/ucloud-slurm-provider/deploy/docker/entrypoint.sh"]
CMD ["client", "ucloud-slurm-provider", "serve", "--config", "/etc/ucloud-slurm-provider/config.toml"]
