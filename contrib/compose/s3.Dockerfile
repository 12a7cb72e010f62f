# Stand-in for motoserver/moto (and, on MinIO's port, for MinIO) and amazon/aws-cli: moto's
# server and the AWS CLI from PyPI wheels downloaded on the host (no network in the build).
ARG BASE
FROM ${BASE}
ARG MOTO_VERSION
ARG AWSCLI_VERSION
COPY wheels /tmp/wheels
RUN python3 -m venv /opt/moto \
    && /opt/moto/bin/pip install --quiet --no-index --find-links /tmp/wheels "moto[server]==${MOTO_VERSION}" \
    && python3 -m venv /opt/awscli \
    && /opt/awscli/bin/pip install --quiet --no-index --find-links /tmp/wheels "awscli==${AWSCLI_VERSION}" \
    && ln -s /opt/moto/bin/moto_server /opt/awscli/bin/aws /usr/local/bin/ \
    && rm -rf /tmp/wheels /root/.cache \
    && moto_server --help >/dev/null && aws --version
ENV MOTO_PORT=5000
EXPOSE 5000
ENTRYPOINT ["moto_server", "-H", "0.0.0.0"]
