#!/usr/bin/env bash
# The main job on embedded defaults, as the backup strategy's disaster: start a throwaway
# PostgreSQL, stream its WAL with lifeboat into a local file:// archive, take a base backup,
# let pgbench write, commit an important table, note the time T, and DROP it one second
# later. Then: `status`, the restore plan for T, and a restore drill to T that starts
# PostgreSQL on the restored copy and checks that the table and its 1000 rows are back.
# Finally verify the archive (CRC, continuity, full decryption) and fetch a segment back the
# way PostgreSQL's restore_command would, compared with the server's own copy.
#
#   scripts/demo.sh            # uses PostgreSQL 15 (LIFEBOAT_DEMO_MAJOR to change)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
MAJOR="${LIFEBOAT_DEMO_MAJOR:-15}"
say() { printf '\n== %s\n' "$*"; }

need_cmd age-keygen age
BIN=$(pg_bin_dir "$MAJOR")

say "building lifeboat (release)"
cargo build --release --quiet
LB="$PWD/target/release/lifeboat"

WORK=$(mktemp -d /tmp/lifeboat-demo.XXXXXX)
chmod 755 "$WORK"
AS=()
if [[ $(id -u) == 0 ]]; then AS=(runuser -u lifeboat-test --); chown lifeboat-test "$WORK"; fi
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cleanup() {
  "${AS[@]}" "$BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  [[ -n "${STREAM_PID:-}" ]] && kill "$STREAM_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

say "starting a throwaway PostgreSQL $MAJOR on 127.0.0.1:$PORT"
"${AS[@]}" "$BIN/initdb" -D "$WORK/data" -U postgres --auth=trust --no-locale -E UTF8 -N >/dev/null
cat >> "$WORK/data/postgresql.conf" <<EOF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
wal_level = replica
max_wal_senders = 5
shared_buffers = 64MB
EOF
"${AS[@]}" "$BIN/pg_ctl" -D "$WORK/data" -l "$WORK/data/server.log" -w start >/dev/null
PSQL=("$BIN/psql" -X -At -h "$WORK" -p "$PORT" -U postgres -d postgres)
"${PSQL[@]}" -c "CREATE ROLE lifeboat LOGIN REPLICATION" >/dev/null

say "making an age key pair (on a real host, only the public key lives next to the database)"
age-keygen -o "$WORK/identity.txt" 2>/dev/null
RECIPIENT=$(age-keygen -y "$WORK/identity.txt")
cat > "$WORK/lifeboat.toml" <<EOF
[postgres]
conninfo = "host=127.0.0.1 port=$PORT user=lifeboat sslmode=disable"
slot = "lifeboat"
create_slot = true

[encryption]
recipients = ["$RECIPIENT"]

[wal]
max_delay = "1s"
spool_dir = "$WORK/spool"

[[storage]]
name = "local"
url = "file://$WORK/archive"
EOF
cat "$WORK/lifeboat.toml"

LBC=("$LB" --config "$WORK/lifeboat.toml" --identity "$WORK/identity.txt")
say "lifeboat stream (the replication-slot consumer) starts"
"$LB" --config "$WORK/lifeboat.toml" stream 2>"$WORK/stream.log" &
STREAM_PID=$!
sleep 1
"$BIN/pgbench" -h "$WORK" -p "$PORT" -U postgres -i -q -s 5 postgres >/dev/null 2>&1

say "lifeboat backup --fast (BASE_BACKUP over the replication protocol, sealed part by part)"
"$LB" --config "$WORK/lifeboat.toml" -q backup --fast --label demo

say "pgbench writes for 10 s; then the important table, the time T, and the mistake"
"$BIN/pgbench" -h "$WORK" -p "$PORT" -U postgres -n -T 10 -c 4 -j 2 postgres 2>/dev/null | grep -E "^(tps|number of transactions actually)" || true
"${PSQL[@]}" -c "CREATE TABLE important AS SELECT g AS id, now() AS at FROM generate_series(1, 1000) g" >/dev/null
T=$("${PSQL[@]}" -c "SELECT now()")
echo "T = $T: 1000 important rows committed"
sleep 1.2
"${PSQL[@]}" -c "DROP TABLE important" >/dev/null
echo "one second later: DROP TABLE important"
COMMIT_LSN=$("${PSQL[@]}" -c "SELECT pg_current_wal_lsn()")
echo "last commit at $COMMIT_LSN; waiting for the slot to confirm it is archived (wal.max_delay = 1s)"
for _ in $(seq 1 100); do
  R=$("${PSQL[@]}" -c "SELECT restart_lsn >= '$COMMIT_LSN' FROM pg_replication_slots WHERE slot_name = 'lifeboat'")
  [[ "$R" == t ]] && break
  sleep 0.1
done
"${PSQL[@]}" -c "SELECT 'slot restart_lsn ' || restart_lsn || ', server at ' || pg_current_wal_lsn() FROM pg_replication_slots WHERE slot_name = 'lifeboat'"

say "lifeboat status (exit 0 healthy, 1 degraded, 2 failing)"
"$LB" --config "$WORK/lifeboat.toml" status || echo "(exit $?: no drill has been recorded yet)"

say "lifeboat restore --dry-run --target-time T: the plan"
"${LBC[@]}" restore --dry-run --pgdata "$WORK/restored" --target-time "$T" --pg-bin "$BIN"

say "lifeboat drill --target T: restore to T in a scratch directory, start PostgreSQL, check"
echo "SELECT count(*) = 1000 FROM important" > "$WORK/check.sql"
RUN_AS=()
if [[ $(id -u) == 0 ]]; then RUN_AS=(--run-as lifeboat-test); fi
"${LBC[@]}" drill --backup latest --target "$T" --check-sql "$WORK/check.sql" --pg-bin "$BIN" \
  --scratch-dir "$WORK" "${RUN_AS[@]}"
kill -TERM "$STREAM_PID"; wait "$STREAM_PID" || true; STREAM_PID=

say "the archive"
find "$WORK/archive" -type f | sed "s|$WORK/archive/||" | sort | head -20
echo "... $(find "$WORK/archive" -type f | wc -l) objects, $(du -sh "$WORK/archive" | cut -f1) stored for $("${PSQL[@]}" -c "SELECT pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0'))") of WAL written"

say "lifeboat verify --full (CRC of every object, WAL continuity, decryption)"
"$LB" --config "$WORK/lifeboat.toml" --identity "$WORK/identity.txt" verify --full

say "lifeboat wal-fetch (the restore_command) of a complete segment, compared with the server's copy"
SEG=$(find "$WORK/archive/wal" -name '*.seg' | sort | tail -1 | xargs basename | cut -c1-24)
"$LB" --config "$WORK/lifeboat.toml" --identity "$WORK/identity.txt" wal-fetch "$SEG" "$WORK/$SEG"
if cmp -s "$WORK/$SEG" "$WORK/data/pg_wal/$SEG"; then
  echo "$SEG: byte-identical to pg_wal/$SEG"
else
  echo "$SEG: DIFFERS from the server's copy"; exit 1
fi
say "lifeboat list"
"$LB" --config "$WORK/lifeboat.toml" list

say "done: the table dropped after T came back in the drill; every commit up to $COMMIT_LSN is archived, encrypted and verified"

# The strategy's SQLite services: the same job for a WAL-mode SQLite database.
if command -v sqlite3 >/dev/null; then
  LIFEBOAT_DEMO_BIN="$LB" bash scripts/demo-sqlite.sh
else
  echo "(the SQLite part needs sqlite3: apt-get install sqlite3, then scripts/demo-sqlite.sh)"
fi
