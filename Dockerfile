# mae-hub service image. Two targets:
#   docker build -t mae-hub:cuda .               GPU hosts (the default, last stage)
#   docker build -t mae-hub:cpu --target cpu .   CPU-only hosts (torch's small CPU build)
# Run:  docker run --gpus all -p 8000:8000 mae-hub:cuda
#       docker run -p 8000:8000 -v "$PWD/models:/models:ro" -e MAE_MODEL=local:ns/name mae-hub:cpu
#
# The CUDA runtime comes with PyTorch's CUDA wheels (the nvidia-* packages), so both targets
# start from the same slim Python image; a GPU host needs only the NVIDIA driver and the
# NVIDIA Container Toolkit. The package is built into a wheel in its own stage and installed
# by scripts/install.sh, the script `make venv` and CI use, with the same exact torch pins.
# The runtime stages get the finished virtual environment only: no compiler, no wheel, no
# source tree. See docs/deploy.md.
#
# No `# syntax=` line on purpose: the Dockerfile frontend built into Docker 20.10 and later
# has all this file uses (RUN --mount), and a syntax image would have to be pulled from
# Docker Hub at every build, which fails on a host without registry access.
#
# Without PyPI (a mirror, an air-gapped host): pip's PIP_INDEX_URL and PIP_TRUSTED_HOST go
# in as build arguments, to the build stages only, e.g.
#   docker build --build-arg PIP_INDEX_URL=http://mirror:8080/simple \
#                --build-arg PIP_TRUSTED_HOST=mirror -t mae-hub:cuda .
# PYTHON_IMAGE: any glibc image with Python 3.11 as `python3`, its venv module and pip, and
# bash and useradd; scripts/container-check.sh makes one from Debian packages (debootstrap)
# where no registry can be reached, and builds and drives the image before a release.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- wheel: build the package once --------------------------------------------------------
FROM ${PYTHON_IMAGE} AS wheel
ARG PIP_INDEX_URL
ARG PIP_TRUSTED_HOST
WORKDIR /src
COPY pyproject.toml README.md ./
COPY mae_core ./mae_core
COPY service ./service
RUN python3 -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# -- venv-*: the pinned install, through the shared script --------------------------------
FROM ${PYTHON_IMAGE} AS venv-cuda
ARG PIP_INDEX_URL
ARG PIP_TRUSTED_HOST
COPY scripts/install.sh /tmp/install.sh
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    PIP_NO_CACHE_DIR=1 PYTHON=python3 bash /tmp/install.sh /opt/mae /wheels/*.whl

FROM ${PYTHON_IMAGE} AS venv-cpu
ARG PIP_INDEX_URL
ARG PIP_TRUSTED_HOST
COPY scripts/install.sh /tmp/install.sh
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    PIP_NO_CACHE_DIR=1 PYTHON=python3 TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu \
    EXTRAS=onnx bash /tmp/install.sh /opt/mae /wheels/*.whl

# -- runtime: what both targets share ------------------------------------------------------
# (TORCH_DISABLE_SHARE_RDZV_TCP_STORE: torchrun restarts in this image work; docs/training.md)
FROM ${PYTHON_IMAGE} AS runtime
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/mae mae
# The embedded hub. The default model ships in the image; mount a volume over /models to
# serve (and, with MAE_HUB_TOKENS, accept pushes of) your own.
COPY --chown=mae:mae models /models
ENV PATH=/opt/mae/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/home/mae/.cache/huggingface \
    MAE_MODELS_DIR=/models \
    MAE_MODEL=local:mae/vit-tiny-tinyimagenet \
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
VOLUME ["/models"]
USER mae
WORKDIR /home/mae
EXPOSE 8000
# /ready turns 200 once the model is loaded and warmed up; the image has no curl, so the
# check is a few lines of the venv's Python. start-period covers loading a large model.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/ready', timeout=4)"]
# SIGTERM (docker stop) drains: new requests are refused, those in flight finish within
# MAE_REQUEST_TIMEOUT_S + 5 s; give `docker stop -t` / stop_grace_period at least that.
STOPSIGNAL SIGTERM
ENTRYPOINT ["mae", "serve", "--host", "0.0.0.0", "--port", "8000"]

FROM runtime AS cpu
COPY --from=venv-cpu /opt/mae /opt/mae
ENV MAE_DEVICE=cpu

FROM runtime AS cuda
COPY --from=venv-cuda /opt/mae /opt/mae
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
