# Stand-in for the image Dockerfile builds: lifeboat (built on the host) on the PostgreSQL 17
# image, with the same entrypoint.
ARG BASE
FROM ${BASE}
COPY lifeboat /usr/local/bin/lifeboat
COPY entrypoint.sh lifeboat.toml.in /docker/
RUN lifeboat --version
ENTRYPOINT ["/docker/entrypoint.sh", "lifeboat", "--config", "/keys/lifeboat.toml"]
CMD []
