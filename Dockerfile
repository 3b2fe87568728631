# seatd service image. Configuration comes from the environment (see docker-compose.yml);
# SEATD_JWT_SECRET must be provided by the deployer: the image has no default secret and no
# development authentication.
#
# Two stages: the first installs seatd and its dependencies into a virtualenv (every dependency
# ships a prebuilt wheel, so no compiler is needed), the second copies only that virtualenv onto
# a clean slim base: no sources, build files or caches. It runs as an unprivileged user.

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md init.sql ./
COPY seatd ./seatd
COPY protocol ./protocol
# A venv without pip of its own, filled by the base image's pip: nothing but seatd and its
# dependencies ends up in /opt/seatd.
RUN python -m venv --without-pip /opt/seatd \
    && pip --python /opt/seatd/bin/python install --no-cache-dir .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/seatd/bin:$PATH \
    PORT=8080
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin seatd
COPY --from=build /opt/seatd /opt/seatd
USER seatd
EXPOSE 8080
# /healthz: the process is alive (readiness, /readyz, is the load balancer's check).
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8080') + '/healthz', timeout=3)"]
# Exec form: seatd is PID 1 and gets SIGTERM itself, so `docker stop` drains it gracefully.
CMD ["seatd", "serve"]
