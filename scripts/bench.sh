#!/usr/bin/env bash
# Benchmarks, run side by side with the peers named in the issues; prints ratios.
#
#   scripts/bench.sh stream     # lifeboat stream --endpos vs pg_receivewal, same WAL range
#   scripts/bench.sh backup     # lifeboat backup vs pg_basebackup vs pgbackrest, same cluster
#   scripts/bench.sh stream-s3  # lifeboat stream to one file:// store vs to two S3 servers (loopback)
#   scripts/bench.sh backup-s3  # lifeboat backup to one file:// store vs to two S3 servers (loopback)
#   scripts/bench.sh restore    # lifeboat restore vs pgbackrest restore, same dataset; WAL replay
#                               # of ~1 GiB through wal-fetch with and without prefetch
#   scripts/bench.sh dump       # lifeboat dump vs pg_dump -Fc -Z0 | zstd -3 | age, same database;
#                               # 3 alternating rounds, median ratio, peak RSS
#   scripts/bench.sh sqlite     # lifeboat sqlite snapshot vs sqlite3 .backup | zstd | age under a
#                               # writer (scripts/bench-sqlite.sh; needs no PostgreSQL)
#   scripts/bench.sh incremental # (LIFEBOAT_BENCH_MAJOR >= 17) a full backup, then 6 incremental
#                               # ones each after changing about 2% of the blocks: the first
#                               # incremental's time and bytes vs the full's; then, cold caches,
#                               # alternating: restore of full+6 vs restore of one full backup of
#                               # the same cluster vs copy + pg_combinebackup of the same chain
#                               # taken by pg_basebackup (plain); medians, peak RSS
#   scripts/bench.sh prune      # prune over a synthetic file:// archive of 7 years of daily
#                               # backups and ~1 million WAL objects: plan, delete, plan again
#
# Env: LIFEBOAT_BENCH_MAJOR (default 15), LIFEBOAT_BENCH_WAL_CONF (extra [wal] lines), LIFEBOAT_BENCH_WAL_MB (default 1536),
#      LIFEBOAT_BENCH_ROUNDS (default 2, alternating), LIFEBOAT_BENCH_DIR (default /tmp),
#      LIFEBOAT_BENCH_KEEP (set: keep the work directory, for profiling),
#      LIFEBOAT_BENCH_AB (stream, restore: another lifeboat binary, e.g. an older build, timed
#      in the same rounds on the same data: an A/B of two builds on one quiet machine),
#      LIFEBOAT_BENCH_PGBACKREST (the pgbackrest binary; default: Debian's, installed if
#      missing. Block incremental and PostgreSQL 17 need pgBackRest 2.46 or later, e.g. the
#      binary of Debian trixie's pgbackrest package, which runs on bookworm).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ "${1:-}" == sqlite ]] && exec bash scripts/bench-sqlite.sh
source scripts/lib.sh
WHAT="${1:-stream}"
MAJOR="${LIFEBOAT_BENCH_MAJOR:-15}"
WAL_MB="${LIFEBOAT_BENCH_WAL_MB:-1536}"
ROUNDS="${LIFEBOAT_BENCH_ROUNDS:-2}"

[[ -x /usr/bin/time ]] || need_cmd /usr/bin/time time
need_cmd age-keygen age
BIN=$(pg_bin_dir "$MAJOR")
cargo build --release --quiet
LB="$PWD/target/release/lifeboat"

