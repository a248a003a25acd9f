# syntax=docker/dockerfile:1
# bot4 with its bundled plugins, running a paper session that serves
# Prometheus metrics on :9464. Used by docker-compose.yml; on its own:
#   docker build -t bot4 . && docker run --rm --init -p 127.0.0.1:9464:9464 bot4
#
# Build arguments:
#   PYTHON_VERSION=3.11   bot4 supports 3.11, 3.12 and 3.13
#   WITH_CCXT=0           1 adds the ccxt exchange plugin (ccxt: ~117 MB installed)
# Installs are pinned by constraints.txt (tools/constraints.py writes it).
ARG PYTHON_VERSION=3.11

# durable-rules ships only a source distribution (a C++ extension), so wheels
# are built in a stage with a compiler and the runtime image stays slim.
FROM python:${PYTHON_VERSION}-slim AS build
ARG WITH_CCXT=0
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY bot4 ./bot4
COPY rules ./rules
COPY plugins ./plugins
# The engine is built as dev.py builds it: its C code calls PyEval_CallObject,
# which Python 3.13 removed, so from 3.13 on that name is defined as its
# replacement (in CPPFLAGS: durable-rules' setup.py overwrites CFLAGS).
# Every bundled plugin (plugins/*/*/) is built except ccxt, unless asked for.
RUN if python -c 'import sys; sys.exit(sys.version_info < (3, 13))'; then \
        export CPPFLAGS="-DPyEval_CallObject=PyObject_CallObject"; \
    fi \
    && plugins=$(for p in plugins/*/*/; do \
           [ "$p" = "plugins/exchanges/ccxt/" ] && [ "$WITH_CCXT" != "1" ] && continue; \
           echo "$p"; \
       done) \
    && pip wheel --no-cache-dir --no-binary durable-rules -c constraints.txt \
        --wheel-dir /wheels . $plugins

FROM python:${PYTHON_VERSION}-slim
# The wheels are bind-mounted for the install, never copied: no layer keeps them.
# The import check fails the build, not the first session, if the engine is broken.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels /wheels/*.whl \
    && python -c "import durable_rules_engine" \
    && useradd --create-home --uid 10001 bot4 \
    && mkdir -p /data \
    && chown bot4 /data
USER bot4
WORKDIR /data
EXPOSE 9464
# bot4 run stops cleanly on SIGTERM (journal flushed, summary written); run
# it under an init (`docker run --init`, compose `init: true`) so the signal
# reaches it and zombies are reaped.
STOPSIGNAL SIGTERM
# A paper session on the bundled two-day sample at 60x real time (a minute of
# market a second): the averages warm up in ten seconds, a fill comes every
# few seconds, and after 48 minutes the data ends and the process exits;
# compose restarts it (counters restart from zero, which Prometheus' rate()
# handles). --no-chart: the server image has no matplotlib.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/metrics', timeout=4)"]
CMD ["bot4", "run", "--metrics-port", "9464", "--metrics-addr", "0.0.0.0", "--speed", "60", "--out", "/data/out", "--no-chart"]
