# kerasrpc on the official TensorFlow GPU image. Build: docker build -t kerasrpc .
FROM tensorflow/tensorflow:2.21.0-gpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin kerasrpc \
    && mkdir -p /var/lib/kerasrpc \
    && chown kerasrpc:kerasrpc /var/lib/kerasrpc

WORKDIR /opt/kerasrpc
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY service ./service
COPY client ./client
# The local project is installed; its pins live in pyproject.toml.
# hadolint ignore=DL3013
RUN python3 -m pip install --no-cache-dir '.[server]'

USER 10001:10001
ENV KERASRPC_LISTEN=0.0.0.0:50051 \
    KERASRPC_METRICS_ADDRESS=0.0.0.0:9464 \
    KERASRPC_STATE_DIR=/var/lib/kerasrpc \
    KERASRPC_DEVICE=0
VOLUME ["/var/lib/kerasrpc"]
EXPOSE 50051 9464

HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["kerasrpc", "--server", "127.0.0.1:50051", "health"]

ENTRYPOINT ["kerasrpc", "serve"]
