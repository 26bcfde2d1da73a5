# vqp HTTP service (`vqp serve`): CPU by default; for NVIDIA GPUs build with a CUDA wheel index, e.g.
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t vqp:cuda .
# Models are not baked in: mount a folder of them (e.g. ../shared/models) at /models.
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    YOLO_OFFLINE=true YOLO_VERBOSE=false YOLO_CONFIG_DIR=/tmp/ultralytics \
    VQP_MODEL_DIR=/models VQP_JOBS_DIR=/data/jobs

# ffmpeg for the CLI tools; libgl1/libglib2.0-0 for OpenCV, which Ultralytics imports
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

# torch first, pinned as in pyproject.toml, from the CPU (default) or CUDA wheel index: a layer that rarely changes
RUN pip install --index-url "$TORCH_INDEX" torch==2.14.1 torchvision==0.29.1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY vqp ./vqp
RUN pip install --extra-index-url "$TORCH_INDEX" . \
    && useradd --create-home --uid 10001 vqp \
    && mkdir -p /data/jobs /models && chown -R vqp /data

USER vqp
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["vqp", "serve", "--host", "0.0.0.0", "--port", "8000"]
