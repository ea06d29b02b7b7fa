# The adaptercar sidecar image.
#   docker build -t adaptercar:0.1.0 .
#   docker run -v "$PWD/conf:/etc/adaptercar:ro" -p 50051:50051 -p 8080:8080 adaptercar:0.1.0
# /etc/adaptercar holds adaptercar.yaml and whatever it names (protos/, mappings/, WSDLs):
# mount it; the image carries no configuration. See docs/deploy.md.

# --- build: a wheel of this project, then a venv with it and its runtime dependencies only ----
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY adaptercar ./adaptercar
COPY legacy_fixtures ./legacy_fixtures
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/adaptercar \
 && /opt/adaptercar/bin/pip install /wheels/adaptercar-*.whl

# --- runtime: the venv, no sources, no build tools, no test extras ----------------------------
FROM python:3.11-slim
ENV PATH=/opt/adaptercar/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 adaptercar \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin adaptercar \
 && mkdir -p /etc/adaptercar
COPY --from=build /opt/adaptercar /opt/adaptercar
# numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd
USER 10001:10001
WORKDIR /tmp
# gRPC front, JSON/HTTP front, admin (the admin listens on loopback unless the config says not)
EXPOSE 50051 8080 9901
# /healthz answers while the supervisor runs; probed from inside the container, so it works
# with the default admin.listen 127.0.0.1:9901. urlopen raises (exit 1) on a refusal or non-2xx.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9901/healthz', timeout=3)"]
ENTRYPOINT ["adaptercar", "run", "-c", "/etc/adaptercar/adaptercar.yaml"]
