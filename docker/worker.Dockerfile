# Pipeline worker: Python, ffmpeg and depthcurate, running a Prefect process worker.
FROM python:3.11-slim-bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pipeline pipeline
COPY flows flows
COPY trainer trainer
# CPU torch from the PyTorch CPU index keeps the image free of CUDA libraries.
RUN pip install --no-cache-dir "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu \
    && pip install --no-cache-dir -e .
COPY manifests manifests
COPY configs configs
COPY prefect.yaml ./
ENV PREFECT_SERVER_ANALYTICS_ENABLED=false HF_HUB_OFFLINE=1
CMD ["sh", "-c", "prefect work-pool create depthcurate --type process || true; exec prefect worker start --pool depthcurate"]
