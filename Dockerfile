# ievnet-bids: inner-ear total fluid space segmentation (IE-Vnet) as a BIDS-App.
#
#   docker build -t ievnet .                                            # CPU torch (default)
#   docker build -t ievnet:cuda \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .   # CUDA torch
#   docker run --rm -u "$(id -u):$(id -g)" -v /data/bids:/bids:ro -v /data/out:/out \
#       ievnet /bids /out participant
#
# `make image` builds the same recipe with docker, or without a Docker engine with buildah from
# a local Debian bookworm base (--build-arg PYTHON_IMAGE=...; docker/build_image.sh), and passes
# the host's pip settings in as the build context `pip-host` (below).
#
# The build stage installs everything into /opt/venv with docker/install.sh (the same script
# tests/test_container.py runs in a fresh virtual environment); the runtime stage copies only
# that environment: no compiler, no pip cache, no pip settings, no source tree.

# Base of both stages: a Python 3.11 on Debian bookworm. Any image with python3 (with the venv
# module), useradd and a C library as new as bookworm's works, e.g. debian:bookworm with
# python3 and python3-venv installed (what docker/local_base.sh builds).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ------------------------------------------------------------------ build-time pip settings
# Empty unless the build is given `--build-context pip-host=DIR` (docker buildx, buildah): then
# DIR's pip.conf (an index or mirror, find-links, CA bundle, ...; docker/pip_host_context.py
# writes it from the host's settings) applies to the install step, mounted read-only for that
# step only, so nothing of it lands in a layer.
FROM scratch AS pip-host

# --------------------------------------------------------------------------- build stage
FROM ${PYTHON_IMAGE} AS build

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# python3, not python: Debian's python3 package has no `python` command.
RUN python3 -m venv /opt/venv

WORKDIR /src
COPY pyproject.toml requirements.lock README.md LICENSE ./
COPY data/templates/ data/templates/
COPY ievnet_bids/ ievnet_bids/
COPY docker/install.sh docker/install.sh

# pip's download cache is a build cache mount (kept by the builder between builds, never in a
# layer): a rebuild reads the wheels from there instead of the network.
RUN --mount=type=bind,from=pip-host,target=/run/pip-host \
    --mount=type=cache,target=/root/.cache/pip,sharing=locked \
    if [ -f /run/pip-host/pip.conf ]; then export PIP_CONFIG_FILE=/run/pip-host/pip.conf; fi \
 && PYTHON=/opt/venv/bin/python TORCH_VERSION="${TORCH_VERSION}" \
    TORCH_INDEX_URL="${TORCH_INDEX_URL}" sh docker/install.sh /src

# --------------------------------------------------------------------------- runtime stage
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="ievnet-bids" \
      org.opencontainers.image.description="Inner-ear total fluid space (TFS) segmentation of heavily T2-weighted MRI with IE-Vnet, as a BIDS-App" \
      org.opencontainers.image.source="https://github.com/ievnet/ievnet-bids" \
      org.opencontainers.image.licenses="Apache-2.0"

# A non-root user; any other uid (docker run -u, Singularity/Apptainer) works as well: every
# path the app writes to by default is under /tmp or the world-writable home.
RUN useradd --create-home --uid 1000 --user-group --shell /usr/sbin/nologin ievnet \
 && chmod 1777 /home/ievnet

COPY --from=build /opt/venv /opt/venv

# Threads: one per process unless asked; ievnet-bids sets torch's thread count from
# --omp-nthreads (ITK, for the registration, always runs on one: reproducible).
# Caches: /tmp, writable under Singularity/Apptainer whatever HOME is.
# NIPYPE_NO_ET: no version check over the network. TEMPLATEFLOW_HOME is left unset: the shipped
# template needs no cache; to use another (--template), mount a TemplateFlow cache and set it.
# USER: a uid without an account in the image (docker run -u, any uid but 1000) has no user
# name, and getpass.getuser(), which MONAI calls on import, raises then unless USER is set.
ENV PATH=/opt/venv/bin:${PATH} \
    HOME=/home/ievnet \
    USER=ievnet \
    OMP_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLBACKEND=Agg \
    IEVNET_CACHE_DIR=/tmp/ievnet-cache \
    MPLCONFIGDIR=/tmp/ievnet-mplconfig \
    XDG_CACHE_HOME=/tmp/ievnet-xdg-cache \
    NIPYPE_NO_ET=1

USER 1000:1000
WORKDIR /tmp

# Smoke test of the runtime stage (shared libraries present; the shipped template resolves
# through TemplateFlow with no cache mounted), leaving nothing behind in /tmp.
RUN python -c "import ants, bids, nipype, torch; import ievnet_bids.workflows.participant" \
 && python -c "from ievnet_bids.templates import shipped_template; shipped_template()" \
 && ievnet-bids --version \
 && rm -rf /tmp/* "${HOME:?}/.nipype" "${HOME:?}/.cache"

ENTRYPOINT ["ievnet-bids"]
