# PostgreSQL 15 with PostGIS and pg_cron, for docker-compose.yml.
FROM postgis/postgis:15-3.4
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15-cron \
    && rm -rf /var/lib/apt/lists/*
