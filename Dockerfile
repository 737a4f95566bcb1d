# The serverless-db-operator image: `sdb`, which runs both the operator (`sdb up --runtime
# kubernetes`) and the activator (`sdb activator`). Postgres itself runs in the databases' own pods
# (the official postgres image), so nothing of Postgres is installed here.
#
#   docker build -t serverless-db-operator:dev .
#
# The base is pinned to an exact Python release on an exact Debian; both stages use the same one, so
# the virtual environment built in the first runs unchanged in the second.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/sdb
WORKDIR /src
# Only what `pip install .` reads (.dockerignore keeps everything else out of the context).
COPY pyproject.toml README.md ./
COPY controller ./controller
RUN /opt/sdb/bin/pip install --no-compile . \
    && /opt/sdb/bin/python -m compileall -q /opt/sdb/lib \
    && /opt/sdb/bin/pip uninstall -y setuptools pip \
    && /opt/sdb/bin/sdb --help >/dev/null

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="serverless-db-operator" \
      org.opencontainers.image.description="Serverless Postgres on Kubernetes: the operator and the activator" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# A named non-root user (uid 65532, as distroless's `nonroot`), so libraries that look the user
# up find one; its home is /tmp, the one writable place under the chart's read-only root.
RUN echo 'sdb:x:65532:65532:sdb:/tmp:/usr/sbin/nologin' >> /etc/passwd \
    && echo 'sdb:x:65532:' >> /etc/group
COPY --from=build /opt/sdb /opt/sdb
ENV PATH=/opt/sdb/bin:$PATH \
    HOME=/tmp \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 65532:65532
ENTRYPOINT ["sdb"]
CMD ["--help"]
