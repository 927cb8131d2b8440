# bids_affect: emotion decoding, interpretation and encoding models of naturalistic fMRI
# (a BIDS-App). Build from the repository root:
#
#   docker build -t bidsaffect/bids_affect:0.1.0 --build-arg VERSION=0.1.0 .
#   docker run --rm -u "$(id -u):$(id -g)" -v /data/bids:/data:ro -v /data/out:/out \
#       -v /scratch/work:/work bidsaffect/bids_affect:0.1.0 /data /out participant -w /work
#
# Build arguments:
#   BASE             a Debian bookworm image (Python 3.11 then comes from Debian's apt) or
#                    a python:3.11-*-bookworm image (its Python is used); pinned by default
#   TORCH_VERSION    the torch release the package pins
#   TORCH_INDEX_URL  where torch comes from: the CPU build by default; a CUDA build with e.g.
#                    https://download.pytorch.org/whl/cu128; empty: PyPI (and ./wheelhouse)
#   VERSION          the version written into the labels and the provenance tag
# Optional build-context files: pip.conf (site pip settings: a mirror, a proxy's CA
# certificate), wheelhouse/ (local wheels, e.g. the CPU torch wheel), constraints.txt
# (exact versions), weights/ (network weights to bake), templateflow/ (a TemplateFlow
# home with real files). scripts/build_image.sh builds this file with buildah.

ARG BASE=debian:bookworm-20250520-slim@sha256:90522eeb7e5923ee2b871c639059537b30521272f10ca86fdbbbb2b75a8c40cd

# ------------------------------------------------------------------------------ base
# The runtime: Python 3.11 and the environment of every run (shared by both stages).
FROM ${BASE} AS base
ARG DEBIAN_FRONTEND=noninteractive
# Debian's python3.11 follows bookworm's point releases, so its version is not pinned.
# hadolint ignore=DL3008
RUN if ! command -v python3.11 >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3.11 \
        && apt-get clean \
        && rm -rf /var/lib/apt/lists/*; \
    fi
# One thread per process unless --omp-nthreads says otherwise (nipype runs processes in
# parallel). Caches go to /tmp, never to $HOME (fMRIPrep issue 1777); the image and the
# input dataset can then be read-only.
ENV LANG=C.UTF-8 \
    PATH=/opt/bids_affect/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    OMP_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/bids_affect/matplotlib \
    NUMBA_CACHE_DIR=/tmp/bids_affect/numba \
    XDG_CACHE_HOME=/tmp/bids_affect/cache \
    XDG_CONFIG_HOME=/tmp/bids_affect/config \
    NIPYPE_NO_ET=1 \
    BIDS_AFFECT_RESOURCES_DIR=/opt/bids_affect/resources \
    BIDS_AFFECT_WEIGHTS_DIR=/opt/bids_affect/weights \
    TEMPLATEFLOW_HOME=/opt/bids_affect/templateflow

# --------------------------------------------------------------------------- builder
FROM base AS builder
ARG DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN if ! python3.11 -c "import ensurepip" >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3.11-venv \
        && apt-get clean \
        && rm -rf /var/lib/apt/lists/*; \
    fi
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /usr/src/bids_affect
COPY . .
# Installed as .ci/run and README.md install it: torch first (the CPU build unless
# TORCH_INDEX_URL names another), then the package.
RUN python3.11 -m venv /opt/bids_affect/venv \
    && if [ -f pip.conf ]; then export PIP_CONFIG_FILE=/usr/src/bids_affect/pip.conf; fi \
    && if [ -d wheelhouse ]; then export PIP_FIND_LINKS=/usr/src/bids_affect/wheelhouse; fi \
    && if [ -f constraints.txt ]; then export PIP_CONSTRAINT=/usr/src/bids_affect/constraints.txt; fi \
    && pip install --no-cache-dir pip==26.3 \
    && PIP_INDEX_URL="${TORCH_INDEX_URL:-https://pypi.org/simple}" \
        pip install --no-cache-dir "torch==${TORCH_VERSION}" \
    && pip install --no-cache-dir . \
    && bids_affect --version
# Offline resources: atlases and templates verified, TemplateFlow and weights baked.
RUN install -D -m 0755 scripts/prefetch_resources.py /opt/bids_affect/bin/prefetch_resources \
    && /opt/bids_affect/bin/prefetch_resources --weights-from weights \
        --templateflow-from templateflow --templateflow auto

# ----------------------------------------------------------------------------- image
FROM base
ARG VERSION=0.1.0
ARG BUILD_DATE=unknown
ARG VCS_REF=unknown
COPY --from=builder /opt/bids_affect /opt/bids_affect
# HOME is writable for any `docker run -u UID` (no USER line), as fMRIPrep's image does.
ENV HOME=/home/bids_affect \
    BIDS_AFFECT_CONTAINER=docker \
    BIDS_AFFECT_CONTAINER_TAG=bidsaffect/bids_affect:${VERSION}
RUN mkdir -p /home/bids_affect \
    && chmod 1777 /home/bids_affect \
    && ln -s /opt/bids_affect/bin/prefetch_resources /usr/local/bin/prefetch_resources \
    && bids_affect --version \
    && prefetch_resources --check \
    && rm -rf /tmp/bids_affect
WORKDIR /tmp
LABEL org.opencontainers.image.title="bids_affect" \
      org.opencontainers.image.description="BIDS-App: emotion decoding, interpretation and encoding models of naturalistic fMRI" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.source="https://github.com/bids-affect/bids_affect" \
      org.opencontainers.image.url="https://github.com/bids-affect/bids_affect" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.label-schema.schema-version="1.0" \
      org.label-schema.name="bids_affect" \
      org.label-schema.description="BIDS-App: emotion decoding, interpretation and encoding models of naturalistic fMRI" \
      org.label-schema.version="${VERSION}" \
      org.label-schema.build-date="${BUILD_DATE}" \
      org.label-schema.vcs-ref="${VCS_REF}" \
      org.label-schema.vcs-url="https://github.com/bids-affect/bids_affect" \
      org.label-schema.docker.cmd="docker run --rm -v /data:/data:ro -v /out:/out bidsaffect/bids_affect:${VERSION} /data /out participant"
ENTRYPOINT ["/opt/bids_affect/venv/bin/bids_affect"]
