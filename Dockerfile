# syntax=docker/dockerfile:1
# Conveyor's runtime image: the `conveyor` command (worker, api, exporter, ...) in a virtual
# environment, run as the non-root user 10001:10001, no compilers, no source tree.
#
#   docker build -t conveyor:0.1.0 .
#   docker run --rm conveyor:0.1.0 worker conveyor.demo:app --redis-url redis://redis:6379/0
#
# Your workflows go in an image of your own built FROM this one, e.g.
#
#   FROM conveyor:0.1.0
#   USER root
#   RUN pip install --no-cache-dir my-workflows==1.2.0
#   USER 10001:10001
#
# then `conveyor worker my_workflows:app`. Only /tmp needs to be writable (the Helm chart
# mounts an emptyDir there and makes the root filesystem read-only).

# The version in pyproject.toml: it names the wheel and labels the image.
ARG CONVEYOR_VERSION=0.1.0

# Both stages use one base: the venv's python is a link to the base's interpreter.
FROM python:3.11.14-slim-bookworm AS build
ARG CONVEYOR_VERSION
# /opt/build holds the pinned build tools, in a venv that the final image never sees;
# its bin/ comes first on PATH as soon as the first RUN below has made it.
ENV PATH=/opt/build/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/build \
    && pip install pip==26.3 hatchling==1.33.0

# Only what the wheel is built from (.dockerignore keeps the context to it too).
COPY pyproject.toml README.md ./
COPY src/ src/

# Build the wheel and install it with its extras into the runtime venv, /opt/conveyor (pip
# compiles the bytecode here: the image runs with PYTHONDONTWRITEBYTECODE and a read-only
# filesystem). Its pip stays, pinned, for images built FROM this one; setuptools, which a
# venv brings along on Python 3.11, goes: nothing needs it at run time.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --no-deps --no-build-isolation --wheel-dir /opt/wheels . \
    && python -m venv /opt/conveyor \
    && pip --python /opt/conveyor/bin/python install pip==26.3 \
        "/opt/wheels/conveyor-${CONVEYOR_VERSION}-py3-none-any.whl[fast,otel]" \
    && pip --python /opt/conveyor/bin/python uninstall --yes setuptools

FROM python:3.11.14-slim-bookworm
ARG CONVEYOR_VERSION
LABEL org.opencontainers.image.title="conveyor" \
      org.opencontainers.image.description="Durable, high-throughput agentic workflows on Redis Streams" \
      org.opencontainers.image.version="${CONVEYOR_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="python:3.11.14-slim-bookworm"

# A numeric uid/gid, so that Kubernetes' runAsNonRoot can verify it without /etc/passwd.
RUN groupadd --gid 10001 conveyor \
    && useradd --uid 10001 --gid 10001 --no-log-init --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin conveyor

# Owned by root: the running user can read the venv but not change it.
COPY --from=build /opt/conveyor /opt/conveyor
ENV PATH=/opt/conveyor/bin:$PATH \
    VIRTUAL_ENV=/opt/conveyor \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

USER 10001:10001
ENTRYPOINT ["conveyor"]
CMD ["--help"]
