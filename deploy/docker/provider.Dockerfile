# The daemon (ucloud-slurm-provider serve) and the stand-in UCloud/Core (dev-core) of the compose
# cluster (compose.yaml): Slurm's commands and munge from the same install script as the cluster, the
# project from the wheels cluster.sh builds on the host (.cache/wheels: a container here does not
# trust the host's HTTPS proxy, and the wheels make the build quick and offline).
# Build context: the repository root. Base: debian:<release>-slim, made locally by cluster.sh.
ARG DEBIAN=12
FROM debian:${DEBIAN}-slim

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV ROOT=/opt/ucloud-slurm-provider
COPY deploy/local-slurm/install-packages.sh $ROOT/deploy/local-slurm/install-packages.sh
# hadolint ignore=DL3008
RUN "$ROOT/deploy/local-slurm/install-packages.sh" \
    && apt-get install -y -qq --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

COPY .cache/wheels/ /tmp/wheels/
RUN python3 -m venv "$ROOT/.venv" \
    && "$ROOT/.venv/bin/pip" install --quiet --no-index --find-links /tmp/wheels ucloud-slurm-provider \
    && rm -rf /tmp/wheels

COPY deploy/local-slurm/ $ROOT/deploy/local-slurm/
COPY deploy/demo/ $ROOT/deploy/demo/
COPY deploy/docker/entrypoint.sh $ROOT/deploy/docker/entrypoint.sh
ENV PATH=/opt/ucloud-slurm-provider/.venv/bin:$PATH
WORKDIR /opt/ucloud-slurm-provider
ENTRYPOINT ["/opt/ucloud-slurm-provider/deploy/docker/entrypoint.sh"]
CMD ["client", "ucloud-slurm-provider", "serve", "--config", "/etc/ucloud-slurm-provider/config.toml"]
