# deepseek-exporter container image: Prometheus exporter + metering proxy for DeepSeek accounts.
#
#   docker build -t deepseek-exporter .
#   docker run -p 9402:9402 -p 8402:8402 deepseek-exporter --demo                 # no key needed
#   docker run -p 9402:9402 -p 8402:8402 -e DEEPSEEK_API_KEY=sk-... deepseek-exporter
#   docker run -p 9402:9402 -p 8402:8402 -v "$PWD/deepseek.yml:/etc/deepseek-exporter/deepseek.yml:ro" \
#     deepseek-exporter --config.file=/etc/deepseek-exporter/deepseek.yml
#
# Keys come from the environment (DEEPSEEK_API_KEY, or the api_key_env names of the config) or
# from mounted files (api_key_file). The image runs as uid 10001 and works on a read-only root
# filesystem: the one thing it writes, the balance history (--storage.path, default data/ in the
# working directory), lives in the volume /var/lib/deepseek-exporter. Tested without an engine
# by tests/test_deploy.py, which runs the build stage's RUN steps into a fresh virtual
# environment and then the ENTRYPOINT and HEALTHCHECK.

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: install the package and its dependencies into a virtual environment -----------
FROM ${PYTHON_IMAGE} AS build
ENV VIRTUAL_ENV=/opt/venv \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv "$VIRTUAL_ENV"
WORKDIR /src
# Only what the package build needs (see .dockerignore): pyproject.toml reads README.md.
COPY pyproject.toml README.md ./
COPY exporter ./exporter
# The runbooks served at /runbooks/ (in a checkout, exporter/data/runbooks links here).
COPY docs/runbooks ./exporter/data/runbooks
RUN "$VIRTUAL_ENV/bin/pip" install . \
 && "$VIRTUAL_ENV/bin/deepseek-exporter" --version

# ---- runtime: the same base, the venv, a non-root user ---------------------------------------
FROM ${PYTHON_IMAGE}
ENV VIRTUAL_ENV=/opt/venv
ENV PATH="$VIRTUAL_ENV/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DEEPSEEK_EXPORTER_HEALTHCHECK_URL=http://127.0.0.1:9402/-/healthy
RUN groupadd --system --gid 10001 exporter \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin exporter \
 && mkdir -p /var/lib/deepseek-exporter \
 && chown 10001:10001 /var/lib/deepseek-exporter
COPY --from=build /opt/venv /opt/venv
# The balance history survives restarts here (data/history.db); a proxy-only replica
# (poll_interval: 0s) writes nothing.
WORKDIR /var/lib/deepseek-exporter
VOLUME ["/var/lib/deepseek-exporter"]
USER 10001:10001
# 9402: /metrics, landing page, /-/healthy, /-/ready, /-/reload.  8402: the metering proxy.
EXPOSE 9402 8402
# python:3.11-slim has no curl or wget: Python itself asks /-/healthy. If you move the metrics
# listener, set DEEPSEEK_EXPORTER_HEALTHCHECK_URL; with TLS or basic auth on it (--web.config.file)
# override this HEALTHCHECK (or disable it) in your compose file or orchestrator.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; url = os.environ.get('DEEPSEEK_EXPORTER_HEALTHCHECK_URL', 'http://127.0.0.1:9402/-/healthy'); sys.exit(0 if urllib.request.urlopen(url, timeout=4).status == 200 else 1)"]
ENTRYPOINT ["deepseek-exporter"]
