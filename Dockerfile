# syntax=docker/dockerfile:1
# One image for every role: `serve` (admission webhook), `reconcile`, `epp`, `certs`, and the CLI checks.
#   docker build -t extproc-guard:0.1.0 .
#   docker run --rm extproc-guard:0.1.0 check - < filter.yaml
# The runtime image holds no Envoy: the `envoy` extra is only for the demo and the integration tests.

# ---- builder: the project wheel, its engine compiled (docs/compiled.md), and its dependencies' wheels ----
FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A C compiler for the compiled build of the engine (mypyc turns its modules into C extensions).
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# README.md is optional here (the wildcard copies it when present); pyproject.toml names it as the readme.
COPY pyproject.toml setup.py README.m[d] ./
COPY policies ./policies
COPY webhook ./webhook
COPY certs ./certs
COPY epp ./epp
COPY kube ./kube
COPY reconciler ./reconciler
COPY cli ./cli
COPY telemetry ./telemetry
# The dependencies' wheels (and a pure wheel of the project), the project installed so that mypy can read
# the types the engine uses, then the project's wheel again, this time with the engine compiled.
RUN pip install 'setuptools>=77' wheel 'mypy>=1.10' types-pyyaml \
 && pip wheel --wheel-dir /wheels . \
 && pip install --no-index --find-links=/wheels extproc-guard \
 && rm /wheels/extproc_guard-*.whl \
 && EXTPROC_GUARD_COMPILE=1 pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && ls /wheels/extproc_guard-*-cp311-*.whl

# ---- runtime ----
FROM python:3.11-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A fixed numeric identity, so Kubernetes can verify runAsNonRoot without resolving a user name.
RUN groupadd --system --gid 65532 extproc-guard \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin extproc-guard
# The wheels are mounted from the builder, not copied, so they add no layer to the image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels extproc-guard \
 && pip check
USER 65532:65532
# 8443: admission webhook (HTTPS); 9002: EPP gRPC; 9090: EPP metrics.
EXPOSE 8443 9002 9090
ENTRYPOINT ["extproc-guard"]
CMD ["--help"]
