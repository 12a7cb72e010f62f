#!/usr/bin/env bash
# Install the two S3-compatible servers the integration tests use as providers (tests/it/support/s3.rs).
# Both are real, independent implementations; the tests start them on 127.0.0.1 only.
#
#   scripts/install-s3.sh
#
#   moto     moto's server (Python, PyPI `moto[server]`): the reference for S3 semantics
#            in the tests; it enforces Object Lock (retention, versions).
#            -> <cache>/s3/moto/bin/moto_server
#   s3s-fs   the s3s crate's file-system server (Rust, crates.io `s3s-fs`): signature
#            checking (bad credentials), CRC32 checksums, multipart; no Object Lock.
#            -> <cache>/s3/s3s-fs/bin/s3s-fs
#
# Garage (`cargo install garage`) was the first choice for the second server, but it takes
# far too long to build on a 2-core machine (see docs/DESIGN.md); LIFEBOAT_S3_GARAGE=1
# builds it as well, into <cache>/s3/garage/bin/garage, for whoever wants it.
#
# Cache location (tests/it/support/host.rs and scripts/install-pg.sh use the same rule):
# $LIFEBOAT_CACHE, else /var/cache/lifeboat as root, else $HOME/.cache/lifeboat.
# A second run is a fast no-op: each server has a stamp file holding its version.
#
# Env:
#   LIFEBOAT_CACHE            cache root (see above)
#   LIFEBOAT_MOTO_VERSION     moto version (default below)
#   LIFEBOAT_S3S_FS_VERSION   s3s-fs version (default below)
#   LIFEBOAT_S3_GARAGE=1      also build Garage (slow)
set -euo pipefail

MOTO_VERSION="${LIFEBOAT_MOTO_VERSION:-5.2.5}"
# 0.14.1: the newest s3s-fs whose rust-version (1.92) the CI toolchain meets.
S3S_FS_VERSION="${LIFEBOAT_S3S_FS_VERSION:-0.14.1}"
GARAGE_VERSION="${LIFEBOAT_GARAGE_VERSION:-2.5.0}"

log() { printf '[install-s3] %s\n' "$*" >&2; }
die() { printf '[install-s3] ERROR: %s\n' "$*" >&2; exit 1; }

EUID_NOW="$(id -u)"
if [[ -n "${LIFEBOAT_CACHE:-}" ]]; then
  CACHE="$LIFEBOAT_CACHE"
elif [[ "$EUID_NOW" == 0 ]]; then
  CACHE="/var/cache/lifeboat"
else
  CACHE="${HOME:?HOME is not set}/.cache/lifeboat"
fi
ROOT="$CACHE/s3"
mkdir -p "$ROOT"
chmod 0755 "$CACHE" "$ROOT" 2>/dev/null || true

if command -v flock >/dev/null 2>&1; then
  exec 9>"$CACHE/.install-s3.lock"
  flock -w 1800 9 || die "timed out waiting for $CACHE/.install-s3.lock"
fi

elapsed() { echo "$(( $(date +%s) - $1 ))s"; }

install_moto() {
  local dest="$ROOT/moto" stamp="$ROOT/moto/.lifeboat-stamp" want="moto[server]==$MOTO_VERSION"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$dest/bin/moto_server" ]]; then
    log "moto: already installed ($want)"
    return 0
  fi
  local t0; t0="$(date +%s)"
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    if [[ "$EUID_NOW" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
      log "moto: installing python3-venv"
      DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >&2
    else
      die "python3 -m venv is not available (apt-get install python3-venv)"
    fi
  fi
  rm -rf "$dest"
  log "moto: creating a venv and installing $want"
  python3 -m venv "$dest"
  "$dest/bin/pip" install --quiet --disable-pip-version-check "$want" >&2
  "$dest/bin/moto_server" --help >/dev/null || die "moto_server does not run"
  echo "$want" >"$stamp"
  log "moto: installed in $(elapsed "$t0")"
}

# cargo install NAME VERSION [features] into $ROOT/NAME, building in a throwaway target dir.
install_crate() {
  local name="$1" ver="$2" features="${3:-}" bin="${4:-$1}"
  local dest="$ROOT/$name" stamp="$ROOT/$name/.lifeboat-stamp" want="$name==$ver${3:+ +$3}"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$dest/bin/$bin" ]]; then
    log "$name: already installed ($want)"
    return 0
  fi
  command -v cargo >/dev/null || die "cargo is needed to build $name"
  local t0 target; t0="$(date +%s)"
  target="$(mktemp -d "$ROOT/.build-$name-XXXXXX")"
  # shellcheck disable=SC2064
  trap "rm -rf '$target'" EXIT
  log "$name: cargo install $name@$ver (this is the slow part of a cold install)"
  local args=(install --quiet --locked --force --root "$dest" --version "=$ver" "$name")
  [[ -n "$features" ]] && args+=(--features "$features")
  CARGO_TARGET_DIR="$target" cargo "${args[@]}" >&2
  rm -rf "$target"
  trap - EXIT
  [[ -x "$dest/bin/$bin" ]] || die "$dest/bin/$bin missing after cargo install"
  echo "$want" >"$stamp"
  log "$name: installed in $(elapsed "$t0")"
}

install_moto
install_crate s3s-fs "$S3S_FS_VERSION" binary
if [[ "${LIFEBOAT_S3_GARAGE:-0}" == 1 ]]; then
  install_crate garage "$GARAGE_VERSION"
fi

echo "S3-compatible test servers (cache: $CACHE):"
echo "  moto     $ROOT/moto/bin/moto_server  ($(cat "$ROOT/moto/.lifeboat-stamp"))"
echo "  s3s-fs   $ROOT/s3s-fs/bin/s3s-fs  ($(cat "$ROOT/s3s-fs/.lifeboat-stamp"))"
