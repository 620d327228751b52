# syntax=docker/dockerfile:1.7
# One IPJMS image; the first argument selects the role:
#   node | coordinator | consent | superlink | supernode | pki-bootstrap  (see deploy/entrypoint.sh)
#
# Every dependency comes from deploy/requirements.lock: exact versions, each with its sha256
# (pip --require-hashes refuses anything else); the project wheel is installed with --no-deps.
# Refresh the lock after changing pyproject.toml's dependencies (deploy/README.md, "Builds"):
#   uv pip compile pyproject.toml --generate-hashes --python-version 3.11 \
#       --python-platform x86_64-manylinux_2_28 --find-links /opt/wheels \
#       --override deploy/torch-cpu.override.txt -o deploy/requirements.lock
#
# Build (internet: PyPI plus the PyTorch CPU index for torch==2.13.0+cpu):
#   docker build -t ipjms:0.1.0 .
# Build with a local torch wheel (as on the development machine, where pip uses
# find-links=/opt/wheels): pass the wheel folder as the named build context "wheels":
#   docker build -t ipjms:0.1.0 --build-context wheels=/opt/wheels \
#       --build-arg TORCH_PIP_ARGS="--find-links /wheels" .
# Base image pinned by digest (the multi-platform index of python:3.11-slim, Python 3.11.15 on
# Debian trixie, as published 2026-08-05 by the Docker Official Images' repo-info,
# repos/python/remote/3.11-slim.md). Refresh with each base-image security update:
#   docker buildx imagetools inspect python:3.11-slim   → the index digest, here and below.
# No secret is baked in: keys, certificates and database passwords are mounted at run time.

ARG PYTHON_IMAGE=python:3.11-slim@sha256:90744cff8f32887f075c47d747a173ff333e9e98801667af93c357fa9f5e28ff

# An empty default for the optional "wheels" build context (overridden by --build-context).
FROM scratch AS wheels

FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_VERSION=2.13.0
ARG TORCH_PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
# libsodium (constant-time ristretto255) for the OPRF pseudonyms (trust/oprf.py, via pysodium's
# ctypes); the runtime stage copies the one shared library, so it installs no package itself.
RUN apt-get update && apt-get install -y --no-install-recommends libsodium23 \
    && rm -rf /var/lib/apt/lists/* && cp -L /usr/lib/x86_64-linux-gnu/libsodium.so.23 /opt/libsodium.so.23
ENV PATH=/opt/venv/bin:$PATH
# The hash-locked dependencies, CPU torch included ("torch==${TORCH_VERSION}+cpu" in the lock;
# an unpinned or CUDA torch pulls several GB).
COPY deploy/requirements.lock /tmp/requirements.lock
RUN --mount=type=bind,from=wheels,target=/wheels \
    pip install --require-hashes --no-deps ${TORCH_PIP_ARGS} -r /tmp/requirements.lock \
    && grep -q "^torch==${TORCH_VERSION}+cpu " /tmp/requirements.lock
WORKDIR /src
COPY pyproject.toml README.md ./
COPY trust ./trust
COPY servicekit ./servicekit
COPY protos ./protos
COPY consent ./consent
COPY node ./node
COPY coordinator ./coordinator
COPY federated ./federated
COPY deploy ./deploy
# Build the project wheel, then install it alone (its dependencies are the locked ones above).
RUN pip wheel --no-deps --wheel-dir /dist . \
    && pip install --no-deps /dist/ipjms-*.whl \
    && pip check \
    && python -c "import torch; assert torch.__version__.startswith('${TORCH_VERSION}'), torch.__version__" \
    && ipjms --help >/dev/null

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="ipjms" \
      org.opencontainers.image.description="IPJMS node, coordinator, consent registry, SuperLink and SuperNode"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    IPJMS_DATA_DIR=/data \
    IPJMS_PORT=8080
# A fixed, unprivileged uid/gid so volume ownership and Kubernetes securityContext agree.
RUN groupadd --system --gid 10001 ipjms \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin ipjms \
    && mkdir -p /data /pki /run/ipjms \
    && chown -R 10001:10001 /data /pki /run/ipjms
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/libsodium.so.23 /usr/lib/x86_64-linux-gnu/libsodium.so.23
# in the loader's cache, where pysodium's ctypes.util.find_library looks
RUN ldconfig && python -c "import pysodium"
COPY --chmod=0755 deploy/entrypoint.sh /usr/local/bin/ipjms-entrypoint
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
# Each role answers GET /healthz on $IPJMS_PORT (Flower roles: their health address, see the
# entrypoint); the check is a role of the entrypoint so it needs no curl in the image.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["ipjms-entrypoint", "healthcheck"]
ENTRYPOINT ["ipjms-entrypoint"]
CMD ["--help"]
