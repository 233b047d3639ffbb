# syntax=docker/dockerfile:1
# One image for every role: `kycstream gateway`, `kycstream process`, `kycstream topics create`, ...
# The role is the container's args; the entrypoint is the kycstream CLI.
# Both stages use the same base so the virtualenv's interpreter links stay valid; bump them together
# (and pin a digest, python:3.11-slim-bookworm@sha256:..., where your registry policy asks for one).
# The roles' health is checked by Kubernetes probes, which differ per role (gateway /healthz and
# /readyz, processor /metrics), so one image-wide HEALTHCHECK would be wrong for one of them.
# checkov:skip=CKV_DOCKER_2: health is role-specific and checked by the Kubernetes probes in deploy/base/

# --- build: resolve and install the project into a self-contained virtualenv -------------------
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/kycstream
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY processors ./processors
COPY schemas ./schemas
# Every dependency ships manylinux wheels, so no compiler is needed even here. Bytecode is compiled
# now because the running container's root filesystem is read-only.
RUN /opt/kycstream/bin/pip install --no-compile . \
    && /opt/kycstream/bin/python -m compileall -q -j 0 /opt/kycstream/lib

# --- runtime: the slim base plus the virtualenv, nothing else ------------------------------------
FROM python:3.11-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="kycstream" \
      org.opencontainers.image.description="KYC provider webhooks into Kafka, normalized to Avro events" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/kycstream/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A fixed high UID/GID (> 10000) so it never collides with a host user and matches runAsUser in deploy/.
RUN groupadd --system --gid 10001 kycstream \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin kycstream
COPY --from=build /opt/kycstream /opt/kycstream
WORKDIR /opt/kycstream
USER 10001:10001
# 8080: gateway (webhooks, /healthz, /readyz, /metrics); 9108: processor /metrics.
EXPOSE 8080 9108
ENTRYPOINT ["kycstream"]
CMD ["--help"]
