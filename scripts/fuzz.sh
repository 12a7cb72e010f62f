#!/usr/bin/env bash
# Fuzzes every decoder of bytes lifeboat did not write (the targets of fuzz/, see
# docs/RELIABILITY.md), one target after another, then minimizes each corpus.
#
#   scripts/fuzz.sh                    # every target for 60 s
#   scripts/fuzz.sh 300                # every target for 300 s
#   scripts/fuzz.sh 600 protocol ...   # only these targets
#
# Installs cargo-fuzz when it is missing (into ~/.cargo/bin). Builds on the stable toolchain
# with RUSTC_BOOTSTRAP=1 (libFuzzer's sanitizer flags are unstable), falling back to
# `cargo +nightly`. One fuzzing process at a time (the machine has 2 shared cores).
#
# New inputs that add coverage land in fuzz/corpus/<target>/; the hand-made seeds
# (seed-*) are always kept. Every run appends a line to fuzz/runs.tsv (the record the
# RELIABILITY doc sums up). A crash leaves its input in fuzz/artifacts/<target>/, the
# remaining targets still run, and the script exits 1.
# The saved corpus is replayed as an ordinary test: cargo test --test it fuzz_corpus
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

log() { printf '[fuzz] %s\n' "$*" >&2; }

secs=${1:-60}
[[ $secs =~ ^[0-9]+$ ]] || { echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]" >&2; exit 2; }
shift || true
all=(protocol basebackup object wal_inventory wal_names conninfo config)
targets=("$@")
((${#targets[@]})) || targets=("${all[@]}")

export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi

# Which toolchain builds a fuzz target here: stable with RUSTC_BOOTSTRAP, else nightly.
fuzz=(cargo fuzz)
if ! RUSTC_BOOTSTRAP=1 cargo fuzz build "${targets[0]}" >/dev/null 2>build.err; then
  if cargo +nightly fuzz build "${targets[0]}" >/dev/null 2>>build.err; then
    fuzz=(cargo +nightly fuzz)
  else
    cat build.err >&2; rm -f build.err
    log "cargo fuzz build failed on stable (RUSTC_BOOTSTRAP=1) and on nightly"; exit 1
  fi
else
  export RUSTC_BOOTSTRAP=1
fi
rm -f build.err
log "building with: ${RUSTC_BOOTSTRAP:+RUSTC_BOOTSTRAP=1 }${fuzz[*]}"
"${fuzz[@]}" build >/dev/null

triple=$(rustc -vV | sed -n 's/^host: //p')
bin=target/$triple/release
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -f runs.tsv ]] || printf 'date\tcommit\ttarget\tseconds\texecs\tcorpus\tresult\n' >runs.tsv

failed=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log "$t: fuzzing for ${secs}s"
  out=$(mktemp)
  set +e
  # -timeout: an input taking over 10 s is a hang; -rss_limit_mb: libFuzzer's default,
  # spelled out (a single allocation past it is reported as a crash too).
  "$bin/$t" -artifact_prefix="artifacts/$t/" -max_total_time="$secs" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 "corpus/$t" 2>"$out"
  status=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out" | tail -1)
  if ((status == 0)); then
    result=ok
  else
    result="crash($(grep -m1 -oE 'ERROR: libFuzzer: [a-z-]+|panicked at [^ ]+' "$out" | tr -s ' ' _ || true))"
    failed+=("$t")
    grep -E "panicked at|ERROR: libFuzzer|Test unit written to|SUMMARY" "$out" >&2 || tail -20 "$out" >&2
  fi
  # Minimize: the seeds first (so every one is kept), then whatever else adds coverage.
  min=$(mktemp -d)
  find "corpus/$t" -maxdepth 1 -type f -name 'seed-*' -exec cp {} "$min/" \;
  rest=$(mktemp -d)
  find "corpus/$t" -maxdepth 1 -type f ! -name 'seed-*' -exec mv {} "$rest/" \;
  if "$bin/$t" -merge=1 "$min" "$rest" >/dev/null 2>&1; then
    find "$min" -maxdepth 1 -type f ! -name 'seed-*' -exec mv {} "corpus/$t/" \;
  else
    log "$t: minimizing failed, corpus kept as it was"
    mv "$rest"/* "corpus/$t/" 2>/dev/null || true
  fi
  rm -rf "$min" "$rest" "$out"
  n=$(find "corpus/$t" -type f | wc -l)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$rev" "$t" "$secs" "${execs:-?}" "$n" "$result" >>runs.tsv
  log "$t: ${execs:-?} executions, $result, corpus $n inputs"
done

log "corpus: $(du -sh corpus | cut -f1) in $(find corpus -type f | wc -l) files"
if ((${#failed[@]})); then
  log "crashes in: ${failed[*]} (inputs in fuzz/artifacts/<target>/; reproduce with cd fuzz && cargo fuzz run <target> <input>)"
  exit 1
fi
