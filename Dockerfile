# vqp HTTP service (`vqp serve`): CPU by default; for NVIDIA GPUs build with a CUDA wheel index, e.g.
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu130 -t vqp:cuda .
# Models are not baked in: mount a folder of them read-only at /models (the service refuses to start
# without one, VQP_REQUIRE_MODEL=1). Jobs live in /data: a bind-mounted /data must be writable by
# uid 10001 (chown 10001 it, or run with --user "$(id -u)").
# Layers, rarely changing first: the venv and user, locked dependencies, torch, then vqp itself, so a
# source edit rebuilds only the last layer. Dependencies: docker/requirements.lock (sh docker/lock.sh).
FROM python:3.11-slim

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    YOLO_OFFLINE=true YOLO_VERBOSE=false YOLO_CONFIG_DIR=/tmp/ultralytics \
    VQP_MODEL_DIR=/models VQP_JOBS_DIR=/data/jobs VQP_REQUIRE_MODEL=1

# no system packages: PyAV's wheel carries its own FFmpeg libraries (vqp runs no ffmpeg command),
# and OpenCV is the headless build, so neither ffmpeg nor libGL comes from apt
RUN python -m venv /opt/venv \
    && useradd --create-home --uid 10001 vqp \
    && mkdir -p /data/jobs /models && chown -R vqp /data

# every dependency but torch, pinned; --no-deps because the lock swaps in opencv-python-headless
# for the opencv-python that Ultralytics names
COPY docker/requirements.lock /tmp/requirements.lock
RUN pip install --no-deps -r /tmp/requirements.lock

# torch and torchvision, pinned as in pyproject.toml, from the CPU (default) or CUDA index alone;
# their other dependencies are already installed from the lock (a CUDA index adds its nvidia-* libraries)
COPY docker/torch.txt /tmp/torch.txt
RUN pip install --index-url "$TORCH_INDEX" -r /tmp/torch.txt

WORKDIR /app
COPY pyproject.toml README.md ./
COPY vqp ./vqp
RUN pip install --no-deps --no-build-isolation . && rm -rf build *.egg-info

USER vqp
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["vqp", "serve", "--host", "0.0.0.0", "--port", "8000"]
