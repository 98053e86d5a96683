# The Homewatch app image: the subscriber, the publisher, the dashboard and the admin CLI.
# One image for both app services. The base is overridable: PYTHON_IMAGE (any image
# with python3 and the venv module; scripts/offline-images.sh makes one without a
# registry). Installs from .wheelhouse/ when it holds wheels (offline), else from PyPI.
# Multi-arch: nothing here is amd64-only (docker buildx build --platform linux/arm64,...).
ARG PYTHON_IMAGE=python:3.13-slim
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/homewatch/bin:$PATH

# openssl and bash: scripts/gen-certs.sh runs in this image (the stack's init service).
RUN apt-get update \
 && apt-get install -y --no-install-recommends openssl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 homewatch \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin homewatch \
 && mkdir -p /state /history \
 && chown 10001:10001 /state /history

COPY .wheelhouse/ /tmp/wheels/
COPY pyproject.toml README.md /src/
COPY homewatch /src/homewatch
COPY publisher /src/publisher
COPY subscriber /src/subscriber
COPY dashboard /src/dashboard
RUN python3 -m venv /opt/homewatch \
 && if ls /tmp/wheels/*.whl >/dev/null 2>&1; then \
        /opt/homewatch/bin/pip install --no-index --find-links /tmp/wheels '/src[ble,server,dashboard]'; \
    else \
        /opt/homewatch/bin/pip install '/src[ble,server,dashboard]'; \
    fi \
 && rm -rf /tmp/wheels /src

COPY scripts/gen-certs.sh scripts/init-stack.sh /opt/homewatch/scripts/
COPY publisher/demo-known-devices.txt /opt/homewatch/share/demo-known-devices.txt

USER 10001:10001
WORKDIR /state
VOLUME ["/state"]
CMD ["homewatch-subscriber", "--help"]
