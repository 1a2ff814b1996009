# The project image: workers, producer CLI, Flower and the HTTP API. The default model is
# exported to ONNX at build time, so containers start offline.
#   CPU:  docker build -t ris .
#   GPU:  docker build -t ris-gpu --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu130 \
#           --build-arg ONNXRUNTIME=onnxruntime-gpu==1.31.1 .
# (onnxruntime-gpu 1.31 is built for CUDA 13 and cuDNN 9: the torch build must match, cu130.)
# BASE_IMAGE and TORCH_INDEX may point at internal mirrors; the base must put python and pip on PATH.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG ONNXRUNTIME=onnxruntime
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 RIS_MODEL_CACHE_DIR=/opt/ris/models

# torch first, from the index that matches the hardware (the CPU one is a fraction of the size).
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

WORKDIR /app
COPY pyproject.toml README.md requirements.lock ./
COPY common common
COPY workers workers
COPY producer producer
RUN pip install -c requirements.lock ".[s3,api]" \
    && if [ "${ONNXRUNTIME}" != onnxruntime ]; then \
         pip uninstall -y onnxruntime && pip install -c requirements.lock "${ONNXRUNTIME}"; \
       fi

# Bake the default model's ONNX export into the image.
RUN python -c "from ris.common.models import export_onnx, get_spec; \
from ris.common.settings import get_settings; s = get_settings(); \
print(export_onnx(get_spec(s.model), s.model_cache_dir))"

RUN useradd --system --uid 10001 --home-dir /app ris && mkdir -p /data && chown ris /data
USER ris
ENTRYPOINT ["ris"]
CMD ["worker", "--queue", "cpu"]
