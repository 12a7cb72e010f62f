#!/usr/bin/env bash
# The strategy's SQLite story (issue 14): a service's WAL-mode database keeps being written
# while lifeboat snapshots it (a full snapshot, then page deltas); at time T someone runs a
# destructive statement; `lifeboat sqlite restore --target-time T` brings the data back
# beside the damaged database, and a drill checks the newest snapshot. About 10 seconds.
#
#   scripts/demo-sqlite.sh       # LIFEBOAT_DEMO_BIN: a lifeboat binary to use instead of a
#                                # fresh release build
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\n== %s\n' "$*"; }
for c in sqlite3 age-keygen python3; do
  command -v "$c" >/dev/null || { echo "error: $c is not installed" >&2; exit 1; }
done
if [[ -n "${LIFEBOAT_DEMO_BIN:-}" ]]; then
  LB="$LIFEBOAT_DEMO_BIN"
else
  say "building lifeboat (release)"
  cargo build --release --quiet
  LB="$PWD/target/release/lifeboat"
fi
WORK=$(mktemp -d /tmp/lifeboat-demo-sqlite.XXXXXX)
WRITER=""
cleanup() { [[ -n $WRITER ]] && kill "$WRITER" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
DB="$WORK/shop.db"
age-keygen -o "$WORK/restore-host.key" 2>/dev/null
cat > "$WORK/lifeboat.toml" <<EOF
# A host of SQLite services: no [postgres] section.
[encryption]
recipients = ["$(age-keygen -y "$WORK/restore-host.key")"]
[wal]
spool_dir = "$WORK/spool"
[[storage]]
name = "local"
url = "file://$WORK/archive"
[[sqlite]]
name = "shop"
path = "$DB"
check_sql = "SELECT count(*) >= 1000 FROM orders"
EOF
lb() { "$LB" --config "$WORK/lifeboat.toml" --identity "$WORK/restore-host.key" "$@"; }

say "a WAL-mode database with 1000 orders, and a writer adding one every 10 ms"
sqlite3 "$DB" >/dev/null <<'EOF'
PRAGMA journal_mode=WAL;
CREATE TABLE orders(id INTEGER PRIMARY KEY, customer TEXT, total INTEGER);
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i < 1000)
INSERT INTO orders(customer, total) SELECT 'customer ' || i, i * 3 FROM c;
EOF
python3 - "$DB" <<'EOF' &
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=5)
while True:
    c.execute("INSERT INTO orders(customer, total) VALUES ('walk-in', 42)")
    time.sleep(0.01)
EOF
WRITER=$!
sleep 1

say "lifeboat sqlite snapshot (the writer keeps writing)"
lb sqlite snapshot
sleep 1
lb sqlite snapshot
sleep 1
lb sqlite snapshot
T=$(date -u '+%Y-%m-%d %H:%M:%S.%6N+00')
echo "orders before the accident: $(sqlite3 "$DB" 'SELECT count(*) FROM orders')   (T = $T)"

say "the accident, one second after T: DELETE FROM orders WHERE total < 1000"
sleep 1
sqlite3 -cmd ".timeout 5000" "$DB" "DELETE FROM orders WHERE total < 1000"
echo "orders left: $(sqlite3 "$DB" 'SELECT count(*) FROM orders')"
lb sqlite snapshot
kill "$WRITER"; WRITER=""

say "lifeboat sqlite list"
lb sqlite list

say "lifeboat sqlite restore shop --target-time '$T' (beside the damaged database)"
lb sqlite restore shop --target-time "$T" --to "$WORK/shop-restored.db"
echo "orders in the restored copy (the newest snapshot at or before T): $(sqlite3 "$WORK/shop-restored.db" 'SELECT count(*) FROM orders')"
echo "of them with total < 1000 (deleted by the accident): $(sqlite3 "$WORK/shop-restored.db" 'SELECT count(*) FROM orders WHERE total < 1000')"

say "lifeboat sqlite drill shop: the newest snapshot holds the damage, and its check_sql says so"
lb sqlite drill shop || true
say "lifeboat verify --full"
lb verify --full
