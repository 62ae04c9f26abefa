# syntax=docker/dockerfile:1
# One image for every Valora process (migrate, worker, scheduler, api): `docker compose build`
# builds it once; each service picks its command. Dependencies come from requirements-runtime.lock
# (`make lock`: requirements.lock's pins without the dev tools), hash-checked, at build time;
# nothing is installed when a container starts.

# --- build: a virtual environment with the locked dependencies and Valora -------------------
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/valora
WORKDIR /src
# the lock first: the dependency layer stays cached while only Valora's code changes
COPY requirements-runtime.lock ./
RUN /opt/valora/bin/pip install --require-hashes -r requirements-runtime.lock
COPY pyproject.toml README.md LICENSE ./
COPY schemas ./schemas
COPY rating ./rating
COPY invoicing ./invoicing
COPY streams ./streams
COPY valora ./valora
COPY bench ./bench
RUN /opt/valora/bin/pip install --no-deps . && /opt/valora/bin/valora --help >/dev/null

# --- runtime: the environment only, run as an unprivileged user -----------------------------
FROM python:3.11-slim-bookworm
RUN groupadd --system --gid 10001 valora \
    && useradd --system --uid 10001 --gid valora --home-dir /home/valora --create-home --shell /usr/sbin/nologin valora
COPY --from=build /opt/valora /opt/valora
ENV PATH=/opt/valora/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VALORA_STATE_DIR=/home/valora/.valora \
    VALORA_METRICS_ADDR=0.0.0.0
USER valora:valora
WORKDIR /home/valora
# 9108: metrics, /healthz and /readyz of the worker and scheduler; 8080: the API
EXPOSE 9108 8080
ENTRYPOINT ["valora"]
CMD ["--help"]
