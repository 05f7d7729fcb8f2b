# Pipeline image: Python, ffmpeg and depthcurate. The compose file runs it twice: as the Prefect server
# (PostgreSQL-backed) and as a process worker, so server and client are always the same Prefect release.
FROM python:3.11-slim-bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 1000 depthcurate
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pipeline pipeline
COPY flows flows
COPY trainer trainer
# CPU torch and torchvision from the PyTorch CPU index keep the image free of CUDA libraries; the pins match
# scripts/setup.sh, and `pip install .` then finds them satisfied (prefect<3.9, fastapi<0.151 from pyproject).
RUN pip install --no-cache-dir "torch==2.13.0" "torchvision==0.28.0" --index-url https://download.pytorch.org/whl/cpu \
    && pip install --no-cache-dir -e .
COPY manifests manifests
COPY configs configs
COPY prefect.yaml ./
RUN mkdir -p /app/data && chown depthcurate:depthcurate /app /app/data
USER depthcurate
ENV PREFECT_SERVER_ANALYTICS_ENABLED=false HF_HUB_OFFLINE=1 \
    PREFECT_HOME=/home/depthcurate/.prefect \
    PREFECT_SERVER_UI_STATIC_DIRECTORY=/home/depthcurate/.prefect/ui
# Register the deployments from /app (their pull step points workers at the directory `prefect deploy` ran in),
# then take runs from the `depthcurate` process pool. Stop with SIGINT: Prefect workers ignore SIGTERM.
STOPSIGNAL SIGINT
CMD ["sh", "-c", "prefect work-pool create depthcurate --type process || true; prefect --no-prompt deploy --all && exec prefect worker start --pool depthcurate"]
