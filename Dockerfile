# reranker-nvidia: gRPC (50051) and HTTP (8080) in one process.
FROM python:3.12-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY reranker_nvidia ./reranker_nvidia
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir .

FROM python:3.12-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RERANKER_HOST=0.0.0.0 \
    RERANKER_HTTP_PORT=8080 \
    RERANKER_GRPC_PORT=50051
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin reranker
COPY --from=build /opt/venv /opt/venv
USER reranker
EXPOSE 8080 50051
# Probes GET /.well-known/ready on RERANKER_HTTP_PORT: healthy once both servers serve.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["reranker-nvidia", "healthcheck"]
CMD ["reranker-nvidia", "serve"]
