#!/bin/sh
# The replication role lifeboat connects as, and the pg_hba lines it needs.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<'SQL'
CREATE ROLE lifeboat WITH LOGIN REPLICATION PASSWORD 'lifeboat-demo-password';
GRANT pg_read_all_settings TO lifeboat;
SQL
cat >> "$PGDATA/pg_hba.conf" <<'HBA'
host replication lifeboat all scram-sha-256
host postgres    lifeboat all scram-sha-256
HBA
