# GPU trainer image (the trainer itself arrives with a later issue): CUDA torch on a CUDA runtime base.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-pip ffmpeg \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PREFECT_SERVER_ANALYTICS_ENABLED=false HF_HUB_OFFLINE=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pipeline pipeline
COPY flows flows
COPY trainer trainer
RUN pip install --no-cache-dir "torch==2.13.0" "torchvision==0.28.0" && pip install --no-cache-dir -e .
COPY manifests manifests
COPY configs configs
CMD ["python", "-m", "trainer"]
