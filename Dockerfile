# One image for every role: `eventcore web`, `project`, `worker`, ... (see
# compose.yaml). Build: docker build -t eventcore .
#
# torch comes first, in a layer of its own: it is by far the largest and
# changes least. The CPU build by default; for CUDA workers build with
# --build-arg TORCH_INDEX=https://pypi.org/simple (PyPI's Linux wheel is the
# CUDA one) and run them with the NVIDIA container toolkit.
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

WORKDIR /src
# The opencv-python-headless and torch wheels bundle their native libraries:
# python:3.11-slim needs no system packages besides.
COPY pyproject.toml README.md ./
COPY eventcore ./eventcore
COPY workers ./workers
COPY projections ./projections
COPY web ./web
RUN pip install . && rm -rf /src

RUN useradd --create-home --uid 10001 eventcore \
    && mkdir -p /app/models \
    && chown -R eventcore:eventcore /app
USER eventcore
# Relative paths in the settings resolve here: models.root ("models": mount
# your TorchScript files at /app/models) and the embedded Redis's data_dir,
# used only when REDIS_URL is unset.
WORKDIR /app

EXPOSE 8000
# No HEALTHCHECK here: the image also runs the projector and the workers,
# which serve no HTTP. compose.yaml gives the web service its check on
# /healthz.
ENTRYPOINT ["eventcore"]
CMD ["--help"]
