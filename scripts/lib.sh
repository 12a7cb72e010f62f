# Sourced by the scripts: where install-pg.sh put PostgreSQL (same rule as
# tests/it/support/host.rs), and the release build of lifeboat.
pg_cache_dir() {
  if [[ -n "${LIFEBOAT_CACHE:-}" ]]; then echo "$LIFEBOAT_CACHE"
  elif [[ $(id -u) == 0 ]]; then echo /var/cache/lifeboat
  else echo "$HOME/.cache/lifeboat"; fi
}

# Install MAJOR if needed and print its bin directory.
pg_bin_dir() {
  LIFEBOAT_PG_MAJORS="$1" bash scripts/install-pg.sh >/dev/null
  echo "$(pg_cache_dir)/pg/$1/bin"
}

need_cmd() { # need_cmd COMMAND DEBIAN-PACKAGE
  command -v "$1" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }
}