WORK=$(mktemp -d "${LIFEBOAT_BENCH_DIR:-/tmp}/lifeboat-bench.XXXXXX")
chmod 755 "$WORK"
AS=()
if [[ $(id -u) == 0 ]]; then AS=(runuser -u lifeboat-test --); chown lifeboat-test "$WORK"; fi
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
S3_PIDS=()
cleanup() {
  [[ ${#S3_PIDS[@]} -gt 0 ]] && { kill "${S3_PIDS[@]}" 2>/dev/null || true; }
  "${AS[@]}" "$BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  if [[ -n "${LIFEBOAT_BENCH_KEEP:-}" ]]; then echo "kept $WORK (cluster stopped)" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

"${AS[@]}" "$BIN/initdb" -D "$WORK/data" -U postgres --auth=trust --no-locale -E UTF8 -N >/dev/null
cat >> "$WORK/data/postgresql.conf" <<EOF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 20
max_wal_size = 8GB
shared_buffers = 256MB
EOF
"${AS[@]}" "$BIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w start >/dev/null
PSQL=("$BIN/psql" -X -At -h "$WORK" -p "$PORT" -U postgres -d postgres)

# Create the slots named in $@, then ~WAL_MB of WAL; sets END and MB.
gen_wal() {
  for s in "$@"; do "${PSQL[@]}" -c "SELECT pg_create_physical_replication_slot('$s', true)" >/dev/null; done
  local start
  start=$("${PSQL[@]}" -c "SELECT pg_current_wal_lsn()")
  echo "generating ~${WAL_MB} MiB of WAL (pgbench tables plus random-ish text) from $start ..."
  local rows=$((WAL_MB * 1024 * 1024 / 160))
  "${PSQL[@]}" -c "CREATE TABLE filler AS SELECT g AS id, md5(g::text) || repeat(substr(md5((g*7)::text), 1, 16), 3) AS t FROM generate_series(1, $rows) g" >/dev/null
  "${PSQL[@]}" -c "SELECT pg_switch_wal()" >/dev/null
  # Let the checkpoint write the generated data out before timing anything.
  "${PSQL[@]}" -c "CHECKPOINT" >/dev/null; sync
  local end
  end=$("${PSQL[@]}" -c "SELECT pg_current_wal_lsn()")
  local mb
  mb=$("${PSQL[@]}" -c "SELECT round(pg_wal_lsn_diff('$end', '$start') / 1048576)")
  echo "range $start .. $end: $mb MiB of WAL"
  END="$end"; MB="$mb"
}

bench_stream() {
  local slots=()
  for i in $(seq 1 "$ROUNDS"); do
    slots+=("rw$i" "lb$i")
    [[ -n "${LIFEBOAT_BENCH_AB:-}" ]] && slots+=("ab$i")
  done
  gen_wal "${slots[@]}"
  local end="$END" mb="$MB"
  age-keygen -o "$WORK/id.txt" 2>/dev/null
  local rcpt
  rcpt=$(age-keygen -y "$WORK/id.txt")

  local rw_t=() rw_m=() lb_t=() lb_m=() ab_t=()
  for i in $(seq 1 "$ROUNDS"); do
    rm -rf "$WORK/rw"; mkdir -p "$WORK/rw"; sync
    /usr/bin/time -f "%e %M" -o "$WORK/t" "$BIN/pg_receivewal" -D "$WORK/rw" -h 127.0.0.1 -p "$PORT" -U postgres \
      --slot "rw$i" --endpos "$end" -n
    read -r t m < "$WORK/t"; rw_t+=("$t"); rw_m+=("$m")
    echo "round $i pg_receivewal (fsync, uncompressed):     ${t}s, peak RSS $((m / 1024)) MiB"
    rm -rf "$WORK/rw"

    rm -rf "$WORK/arch" "$WORK/spool"; sync
    cat > "$WORK/lb.toml" <<EOF
[postgres]
conninfo = "host=127.0.0.1 port=$PORT user=postgres sslmode=disable"
slot = "lb$i"
create_slot = false
[encryption]
recipients = ["$rcpt"]
[wal]
spool_dir = "$WORK/spool"
${LIFEBOAT_BENCH_WAL_CONF:-}
[[storage]]
name = "local"
url = "file://$WORK/arch"
EOF
    /usr/bin/time -f "%e %M" -o "$WORK/t" "$LB" --config "$WORK/lb.toml" -q stream --endpos "$end"
    read -r t m < "$WORK/t"; lb_t+=("$t"); lb_m+=("$m")
    local stored
    stored=$(du -sm "$WORK/arch" | cut -f1)
    echo "round $i lifeboat stream (zstd, age, fsync'd):   ${t}s, peak RSS $((m / 1024)) MiB, stored ${stored} MiB"
    if [[ -n "${LIFEBOAT_BENCH_AB:-}" ]]; then
      rm -rf "$WORK/arch" "$WORK/spool"; sync
      sed -i "s/^slot = .*/slot = \"ab$i\"/" "$WORK/lb.toml"
      /usr/bin/time -f "%e %M" -o "$WORK/t" "$LIFEBOAT_BENCH_AB" --config "$WORK/lb.toml" -q stream --endpos "$end"
      read -r t m < "$WORK/t"; ab_t+=("$t")
      echo "round $i B: $LIFEBOAT_BENCH_AB stream:   ${t}s, peak RSS $((m / 1024)) MiB"
    fi
  done
  python3 - "${rw_t[*]}" "${lb_t[*]}" "${lb_m[*]}" "$mb" <<'EOF'
import sys
rw = [float(x) for x in sys.argv[1].split()]
lb = [float(x) for x in sys.argv[2].split()]
rss = max(int(x) for x in sys.argv[3].split()) / 1024
mb = float(sys.argv[4])
b_rw, b_lb = min(rw), min(lb)
print(f"\nstream benchmark, {mb:.0f} MiB of WAL, best of {len(rw)} alternating rounds")
print(f"  pg_receivewal  {b_rw:7.2f} s  {mb / b_rw:7.1f} MiB/s")
print(f"  lifeboat       {b_lb:7.2f} s  {mb / b_lb:7.1f} MiB/s  peak RSS {rss:.1f} MiB")
print(f"  ratio lifeboat/pg_receivewal wall time: {b_lb / b_rw:.2f}x (target <= 1.0x); peak RSS target <= 64 MiB")
EOF
  ab_summary "${lb_t[*]}" "${ab_t[*]}"
}

# The A/B line: this build against LIFEBOAT_BENCH_AB, per round (when it was run).
ab_summary() {
  [[ -n "$2" ]] || return 0
  python3 -c '
import statistics, sys
a, b = ([float(x) for x in s.split()] for s in sys.argv[1:3])
r = [x / y for x, y in zip(a, b)]
print(f"  A/B: this build {statistics.median(a):.2f} s median, B {statistics.median(b):.2f} s median; per-round ratio A/B median {statistics.median(r):.2f}x, best {min(r):.2f}x")
' "$1" "$2"
}

# Start moto and s3s-fs (from scripts/install-s3.sh) on loopback, each with a bucket
# "bench" (moto's with Object Lock); writes the [[storage]] TOML for both to $WORK/s3.toml.
start_s3() {
  bash scripts/install-s3.sh >/dev/null
  local cache s3dir mport fport
  cache="$(pg_cache_dir)/s3"
  s3dir="$WORK/s3"; mkdir -p "$s3dir/fs"
  mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  fport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$cache/moto/bin/moto_server" -H 127.0.0.1 -p "$mport" >"$s3dir/moto.log" 2>&1 &
  S3_PIDS+=($!)
  "$cache/s3s-fs/bin/s3s-fs" --host 127.0.0.1 --port "$fport" --access-key benchkey \
    --secret-key bench-secret-0123456789 "$s3dir/fs" >"$s3dir/s3s-fs.log" 2>&1 &
  S3_PIDS+=($!)
  export BENCH_S3_KEY=benchkey BENCH_S3_SECRET=bench-secret-0123456789
  local port
  for port in "$mport" "$fport"; do
    for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  done
  AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=bench-secret-0123456789 "$cache/moto/bin/python" -c '
import sys, boto3
for port, lock in ((sys.argv[1], True), (sys.argv[2], False)):
    c = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
    if lock:
        c.create_bucket(Bucket="bench", ObjectLockEnabledForBucket=True)
    else:
        c.create_bucket(Bucket="bench")
' "$mport" "$fport"
  local common=("region = \"us-east-1\"" "force_path_style = true" \
    "access_key_id_env = \"BENCH_S3_KEY\"" "secret_access_key_env = \"BENCH_S3_SECRET\"")
  printf '%s\n' "[[storage]]" "name = \"moto\"" "url = \"s3://bench/PREFIX\"" \
    "endpoint = \"http://127.0.0.1:$mport\"" "${common[@]}" \
    "object_lock = { mode = \"governance\", days = 1 }" "" \
    "[[storage]]" "name = \"s3s-fs\"" "url = \"s3://bench/PREFIX\"" \
    "endpoint = \"http://127.0.0.1:$fport\"" "${common[@]}" > "$WORK/s3.toml"
}

# CPU seconds used so far by the benchmark cluster's exited backends and walsenders (the
# postmaster's reaped children), and by the postmaster itself.
server_cpu() {
  local pid
  pid=$(head -1 "$WORK/data/postmaster.pid")
  echo "scale=2; $(awk '{print $14 + $15 + $16 + $17}' "/proc/$pid/stat") / $(getconf CLK_TCK)" | bc
}

# CPU seconds used so far by the S3 servers of start_s3 (moto, s3s-fs), or by one of them
# (servers_cpu 0 | servers_cpu 1).
servers_cpu() {
  local total=0 p t pids=("${S3_PIDS[@]}")
  [[ $# -gt 0 ]] && pids=("${S3_PIDS[$1]}")
  for p in "${pids[@]}"; do
    t=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)
    total=$((total + t))
  done
  echo "scale=2; $total / $(getconf CLK_TCK)" | bc
}

# s3_leg WHAT KIND ROUND CMD...: run one leg of an S3 benchmark (KIND f: one file://
# store, s: the two S3 servers) under /usr/bin/time, print its line, and append its wall
# time to F_T or S_T.
s3_leg() {
  local what="$1" kind="$2" i="$3"; shift 3
  local cpu0 m0 t m u s line
  cpu0=$(servers_cpu); m0=$(servers_cpu 0)
  /usr/bin/time -f "%e %M %U %S" -o "$WORK/t" "$@" >/dev/null 2>"$WORK/lb.err" \
    || { cat "$WORK/lb.err"; exit 1; }
  read -r t m u s < "$WORK/t"
  line="${t}s, peak RSS $((m / 1024)) MiB, lifeboat CPU $(echo "$u + $s" | bc) s"
  if [[ $kind == f ]]; then
    F_T+=("$t"); echo "round $i lifeboat $what to one file:// store:   $line"
  else
    S_T+=("$t"); echo "round $i lifeboat $what to moto + s3s-fs (S3): $line, S3 servers' CPU $(echo "$(servers_cpu) - $cpu0" | bc) s (moto $(echo "$(servers_cpu 0) - $m0" | bc) s)"
  fi
}

# s3_summary TITLE: best of F_T vs best of S_T, and the ratio.
s3_summary() {
  python3 -c '
import sys
f, s = ([float(x) for x in a.split()] for a in sys.argv[1:3])
print(f"\n{sys.argv[3]}, best of {len(f)} alternating rounds")
print(f"  one file:// store   {min(f):7.2f} s")
print(f"  two S3 providers    {min(s):7.2f} s  ratio {min(s) / min(f):.2f}x (target <= 1.2x)")
' "${F_T[*]}" "${S_T[*]}" "$1"
}

# lifeboat stream of the same WAL to one file:// store vs to two S3 servers on loopback.
bench_stream_s3() {
  local slots=()
  for i in $(seq 1 "$ROUNDS"); do slots+=("f$i" "s$i"); done
  gen_wal "${slots[@]}"
  local end="$END" mb="$MB"
  age-keygen -o "$WORK/id.txt" 2>/dev/null
  local rcpt
  rcpt=$(age-keygen -y "$WORK/id.txt")
  start_s3
  F_T=(); S_T=()
  local kind
  for i in $(seq 1 "$ROUNDS"); do
    for kind in f s; do
      rm -rf "$WORK/arch" "$WORK/spool"; sync
      printf '%s\n' "[postgres]" "conninfo = \"host=127.0.0.1 port=$PORT user=postgres sslmode=disable\"" \
        "slot = \"$kind$i\"" "create_slot = false" "[encryption]" "recipients = [\"$rcpt\"]" \
        "[wal]" "spool_dir = \"$WORK/spool\"" "${LIFEBOAT_BENCH_WAL_CONF:-}" > "$WORK/lb.toml"
      if [[ $kind == f ]]; then
        printf '%s\n' "[[storage]]" "name = \"local\"" "url = \"file://$WORK/arch\"" >> "$WORK/lb.toml"
      else
        sed "s#PREFIX#round$i#" "$WORK/s3.toml" >> "$WORK/lb.toml"
      fi
      s3_leg stream "$kind" "$i" "$LB" --config "$WORK/lb.toml" -q stream --endpos "$end"
    done
  done
  kill "${S3_PIDS[@]}" 2>/dev/null || true
  s3_summary "stream to S3 benchmark, $mb MiB of WAL"
}

# The backup benchmark's dataset, lifeboat's config ($WORK/lb.toml) and pgbackrest's
# stanza (PGBR). Sets SIZE.
setup_dataset() {
  [[ -n "${LIFEBOAT_BENCH_PGBACKREST:-}" ]] || command -v pgbackrest >/dev/null \
    || { apt-get update -qq && apt-get install -y -qq pgbackrest >/dev/null; }
  local scale="${LIFEBOAT_BENCH_PGBENCH_SCALE:-70}" text_mb="${LIFEBOAT_BENCH_TEXT_MB:-1000}"
  echo "building the dataset: pgbench scale $scale plus ~${text_mb} MiB of random-ish text ..."
  "$BIN/pgbench" -h "$WORK" -p "$PORT" -U postgres -i -q -s "$scale" postgres >/dev/null 2>&1
  local rows=$((text_mb * 1024 * 1024 / 110))
  "${PSQL[@]}" -c "CREATE TABLE text_data AS SELECT g AS id, md5(g::text) || md5((g * 31)::text) AS a, substr(md5(random()::text), 1, 12) AS b FROM generate_series(1, $rows) g" >/dev/null
  "${PSQL[@]}" -c "CHECKPOINT" >/dev/null; sync
  local size
  size=$("${PSQL[@]}" -c "SELECT pg_size_pretty(sum(pg_database_size(datname))) FROM pg_database")
  echo "cluster size: $size"
  age-keygen -o "$WORK/id.txt" 2>/dev/null
  local rcpt
  rcpt=$(age-keygen -y "$WORK/id.txt")
  printf '%s\n' "[postgres]" "conninfo = \"host=127.0.0.1 port=$PORT user=postgres sslmode=disable\"" "slot = \"lifeboat\"" \
    "[encryption]" "recipients = [\"$rcpt\"]" "[wal]" "spool_dir = \"$WORK/spool\"" \
    "[backup]" "compression_level = 3" "${LIFEBOAT_BENCH_BACKUP_CONF:-}" \
    "[[storage]]" "name = \"local\"" "url = \"file://$WORK/arch\"" > "$WORK/lb.toml"
  # pgbackrest: posix repo, zstd 3, two processes, AES-256-CBC, run as the cluster's owner.
  mkdir -p "$WORK/pgbr/repo" "$WORK/pgbr/log" "$WORK/pgbr/spool"
  printf '%s\n' "[global]" "repo1-path=$WORK/pgbr/repo" "repo1-cipher-type=aes-256-cbc" \
    "repo1-cipher-pass=bench-only-passphrase" "compress-type=zst" "compress-level=3" "process-max=2" \
    "log-path=$WORK/pgbr/log" "lock-path=$WORK/pgbr/spool" "spool-path=$WORK/pgbr/spool" \
    "start-fast=y" "archive-check=n" "log-level-console=warn" ${PGBR_EXTRA:-} "" \
    "[bench]" "pg1-path=$WORK/data" "pg1-socket-path=$WORK" "pg1-port=$PORT" "pg1-user=postgres" \
    > "$WORK/pgbr/pgbackrest.conf"
  if [[ $(id -u) == 0 ]]; then chown -R lifeboat-test "$WORK/pgbr"; fi
  PGBR=("${AS[@]}" "${LIFEBOAT_BENCH_PGBACKREST:-pgbackrest}" --config="$WORK/pgbr/pgbackrest.conf" --stanza=bench)
  PGBR_OK=1
  if ! "${PGBR[@]}" stanza-create >/dev/null 2>"$WORK/pgbr.err"; then
    # The incremental benchmark can do without it (an older pgbackrest knows no 17).
    [[ -n "${PGBR_OPTIONAL:-}" ]] || { cat "$WORK/pgbr.err"; exit 1; }
    echo "note: this pgbackrest cannot serve PostgreSQL $MAJOR ($(head -1 "$WORK/pgbr.err")): no pgbackrest figures"
    PGBR_OK=
  fi
  SIZE="$size"
}

bench_backup() {
  setup_dataset
  local size="$SIZE"
  mkdir -p "$WORK/bb"

  local lb_t=() lb_m=() bb_t=() br_t=() t m
  for i in $(seq 1 "$ROUNDS"); do
    rm -rf "$WORK/arch" "$WORK/spool"; sync
    local s0 u s
    s0=$(server_cpu)
    /usr/bin/time -f "%e %M %U %S" -o "$WORK/t" "$LB" --config "$WORK/lb.toml" -q backup --fast --wal-timeout 1ms >/dev/null 2>"$WORK/lb.err" \
      || { cat "$WORK/lb.err"; exit 1; }
    read -r t m u s < "$WORK/t"; lb_t+=("$t"); lb_m+=("$m")
    echo "round $i lifeboat backup (zstd 3, age, CRC, file://):         ${t}s, peak RSS $((m / 1024)) MiB, stored $(du -sm "$WORK/arch" | cut -f1) MiB, CPU: lifeboat $(echo "$u + $s" | bc) s, walsenders $(echo "$(server_cpu) - $s0" | bc) s"

    rm -rf "$WORK/bb"/*; sync
    s0=$(server_cpu)
    /usr/bin/time -f "%e %M %U %S" -o "$WORK/t" "$BIN/pg_basebackup" -h 127.0.0.1 -p "$PORT" -U postgres -D "$WORK/bb" -Ft -Xnone --compress=client-zstd:3 -c fast
    read -r t m u s < "$WORK/t"; bb_t+=("$t")
    echo "round $i pg_basebackup -Ft -Xnone client-zstd:3:                ${t}s, peak RSS $((m / 1024)) MiB, stored $(du -sm "$WORK/bb" | cut -f1) MiB, CPU: pg_basebackup $(echo "$u + $s" | bc) s, walsender $(echo "$(server_cpu) - $s0" | bc) s"

    sync
    /usr/bin/time -f "%e %M" -o "$WORK/t" "${PGBR[@]}" backup --type=full
    read -r t m < "$WORK/t"; br_t+=("$t")
    echo "round $i pgbackrest full (zst 3, process-max 2, aes-256-cbc):   ${t}s, peak RSS $((m / 1024)) MiB, repo $(du -sm "$WORK/pgbr/repo" | cut -f1) MiB"
  done
  python3 -c '
import sys
lb, bb, br = ([float(x) for x in a.split()] for a in sys.argv[1:4])
rss = max(int(x) for x in sys.argv[4].split()) / 1024
print(f"\nbackup benchmark, cluster {sys.argv[5]}, best of {len(lb)} alternating rounds")
print(f"  lifeboat       {min(lb):7.2f} s  peak RSS {rss:.1f} MiB (target <= 128 MiB)")
print(f"  pg_basebackup  {min(bb):7.2f} s  ratio lifeboat/pg_basebackup {min(lb) / min(bb):.2f}x (target <= 0.6x)")
print(f"  pgbackrest     {min(br):7.2f} s  ratio lifeboat/pgbackrest    {min(lb) / min(br):.2f}x (target <= 0.5x)")
' "${lb_t[*]}" "${bb_t[*]}" "${br_t[*]}" "${lb_m[*]}" "$size"
}

# lifeboat backup of the backup benchmark's dataset to one file:// store vs to two S3
# servers on loopback, alternating.
bench_backup_s3() {
  setup_dataset
  local size="$SIZE"
  start_s3
  sed '/^\[\[storage\]\]/,$d' "$WORK/lb.toml" > "$WORK/lb-base.toml"
  F_T=(); S_T=()
  local kind cfg
  for i in $(seq 1 "$ROUNDS"); do
    for kind in f s; do
      rm -rf "$WORK/arch" "$WORK/spool"; sync
      if [[ $kind == f ]]; then
        cfg="$WORK/lb.toml"
      else
        cfg="$WORK/lb-s3-$i.toml"
        { cat "$WORK/lb-base.toml"; sed "s#PREFIX#backup$i#" "$WORK/s3.toml"; } > "$cfg"
      fi
      s3_leg backup "$kind" "$i" "$LB" --config "$cfg" -q backup --fast --wal-timeout 1ms
    done
  done
  kill "${S3_PIDS[@]}" 2>/dev/null || true
  s3_summary "backup to S3 benchmark, cluster $size"
}

# Start PostgreSQL on a restored directory as the test user; print the seconds until it
# has replayed to the end of the archive and promoted.
replay_seconds() {
  local dir="$1" port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  if [[ $(id -u) == 0 ]]; then chown -R lifeboat-test "$dir"; fi
  chmod 700 "$dir"
  local t0 t1
  t0=$(date +%s.%N)
  "${AS[@]}" "$BIN/pg_ctl" -D "$dir" -l "$dir.log" -w -t 3600 start \
    -o "-p $port -c listen_addresses='' -c unix_socket_directories='$WORK' -c archive_mode=off" >/dev/null
  until [[ $("$BIN/psql" -X -At -h "$WORK" -p "$port" -U postgres -d postgres -c "SELECT pg_is_in_recovery()" 2>/dev/null) == f ]]; do
    sleep 0.1
  done
  t1=$(date +%s.%N)
  "${AS[@]}" "$BIN/pg_ctl" -D "$dir" -m fast -w stop >/dev/null
  python3 -c "print(f'{$t1 - $t0:.2f}')"
}

bench_restore() {
  setup_dataset
  local wal_mb="${LIFEBOAT_BENCH_REPLAY_MB:-1024}"
  # The server (as the test user) runs the restore_command: a readable copy of everything.
  cp "$LB" "$WORK/lifeboat"; LB="$WORK/lifeboat"
  chmod 644 "$WORK/id.txt" "$WORK/lb.toml"
  # The streamer's slot, before anything: it holds the WAL from the backup on.
  "${PSQL[@]}" -c "SELECT pg_create_physical_replication_slot('lifeboat', true)" >/dev/null
  "$LB" --config "$WORK/lb.toml" -q backup --fast --wal-timeout 1ms >/dev/null
  "${PGBR[@]}" backup --type=full >/dev/null
  # ~1 GiB of WAL after the backups, archived by lifeboat stream (and by nobody for
  # pgbackrest: its restore is timed on files only, the replay comparison is lifeboat's own).
  local start end
  start=$("${PSQL[@]}" -c "SELECT pg_current_wal_lsn()")
  local rows=$((wal_mb * 1024 * 1024 / 160))
  "${PSQL[@]}" -c "CREATE TABLE replay_filler AS SELECT g AS id, md5(g::text) || repeat(substr(md5((g*7)::text), 1, 16), 3) AS t FROM generate_series(1, $rows) g" >/dev/null
  end=$("${PSQL[@]}" -c "SELECT pg_current_wal_lsn()")
  "${PSQL[@]}" -c "SELECT pg_switch_wal()" >/dev/null
  "$LB" --config "$WORK/lb.toml" -q stream --endpos "$end"
  local replay_mb
  replay_mb=$("${PSQL[@]}" -c "SELECT round(pg_wal_lsn_diff('$end', '$start') / 1048576)")
  echo "archived $replay_mb MiB of WAL after the backup"
  # Vacuum and write the new table out now, so neither autovacuum nor a checkpoint of it
  # competes with the first round.
  "${PSQL[@]}" -c "VACUUM (ANALYZE) replay_filler" >/dev/null
  "${PSQL[@]}" -c "CHECKPOINT" >/dev/null; sync

  local lb_t=() lb_m=() br_t=() ab_t=() sf_t=() t m u k
  for i in $(seq 1 "$ROUNDS"); do
    rm -rf "$WORK/r_lb"; drop_caches
    /usr/bin/time -f "%e %M %U %S" -o "$WORK/t" "$LB" --config "$WORK/lb.toml" --identity "$WORK/id.txt" -q \
      restore --pgdata "$WORK/r_lb" --pg-bin "$BIN" --target-immediate >/dev/null
    read -r t m u k < "$WORK/t"; lb_t+=("$t"); lb_m+=("$m")
    echo "round $i lifeboat restore (parallel fetch, age, zstd, manifest check, fsync): ${t}s (CPU ${u}s user, ${k}s sys), peak RSS $((m / 1024)) MiB"
    rm -rf "$WORK/r_lb"; drop_caches
    /usr/bin/time -f "%e %M %U %S" -o "$WORK/t" "$LB" --config "$WORK/lb.toml" --identity "$WORK/id.txt" -q \
      restore --pgdata "$WORK/r_lb" --pg-bin "$BIN" --target-immediate --sync-method syncfs >/dev/null
    read -r t m u k < "$WORK/t"; sf_t+=("$t"); lb_m+=("$m")
    echo "round $i lifeboat restore --sync-method syncfs:                          ${t}s (CPU ${u}s user, ${k}s sys), peak RSS $((m / 1024)) MiB"
    rm -rf "$WORK/r_lb"
    if [[ -n "${LIFEBOAT_BENCH_AB:-}" ]]; then
      drop_caches
      /usr/bin/time -f "%e %M %U %S" -o "$WORK/t" "$LIFEBOAT_BENCH_AB" --config "$WORK/lb.toml" --identity "$WORK/id.txt" -q \
        restore --pgdata "$WORK/r_lb" --pg-bin "$BIN" --target-immediate >/dev/null
      read -r t m u k < "$WORK/t"; ab_t+=("$t")
      echo "round $i B: $LIFEBOAT_BENCH_AB restore:                                  ${t}s (CPU ${u}s user, ${k}s sys), peak RSS $((m / 1024)) MiB"
      rm -rf "$WORK/r_lb"
    fi

    rm -rf "$WORK/r_br"; mkdir -p "$WORK/r_br"; chmod 700 "$WORK/r_br"
    if [[ $(id -u) == 0 ]]; then chown lifeboat-test "$WORK/r_br"; fi
    drop_caches
    /usr/bin/time -f "%e %M %U %S" -o "$WORK/t" "${PGBR[@]}" restore --pg1-path="$WORK/r_br" --type=immediate
    read -r t m u k < "$WORK/t"; br_t+=("$t")
    echo "round $i pgbackrest restore (process-max 2, aes-256-cbc, zst):           ${t}s (CPU ${u}s user, ${k}s sys), peak RSS $((m / 1024)) MiB"
    rm -rf "$WORK/r_br"
  done

  # WAL replay through wal-fetch: without and with prefetch (one run each).
  local rp=()
  for pf in 0 8; do
    rm -rf "$WORK/r_wal"; drop_caches
    "$LB" --config "$WORK/lb.toml" --identity "$WORK/id.txt" -q \
      restore --pgdata "$WORK/r_wal" --pg-bin "$BIN" --wal-prefetch "$pf" >/dev/null
    t=$(replay_seconds "$WORK/r_wal")
    rp+=("$t")
    echo "replay of $replay_mb MiB through lifeboat wal-fetch, prefetch $pf: ${t}s"
    rm -rf "$WORK/r_wal" "$WORK/r_wal.log"
  done
  python3 -c '
import statistics, sys
lb, br, sf = ([float(x) for x in a.split()] for a in (sys.argv[1], sys.argv[2], sys.argv[7]))
rss = max(int(x) for x in sys.argv[3].split()) / 1024
r0, r8 = (float(x) for x in sys.argv[4].split())
mb = float(sys.argv[6])
med = statistics.median
print(f"\nrestore benchmark, cluster {sys.argv[5]}, medians of {len(lb)} alternating rounds (best in brackets)")
print(f"  lifeboat restore (fsync)   {med(lb):7.2f} s [{min(lb):.2f}]  peak RSS {rss:.1f} MiB")
print(f"  lifeboat restore (syncfs)  {med(sf):7.2f} s [{min(sf):.2f}]")
print(f"  pgbackrest restore         {med(br):7.2f} s [{min(br):.2f}]  ratio lifeboat/pgbackrest {med(lb) / med(br):.2f}x fsync, {med(sf) / med(br):.2f}x syncfs (target <= 0.6x)")
print(f"  WAL replay of {mb:.0f} MiB: without prefetch {r0:.2f} s ({mb / r0:.0f} MiB/s), with prefetch 8 {r8:.2f} s ({mb / r8:.0f} MiB/s), {r0 / r8:.2f}x faster")
' "${lb_t[*]}" "${br_t[*]}" "${lb_m[*]}" "${rp[*]}" "$SIZE" "$replay_mb" "${sf_t[*]}"
  ab_summary "${lb_t[*]}" "${ab_t[*]}"
}

# A synthetic archive at $1: $2 days of daily backups (3 parts, a manifest, backup.json),
# $3 empty WAL segments a day.
gen_prune_archive() {
  python3 - "$1" "$2" "$3" <<'PY'
import datetime, json, os, sys
root, days, per_day = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
SEG = 16 << 20
lsn = lambda v: "%X/%X" % (v >> 32, v & 0xFFFFFFFF)
now = datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc)
t0 = now - datetime.timedelta(days=days)
os.makedirs(f"{root}/wal/00000001")
with open(f"{root}/archive.json", "w") as f:
    json.dump({"format": 1, "system_identifier": "7000000000000000001",
               "wal_segment_size": SEG, "created_by": "bench"}, f)
wal = f"{root}/wal/00000001"
for segno in range(1, days * per_day + 2):
    os.close(os.open("%s/%08X%08X%08X.seg" % (wal, 1, segno // 256, segno % 256), os.O_CREAT | os.O_WRONLY, 0o644))
for day in range(days):
    start = t0 + datetime.timedelta(days=day, hours=1)
    end = start + datetime.timedelta(minutes=10)
    bid = start.strftime("%Y%m%dT%H%M%SZ")
    segno = day * per_day + per_day // 24 + 1
    os.makedirs(f"{root}/backups/{bid}")
    parts = []
    for seq in range(3):
        key = f"backups/{bid}/base.tar.{seq:06d}"
        open(f"{root}/{key}", "wb").close()
        parts.append({"key": key, "tar": "base.tar", "seq": seq, "plain_len": 0, "stored_len": 0, "crc32": 0})
    mkey = f"backups/{bid}/backup_manifest"
    open(f"{root}/{mkey}", "wb").close()
    meta = {"format": 1, "id": bid, "label": bid, "system_identifier": "7000000000000000001",
            "pg_version": 170000, "timeline": 1, "start_lsn": lsn(segno * SEG + 0x28),
            "end_timeline": 1, "end_lsn": lsn((segno + 2) * SEG + 0x100),
            "start_time": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "end_time": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "plain_size": 0, "stored_size": 0,
            "tablespaces": [{"oid": None, "location": None, "tar": "base.tar"}],
            "parts": parts,
            "manifest": {"key": mkey, "tar": "backup_manifest", "seq": 0, "plain_len": 0, "stored_len": 0, "crc32": 0},
            "extensions": None, "shared_preload_libraries": None, "data_checksums": True,
            "wal_segment_size": SEG, "from_standby": False, "bootstrap_superuser": None,
            "snapshot_at_end": None, "created_by": "bench"}
    with open(f"{root}/backups/{bid}/backup.json", "w") as f:
        json.dump(meta, f)
PY
}

bench_prune() {
  local days="${LIFEBOAT_BENCH_PRUNE_DAYS:-2557}" per_day="${LIFEBOAT_BENCH_PRUNE_SEGS:-400}"
  age-keygen -o "$WORK/id.txt" 2>/dev/null
  cat > "$WORK/prune.toml" <<EOF
[postgres]
conninfo = "host=127.0.0.1 port=$PORT user=postgres sslmode=disable"
slot = "lifeboat"
[encryption]
recipients = ["$(age-keygen -y "$WORK/id.txt")"]
[wal]
spool_dir = "$WORK/spool"
[[storage]]
name = "local"
url = "file://$WORK/parch"
EOF
  echo "generating a synthetic archive: $days days of daily backups, $per_day WAL segments a day ..."
  gen_prune_archive "$WORK/parch" "$days" "$per_day"
  local n
  n=$(find "$WORK/parch" -type f | wc -l)
  echo "$n objects in the file:// store"
  sync
  local t m
  for i in $(seq 1 "$ROUNDS"); do
    /usr/bin/time -f "%e %M" -o "$WORK/t" "$LB" --config "$WORK/prune.toml" prune --dry-run \
      --now "2026-12-01 00:00:00+00" >"$WORK/plan.txt" 2>"$WORK/plan.log"
    read -r t m < "$WORK/t"
    echo "round $i prune --dry-run (list, catalog, plan): ${t}s, peak RSS $((m / 1024)) MiB; $(grep -o 'objects=[0-9]* listed_s=[0-9.]* planned_s=[0-9.]*' "$WORK/plan.log")"
  done
  grep -E "^  (PITR|delete)" "$WORK/plan.txt"
  echo "kept: $(grep -c '^  keep ' "$WORK/plan.txt") backups"
  # The same objects from an S3 test server: s3s-fs serves a directory per bucket, and its
  # bucket "bench" is the file:// store itself (a symlink), so nothing is uploaded. Planned
  # over HTTP: time, peak RSS and the ListObjectsV2 requests per prefix (1,000 keys a page).
  # s3s-fs answers each 1,000-key page by walking and sorting the whole bucket, so a
  # million keys would cost it ~1,000 walks of a million files (about an hour here): the S3
  # rounds use an archive of LIFEBOAT_BENCH_PRUNE_S3_DAYS days (256: ~100,000 objects).
  bash scripts/install-s3.sh >/dev/null
  local fport s3days="${LIFEBOAT_BENCH_PRUNE_S3_DAYS:-256}"
  echo "generating a synthetic archive for S3: $s3days days ..."
  gen_prune_archive "$WORK/s3arch" "$s3days" "$per_day"
  echo "$(find "$WORK/s3arch" -type f | wc -l) objects in the S3 bucket"
  mkdir -p "$WORK/s3prune" && ln -sfn "$WORK/s3arch" "$WORK/s3prune/bench"
  fport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$(pg_cache_dir)/s3/s3s-fs/bin/s3s-fs" --host 127.0.0.1 --port "$fport" --access-key benchkey \
    --secret-key bench-secret-0123456789 "$WORK/s3prune" >"$WORK/s3prune.log" 2>&1 &
  S3_PIDS+=($!)
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$fport") 2>/dev/null && break; sleep 0.1; done
  sed '/^\[\[storage\]\]/,$d' "$WORK/prune.toml" > "$WORK/prune-s3.toml"
  printf '%s\n' "[[storage]]" "name = \"s3s-fs\"" "url = \"s3://bench\"" \
    "endpoint = \"http://127.0.0.1:$fport\"" "region = \"us-east-1\"" \
    "access_key_id_env = \"BENCH_S3_KEY\"" "secret_access_key_env = \"BENCH_S3_SECRET\"" >> "$WORK/prune-s3.toml"
  for i in $(seq 1 "$ROUNDS"); do
    BENCH_S3_KEY=benchkey BENCH_S3_SECRET=bench-secret-0123456789 \
      LIFEBOAT_LOG="lifeboat::archive=info,lifeboat::storage::s3=debug,warn" \
      /usr/bin/time -f "%e %M" -o "$WORK/t" "$LB" --config "$WORK/prune-s3.toml" prune --dry-run \
      --now "2026-12-01 00:00:00+00" >"$WORK/plan-s3.txt" 2>"$WORK/plan-s3.log"
    read -r t m < "$WORK/t"
    echo "round $i prune --dry-run from S3 (s3s-fs): ${t}s, peak RSS $((m / 1024)) MiB; $(grep -o 'objects=[0-9]* listed_s=[0-9.]* planned_s=[0-9.]*' "$WORK/plan-s3.log"); ListObjectsV2 requests: $(grep -o 'prefix="[a-z]*/" objects=[0-9]* requests=[0-9]*' "$WORK/plan-s3.log" | tr '\n' ' ')"
  done
  /usr/bin/time -f "%e %M" -o "$WORK/t" "$LB" --config <(sed "s|file://$WORK/parch|file://$WORK/s3arch|" "$WORK/prune.toml") \
    prune --dry-run --now "2026-12-01 00:00:00+00" >"$WORK/plan-s3f.txt" 2>/dev/null
  diff <(grep -E '^  (keep|delete)' "$WORK/plan-s3f.txt") <(grep -E '^  (keep|delete)' "$WORK/plan-s3.txt") >/dev/null \
    && echo "the plan from S3 is the plan from file:// of the same archive" || echo "WARNING: the plans from file:// and S3 differ"
  kill "${S3_PIDS[@]}" 2>/dev/null || true
  /usr/bin/time -f "%e %M" -o "$WORK/t" "$LB" --config "$WORK/prune.toml" prune \
    --now "2026-12-01 00:00:00+00" >"$WORK/apply.txt" 2>"$WORK/apply.log"
  read -r t m < "$WORK/t"
  echo "prune (plan and delete): ${t}s, peak RSS $((m / 1024)) MiB; $(grep -E '^  deleted' "$WORK/apply.txt")"
  echo "$(find "$WORK/parch" -type f | wc -l) objects left"
  /usr/bin/time -f "%e %M" -o "$WORK/t" "$LB" --config "$WORK/prune.toml" prune \
    --now "2026-12-01 00:00:00+00" >"$WORK/again.txt" 2>&1
  read -r t m < "$WORK/t"
  echo "second prune: ${t}s; $(grep -E '^  delete' "$WORK/again.txt")"
}

# lifeboat dump vs the shell pipeline it replaces, on one database: pg_dump's own
# compression off in both (zstd does it), the same zstd level, age to the same recipient.
bench_dump() {
  # The backup benchmark's dataset (about 2 GB), as the issue asks.
  local scale="${LIFEBOAT_BENCH_PGBENCH_SCALE:-70}" text_mb="${LIFEBOAT_BENCH_TEXT_MB:-1000}"
  local rounds="${LIFEBOAT_BENCH_ROUNDS:-3}"
  echo "building the dataset: pgbench scale $scale plus ~${text_mb} MiB of random-ish text ..."
  "$BIN/pgbench" -h "$WORK" -p "$PORT" -U postgres -i -q -s "$scale" postgres >/dev/null 2>&1
  local rows=$((text_mb * 1024 * 1024 / 110))
  "${PSQL[@]}" -c "CREATE TABLE text_data AS SELECT g AS id, md5(g::text) || md5((g * 31)::text) AS a, substr(md5(random()::text), 1, 12) AS b FROM generate_series(1, $rows) g" >/dev/null
  "${PSQL[@]}" -c "CHECKPOINT" >/dev/null; sync
  local size
  size=$("${PSQL[@]}" -c "SELECT pg_size_pretty(pg_database_size('postgres'))")
  echo "database size: $size"
  age-keygen -o "$WORK/id.txt" 2>/dev/null
  local rcpt
  rcpt=$(age-keygen -y "$WORK/id.txt")
  printf '%s\n' "[postgres]" "conninfo = \"host=127.0.0.1 port=$PORT user=postgres dbname=postgres sslmode=disable\"" "slot = \"lifeboat\"" \
    "[encryption]" "recipients = [\"$rcpt\"]" "[wal]" "spool_dir = \"$WORK/spool\"" \
    "[backup]" "compression_level = 3" \
    "[[storage]]" "name = \"local\"" "url = \"file://$WORK/arch\"" > "$WORK/lb.toml"
  local lb_t=() lb_m=() sh_t=() sh_m=() gz_t=() fd_t=() t m u s
  for i in $(seq 1 "$rounds"); do
    rm -rf "$WORK/arch" "$WORK/pipe.age" "$WORK/fd"; sync
    /usr/bin/time -f "%e %M %U %S" -o "$WORK/t" "$LB" --config "$WORK/lb.toml" -q dump --db postgres --pg-bin "$BIN" >/dev/null 2>"$WORK/lb.err" \
      || { cat "$WORK/lb.err"; exit 1; }
    read -r t m u s < "$WORK/t"; lb_t+=("$t"); lb_m+=("$m")
    echo "round $i lifeboat dump (pg_dump -Fc -Z0, zstd 3 in parallel parts, age, CRC, file://): ${t}s, peak RSS $((m / 1024)) MiB, stored $(du -sm "$WORK/arch" | cut -f1) MiB, CPU lifeboat $(echo "$u + $s" | bc) s"
    sync
    /usr/bin/time -f "%e %M" -o "$WORK/t" bash -c "set -o pipefail; '$BIN/pg_dump' -h 127.0.0.1 -p $PORT -U postgres -Fc -Z0 postgres | zstd -3 -q | age -r '$rcpt' > '$WORK/pipe.age'"
    read -r t m < "$WORK/t"; sh_t+=("$t"); sh_m+=("$m")
    echo "round $i pg_dump -Fc -Z0 | zstd -3 | age:                                           ${t}s, stored $(du -sm "$WORK/pipe.age" | cut -f1) MiB"
    rm -f "$WORK/pipe.age"; sync
    /usr/bin/time -f "%e %M" -o "$WORK/t" bash -c "set -o pipefail; '$BIN/pg_dump' -h 127.0.0.1 -p $PORT -U postgres -Fc postgres | zstd -3 -q | age -r '$rcpt' > '$WORK/pipe.age'"
    read -r t m < "$WORK/t"; gz_t+=("$t")
    echo "round $i pg_dump -Fc | zstd -3 | age (pg_dump's default gzip too):                  ${t}s, stored $(du -sm "$WORK/pipe.age" | cut -f1) MiB"
    rm -f "$WORK/pipe.age"; sync
    # The parallel peer, as the issue names it: directory format with 2 jobs (one a core
    # here), then tar | zstd | age into one encrypted file (what would be shipped).
    /usr/bin/time -f "%e %M" -o "$WORK/t" bash -c "set -o pipefail; '$BIN/pg_dump' -h 127.0.0.1 -p $PORT -U postgres -Fd -j 2 -f '$WORK/fd' postgres && tar -C '$WORK/fd' -cf - . | zstd -3 -q | age -r '$rcpt' > '$WORK/pipe.age'"
    read -r t m < "$WORK/t"; fd_t+=("$t")
    echo "round $i pg_dump -Fd -j 2 && tar | zstd -3 | age:                                  ${t}s, stored $(du -sm "$WORK/pipe.age" | cut -f1) MiB"
    rm -rf "$WORK/fd" "$WORK/pipe.age"
  done
  python3 -c '
import statistics, sys
lb, sh = ([float(x) for x in a.split()] for a in sys.argv[1:3])
rss = max(int(x) for x in sys.argv[3].split()) / 1024
ratios = [a / b for a, b in zip(lb, sh)]
print(f"\ndump benchmark, database {sys.argv[4]}, {len(lb)} alternating rounds (median)")
print(f"  lifeboat dump              {statistics.median(lb):7.2f} s  peak RSS {rss:.1f} MiB")
print(f"  pg_dump | zstd | age       {statistics.median(sh):7.2f} s")
print(f"  ratio lifeboat/pipeline    {statistics.median(ratios):.2f}x (median of the per-round ratios)")
gz = [float(x) for x in sys.argv[5].split()]
print(f"  pg_dump -Fc (gzip) | zstd | age {statistics.median(gz):7.2f} s, ratio lifeboat/it {statistics.median([a / b for a, b in zip(lb, gz)]):.2f}x")
fd = [float(x) for x in sys.argv[6].split()]
r = [a / b for a, b in zip(lb, fd)]
print(f"  pg_dump -Fd -j 2 && tar | zstd | age {statistics.median(fd):7.2f} s, ratio lifeboat/it {statistics.median(r):.2f}x (best {min(r):.2f}x)")
' "${lb_t[*]}" "${sh_t[*]}" "${lb_m[*]}" "$size" "${gz_t[*]}" "${fd_t[*]}"
}

# Drop the page cache (cold reads), where this host lets us; say so once where it does not.
drop_caches() {
  sync
  if [[ -w /proc/sys/vm/drop_caches ]] && echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then return; fi
  [[ -n "${WARNED_CACHE:-}" ]] || { echo "note: cannot drop the page cache here: warm-cache figures" >&2; WARNED_CACHE=1; }
}

# Change about 2% of the cluster's blocks: update the rows of every 150th block of the two
# big tables. Each such block changes, their new versions fill about as many new blocks,
# and the primary key of pgbench_accounts (fillfactor 100: no HOT) takes an entry per row,
# so about three blocks change per block updated (every 50th block changed 6.2% of them).
# The fraction that really changed is read back from the incremental backup's index.
CHANGE_EVERY="${LIFEBOAT_BENCH_CHANGE_EVERY:-150}"
change_blocks() {
  local k="$1"
  "${PSQL[@]}" -c "UPDATE text_data SET b = substr(md5(random()::text), 1, 12) WHERE ((ctid::text::point)[0])::bigint % $CHANGE_EVERY = $k" >/dev/null
  "${PSQL[@]}" -c "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE ((ctid::text::point)[0])::bigint % $CHANGE_EVERY = $k" >/dev/null
}

# Of backup $1's files, the share of the cluster's bytes ($2) in blocks its INCREMENTAL
# files carry (what PostgreSQL's WAL summaries say changed), as a percentage.
changed_pct() {
  python3 -c '
import json, sys
m = json.load(open(sys.argv[1]))
blocks = sum(len(x["incremental"]["blocks"]) for x in m["members"] if x.get("incremental"))
print(f"{blocks * 8192 * 100 / int(sys.argv[2]):.2f}")
' "$WORK/arch/backups/$1/backup.json" "$2"
}

bench_incremental() {
  (( MAJOR >= 17 )) || { echo "the incremental benchmark needs LIFEBOAT_BENCH_MAJOR=17 or later" >&2; exit 2; }
  "${PSQL[@]}" -c "ALTER SYSTEM SET summarize_wal = on" >/dev/null
  "${PSQL[@]}" -c "ALTER SYSTEM SET wal_log_hints = on" >/dev/null
  "${AS[@]}" "$BIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w restart >/dev/null
  # pgBackRest's block incremental (2.46+; it needs bundling) on the same work, if it can.
  PGBR_EXTRA="repo1-bundle=y repo1-block=y" PGBR_OPTIONAL=1 setup_dataset
  cp "$LB" "$WORK/lifeboat"; LB="$WORK/lifeboat"
  chmod 644 "$WORK/id.txt" "$WORK/lb.toml"
  "${PSQL[@]}" -c "SELECT pg_create_physical_replication_slot('lifeboat', true)" >/dev/null
  # A settled cluster: hint bits and the visibility map set now (with wal_log_hints, the
  # first scan after the load would otherwise touch every block, once).
  "${PSQL[@]}" -c "VACUUM (FREEZE, ANALYZE)" >/dev/null
  "${PSQL[@]}" -c "CHECKPOINT" >/dev/null
  local t m u s id
  # lifeboat backup ARGS, timed: sets T, M, ID, BYTES (stored bytes of the backup).
  lb_backup() {
    drop_caches
    /usr/bin/time -f "%e %M %U %S" -o "$WORK/t" "$LB" --config "$WORK/lb.toml" --json backup --fast --wal-timeout 1ms "$@" >"$WORK/b.json" 2>"$WORK/lb.err" \
      || { cat "$WORK/lb.err"; exit 1; }
    read -r T M u s < "$WORK/t"
    ID=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$WORK/b.json")
    BYTES=$(du -sb "$WORK/arch/backups/$ID" | cut -f1)
  }
  lb_backup
  local full_t="$T" full_b="$BYTES" full_id="$ID"
  echo "lifeboat full backup:            ${T}s, stored $((BYTES / 1048576)) MiB, peak RSS $((M / 1024)) MiB"
  "$BIN/pg_basebackup" -h 127.0.0.1 -p "$PORT" -U postgres -D "$WORK/pb0" -Fp -c fast
  # pgbackrest backup --type=TYPE, timed: sets BR_T, BR_M, BR_BYTES (what the repo grew by).
  br_backup() {
    local before
    before=$(du -sb "$WORK/pgbr/repo" | cut -f1)
    drop_caches
    /usr/bin/time -f "%e %M" -o "$WORK/t" "${PGBR[@]}" backup --type="$1" >/dev/null
    read -r BR_T BR_M < "$WORK/t"
    BR_BYTES=$(( $(du -sb "$WORK/pgbr/repo" | cut -f1) - before ))
  }
  local br_full_t="" br_full_b="" br_inc_t=() br_inc_b=()
  if [[ -n "${PGBR_OK:-}" ]]; then
    br_backup full; br_full_t="$BR_T"; br_full_b="$BR_BYTES"
    echo "pgbackrest full backup (block incremental on): ${BR_T}s, stored $((BR_BYTES / 1048576)) MiB, peak RSS $((BR_M / 1024)) MiB"
  fi
  local inc_t=() inc_b=() inc_pct=() prev=0 last_id="" CLUSTER_BYTES
  CLUSTER_BYTES=$("${PSQL[@]}" -c "SELECT sum(pg_database_size(datname)) FROM pg_database")
  for k in 1 2 3 4 5 6; do
    change_blocks "$k"
    lb_backup --incremental
    inc_t+=("$T"); inc_b+=("$BYTES"); last_id="$ID"
    inc_pct+=("$(changed_pct "$ID" "$CLUSTER_BYTES")")
    echo "lifeboat incremental $k (${inc_pct[-1]}% of the cluster's blocks changed): ${T}s, stored $((BYTES / 1048576)) MiB, peak RSS $((M / 1024)) MiB"
    if [[ -n "${PGBR_OK:-}" ]]; then
      br_backup incr; br_inc_t+=("$BR_T"); br_inc_b+=("$BR_BYTES")
      echo "pgbackrest block incremental $k:              ${BR_T}s, stored $((BR_BYTES / 1048576)) MiB, peak RSS $((BR_M / 1024)) MiB"
    fi
    "$BIN/pg_basebackup" -h 127.0.0.1 -p "$PORT" -U postgres -D "$WORK/pb$k" -Fp -c fast --incremental="$WORK/pb$prev/backup_manifest"
    prev=$k
  done
  # One full backup of the same cluster (the same size as the combined chain).
  lb_backup
  local full2_id="$ID"
  local end
  end=$("${PSQL[@]}" -c "SELECT pg_current_wal_lsn()")
  "${PSQL[@]}" -c "SELECT pg_switch_wal()" >/dev/null
  "$LB" --config "$WORK/lb.toml" -q stream --endpos "$end"
  # The plain chain where an archive would hold it, copied to local disk for the combine.
  mkdir -p "$WORK/plain"; mv "$WORK"/pb[0-6] "$WORK/plain/"

  local ch_t=() ch_m=() fu_t=() fu_m=() cb_t=() cp_t=() brr_t=()
  for i in $(seq 1 "$ROUNDS"); do
    rm -rf "$WORK/r"; drop_caches
    /usr/bin/time -f "%e %M" -o "$WORK/t" "$LB" --config "$WORK/lb.toml" --identity "$WORK/id.txt" -q \
      restore --pgdata "$WORK/r" --pg-bin "$BIN" --target-immediate --backup "$last_id" >/dev/null
    read -r t m < "$WORK/t"; ch_t+=("$t"); ch_m+=("$m")
    echo "round $i lifeboat restore of full + 6 incrementals: ${t}s, peak RSS $((m / 1024)) MiB"
    rm -rf "$WORK/r"; drop_caches
    /usr/bin/time -f "%e %M" -o "$WORK/t" "$LB" --config "$WORK/lb.toml" --identity "$WORK/id.txt" -q \
      restore --pgdata "$WORK/r" --pg-bin "$BIN" --target-immediate --backup "$full2_id" >/dev/null
    read -r t m < "$WORK/t"; fu_t+=("$t"); fu_m+=("$m")
    echo "round $i lifeboat restore of one full backup:       ${t}s, peak RSS $((m / 1024)) MiB"
    rm -rf "$WORK/r" "$WORK/copy"; drop_caches
    local t0 t1 t2
    t0=$(date +%s.%N)
    cp -r "$WORK/plain" "$WORK/copy"
    t1=$(date +%s.%N)
    "$BIN/pg_combinebackup" -o "$WORK/r" "$WORK"/copy/pb[0-6]
    t2=$(date +%s.%N)
    cb_t+=("$(python3 -c "print(f'{$t2 - $t1:.2f}')")"); cp_t+=("$(python3 -c "print(f'{$t2 - $t0:.2f}')")")
    echo "round $i copy + pg_combinebackup:                 ${cp_t[-1]}s (pg_combinebackup alone ${cb_t[-1]}s)"
    rm -rf "$WORK/r" "$WORK/copy"
    if [[ -n "${PGBR_OK:-}" ]]; then
      # pgbackrest restore of its newest block incremental (full + 6), files only.
      mkdir -p "$WORK/r"; chmod 700 "$WORK/r"
      if [[ $(id -u) == 0 ]]; then chown lifeboat-test "$WORK/r"; fi
      drop_caches
      /usr/bin/time -f "%e %M" -o "$WORK/t" "${PGBR[@]}" restore --pg1-path="$WORK/r" --type=immediate
      read -r t m < "$WORK/t"; brr_t+=("$t")
      echo "round $i pgbackrest restore of full + 6 block incrementals: ${t}s, peak RSS $((m / 1024)) MiB"
      rm -rf "$WORK/r"
    fi
  done
  python3 -c '
import statistics as st, sys
ft, fb = float(sys.argv[1]), int(sys.argv[2])
it, ib = [float(x) for x in sys.argv[3].split()], [int(x) for x in sys.argv[4].split()]
ch, fu, cb, cp = ([float(x) for x in a.split()] for a in sys.argv[5:9])
rss = max(int(x) for x in (sys.argv[9] + " " + sys.argv[10]).split()) / 1024
print(f"\nincremental benchmark, cluster {sys.argv[11]}")
print(f"  full backup                 {ft:7.2f} s  {fb / 1048576:8.1f} MiB stored")
print(f"  first incremental ({sys.argv[17].split()[0]}% of the blocks changed) {it[0]:7.2f} s  {ib[0] / 1048576:8.1f} MiB stored: {it[0] / ft:.1%} of the time (target <= 15%), {ib[0] / fb:.1%} of the bytes (target <= 5%)")
print(f"  incrementals 1-6            median {st.median(it):.2f} s, {st.median(ib) / 1048576:.1f} MiB")
print(f"restore, medians of {len(ch)} alternating rounds (cold caches where allowed)")
print(f"  full + 6 incrementals       {st.median(ch):7.2f} s  peak RSS {rss:.1f} MiB (target <= 128 MiB)")
print(f"  one full backup             {st.median(fu):7.2f} s  ratio chain/full {st.median([a / b for a, b in zip(ch, fu)]):.2f}x (target <= 1.3x)")
print(f"  copy + pg_combinebackup     {st.median(cp):7.2f} s  ratio chain/it {st.median([a / b for a, b in zip(ch, cp)]):.2f}x (target <= 0.7x); pg_combinebackup alone {st.median(cb):.2f} s")
if sys.argv[12]:
    bft, bfb = float(sys.argv[12]), int(sys.argv[13])
    bit, bib = [float(x) for x in sys.argv[14].split()], [int(x) for x in sys.argv[15].split()]
    brr = [float(x) for x in sys.argv[16].split()]
    print("pgBackRest block incremental on the same work (beside, not a target)")
    print(f"  full backup                 {bft:7.2f} s  {bfb / 1048576:8.1f} MiB stored")
    print(f"  first incremental           {bit[0]:7.2f} s  {bib[0] / 1048576:8.1f} MiB stored: {bit[0] / bft:.1%} of the time, {bib[0] / bfb:.1%} of the bytes")
    print(f"  restore of full + 6         {st.median(brr):7.2f} s  (lifeboat/pgbackrest {st.median(ch) / st.median(brr):.2f}x)")
' "$full_t" "$full_b" "${inc_t[*]}" "${inc_b[*]}" "${ch_t[*]}" "${fu_t[*]}" "${cb_t[*]}" "${cp_t[*]}" "${ch_m[*]}" "${fu_m[*]}" "$SIZE" \
  "$br_full_t" "$br_full_b" "${br_inc_t[*]}" "${br_inc_b[*]}" "${brr_t[*]}" "${inc_pct[*]}"
}

case "$WHAT" in
  stream) bench_stream ;;
  backup) bench_backup ;;
  restore) bench_restore ;;
  prune) bench_prune ;;
  dump) bench_dump ;;
  stream-s3) bench_stream_s3 ;;
  backup-s3) bench_backup_s3 ;;
  incremental) bench_incremental ;;
  *) echo "usage: scripts/bench.sh stream|stream-s3|backup|backup-s3|restore|prune|dump|incremental" >&2; exit 2 ;;
esac
