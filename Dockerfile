# The api and worker image. PyPI's torch wheel for Linux x86-64 is the CUDA build (its CUDA runtime
# comes as nvidia-* wheels), so GPU workers need only the NVIDIA container toolkit on the host.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    SADDLE_ARTIFACTS=/artifacts
WORKDIR /app

# torch first, in its own layer: it is large and changes rarely.
RUN pip install "torch==2.13.0"
COPY pyproject.toml README.md ./
COPY api ./api
COPY worker ./worker
COPY models ./models
COPY migrations ./migrations
COPY saddle ./saddle
COPY examples ./examples
RUN pip install . && useradd --create-home --uid 1000 saddle && mkdir -p /artifacts && chown saddle /artifacts
USER saddle

EXPOSE 8000
CMD ["saddle", "api", "--host", "0.0.0.0", "--port", "8000"]
