# The project's images, one target per role:
#   producer  the `ris` CLI, the HTTP API (`ris serve`) and Flower: no model stack, no torch.
#   worker    a Celery worker: torch, the model stack and the default model's ONNX export,
#             baked in so that containers start offline.
#   docker build --target producer -t ris .
#   docker build --target worker -t ris-worker .
#   docker build --target worker -t ris-worker-gpu --build-arg EXTRA=gpu \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu130 .
# (onnxruntime-gpu 1.31 is built for CUDA 13 and cuDNN 9: the torch build must match, cu130.)
# BASE_IMAGE and TORCH_INDEX may point at internal mirrors; the base must put python and pip on PATH.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS source
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 RIS_MODEL_CACHE_DIR=/opt/ris/models
WORKDIR /app
COPY pyproject.toml README.md requirements.lock ./
COPY ris ris
COPY common common
COPY workers workers
COPY producer producer
RUN useradd --system --uid 10001 --home-dir /app ris && mkdir -p /data && chown ris /data

FROM source AS producer
RUN pip install -c requirements.lock ".[api,flower,s3]"
USER ris
ENTRYPOINT ["ris"]
CMD ["serve"]

FROM source AS worker
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# worker (onnxruntime) or gpu (onnxruntime-gpu)
ARG EXTRA=worker
# torch first, from the index that matches the hardware (the CPU one is a fraction of the size).
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
RUN pip install -c requirements.lock ".[${EXTRA},s3]"
# The model's ONNX export, baked in: RIS_MODEL at build time picks it (--build-arg MODEL=...).
ARG MODEL=efficientnet-lite0
ENV RIS_MODEL=${MODEL}
RUN python -c "from ris.common.models import get_spec; from ris.workers.export import export_onnx; \
from ris.common.settings import Settings; s = Settings(); \
print(export_onnx(get_spec(s.model), s.model_cache_dir))"
USER ris
ENTRYPOINT ["ris"]
CMD ["worker", "--queue", "cpu"]
