# syntax=docker/dockerfile:1
# b2-zip-watcher: build a virtualenv in one stage, run it from a slim, non-root second stage.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY watcher ./watcher
RUN python -m venv /opt/b2-zip-watcher \
    && /opt/b2-zip-watcher/bin/pip install --no-compile . \
    && find /opt/b2-zip-watcher -name '__pycache__' -prune -exec rm -rf {} +

FROM python:3.11-slim
ENV PATH=/opt/b2-zip-watcher/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin watcher
COPY --from=build /opt/b2-zip-watcher /opt/b2-zip-watcher
# Listens on all interfaces inside the container; secrets come from the environment (-e / --env-file).
COPY docker/config.yaml /etc/b2-zip-watcher/config.yaml
USER watcher
WORKDIR /tmp
EXPOSE 8000
STOPSIGNAL SIGTERM
# The probe follows PORT, as the listener does. `docker stop` waits only 10 s before SIGKILL while
# running jobs get shutdown_grace_seconds (30): stop with `docker stop -t 35` (compose:
# stop_grace_period: 35s) so they can finish.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os,sys,urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=4).status == 200 else 1)"]
CMD ["b2-zip-watcher", "run", "--config", "/etc/b2-zip-watcher/config.yaml"]
