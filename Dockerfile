# aleacc-gateway: a small runtime image, non-root, read-only-root-filesystem friendly.
# Build: docker build -t aleacc-gateway .   Smoke here: ../shared/tools/container-smoke
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY gateway ./gateway
# Versions are pinned by constraints.txt (hadolint's DL3013 cannot see a constraints file).
# hadolint ignore=DL3013
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/pip install -c constraints.txt '.[otel]' \
 && /opt/venv/bin/pip uninstall --yes pip

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="aleacc-gateway" \
      org.opencontainers.image.description="Signing reverse proxy for the Aleacc Web API"
# No .pyc writes at run time: the root filesystem may be read-only (bytecode is
# compiled at install time in the build stage); logs go straight to stdout.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/venv /opt/venv
COPY config/sidecar.toml /etc/aleacc-gateway/gateway.toml
COPY config/ /etc/aleacc-gateway/examples/
# A fixed numeric user, so Kubernetes' runAsNonRoot can verify it without a passwd entry.
USER 10001:10001
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2)"]
ENTRYPOINT ["aleacc-gateway"]
CMD ["serve", "--config", "/etc/aleacc-gateway/gateway.toml"]
