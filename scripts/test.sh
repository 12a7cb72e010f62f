#!/usr/bin/env bash
# Installs what the tests need (PostgreSQL 14-18, age, zstd, openssl), then runs the whole
# suite: formatting, clippy, unit tests and the integration tests against real servers.
#
#   scripts/test.sh                         # everything
#   LIFEBOAT_PG_MAJORS="15" scripts/test.sh # only some majors for the per-version tests
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[test] %s\n' "$*" >&2; }

need_apt=()
command -v openssl >/dev/null || need_apt+=(openssl)
command -v age-keygen >/dev/null || need_apt+=(age)
command -v runuser >/dev/null || need_apt+=(util-linux)
command -v faketime >/dev/null || need_apt+=(faketime) # clock-skew test (libfaketime)
if ((${#need_apt[@]})); then
  if [[ $(id -u) == 0 ]]; then
    log "installing ${need_apt[*]}"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    log "missing ${need_apt[*]}: install them (apt-get install ${need_apt[*]})"; exit 1
  fi
fi

bash scripts/install-pg.sh
# Two different S3-compatible servers for the provider tests (moto, s3s-fs), on loopback.
bash scripts/install-s3.sh

log "layer rule (scripts/check-layers.sh)"
bash scripts/check-layers.sh
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
log "cargo test"
# Integration tests start several PostgreSQL servers each; two at a time fit 2 cores.
out=$(mktemp)
trap 'rm -f "$out"' EXIT
set +e
cargo test --lib --bins --tests -- --test-threads="${LIFEBOAT_TEST_THREADS:-2}" 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
set -e
# The fault campaign, short: a handful of kill -9s mixed with provider faults, a server
# restart and a walsender termination (scripts/chaos.sh; the full run is 50 kills).
log "fault campaign (scripts/chaos.sh, 5 kills)"
chaos=0
if [[ $status == 0 ]]; then
  LIFEBOAT_BIN=target/debug/lifeboat LIFEBOAT_CHAOS_KILLS=5 bash scripts/chaos.sh || chaos=1
  echo "test result: $([[ $chaos == 0 ]] && echo ok || echo FAILED). $((1 - chaos)) passed; $chaos failed; 0 ignored (scripts/chaos.sh)" | tee -a "$out"
fi
# docker-compose.yml run for real: locally built images, stream, backup + drill, torn down
# (scripts/compose-test.sh; about 1 minute with its image cache warm, 9 cold).
compose=0
if [[ $status == 0 ]]; then
  log "docker-compose stack (scripts/compose-test.sh)"
  bash scripts/compose-test.sh || compose=1
  echo "test result: $([[ $compose == 0 ]] && echo ok || echo FAILED). $((1 - compose)) passed; $compose failed; 0 ignored (scripts/compose-test.sh)" | tee -a "$out"
fi
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1); if ($i ~ /^ignored/) s += $(i-1) } }
     END { printf "%d passed, %d failed, %d skipped\n", p, f, s }' "$out"
[[ $status == 0 ]] || exit "$status"
[[ $chaos == 0 ]] || exit "$chaos"
exit "$compose"
