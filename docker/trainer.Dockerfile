# GPU trainer image: a CUDA runtime base, CUDA torch, depthcurate's trainer (`python -m trainer fit|evaluate|predict`).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ffmpeg \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PREFECT_SERVER_ANALYTICS_ENABLED=false HF_HUB_OFFLINE=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pipeline pipeline
COPY flows flows
COPY trainer trainer
# PyPI's Linux torch wheels are CUDA builds that bring their own CUDA libraries; set TORCH_INDEX_URL (e.g. a
# download.pytorch.org/whl/cuXXX index) for a build that matches an older driver. Pins match scripts/setup.sh.
ARG TORCH_INDEX_URL=
RUN pip install --no-cache-dir "torch==2.13.0" "torchvision==0.28.0" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} \
    && pip install --no-cache-dir -e .
COPY manifests manifests
COPY configs configs
# uid 1000 like the worker image, so both write the shared data volume (Ubuntu images ship a uid-1000 "ubuntu").
RUN (userdel --remove ubuntu 2>/dev/null || true) && useradd --create-home --uid 1000 depthcurate \
    && mkdir -p /app/data && chown depthcurate:depthcurate /app /app/data
USER depthcurate
ENTRYPOINT ["python", "-m", "trainer"]
CMD ["--help"]
