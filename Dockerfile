# seatd service image. Configuration comes from the environment (see docker-compose.yml);
# SEATD_JWT_SECRET must be provided by the deployer: the image has no default secret and no
# development authentication.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md init.sql ./
COPY seatd ./seatd
COPY protocol ./protocol
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PORT=8080
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin seatd
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER seatd
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8080') + '/healthz', timeout=3)" || exit 1
CMD ["seatd", "serve"]
