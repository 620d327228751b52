# syntax=docker/dockerfile:1.7
# One IPJMS image; the first argument selects the role:
#   node | coordinator | consent | superlink | supernode | pki-bootstrap  (see deploy/entrypoint.sh)
#
# Build (internet, CPU torch from the PyTorch index):
#   docker build -t ipjms:0.1.0 .
# Build offline with a local torch wheel (as on the development machine, where pip uses
# find-links=/opt/wheels): pass the wheel folder as the named build context "wheels" and tell pip
# not to use the PyTorch index:
#   docker build -t ipjms:0.1.0 --build-context wheels=/opt/wheels \
#       --build-arg TORCH_PIP_ARGS="--no-index --find-links /wheels" .
# No secret is baked in: keys, certificates and database passwords are mounted at run time.

ARG PYTHON_IMAGE=python:3.11-slim

# An empty default for the optional "wheels" build context (overridden by --build-context).
FROM scratch AS wheels

FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_VERSION=2.13.0
ARG TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# CPU torch first, pinned (an unpinned or CUDA torch pulls several GB).
RUN --mount=type=bind,from=wheels,target=/wheels \
    pip install ${TORCH_PIP_ARGS} "torch==${TORCH_VERSION}"
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
# Build the project wheel, then install it; torch==2.13.0 is already satisfied by 2.13.0+cpu.
RUN pip wheel --no-deps --wheel-dir /dist . \
    && pip install /dist/ipjms-*.whl \
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
