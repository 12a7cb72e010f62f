#!/usr/bin/env bash
# The layer rule of src/lib.rs, checked: a layer imports only from layers below it (or
# beside it where the table says so), and a command never imports another command. `core`
# also does no I/O and reads no clock, environment or randomness. Exits 1 on a violation.
set -euo pipefail
cd "$(dirname "$0")/../src"

# layer -> the crate modules it may name (itself included)
declare -A may=(
  [core]="core"
  [pg]="core pg"
  [storage]="core storage"
  [pipeline]="core pipeline"
  [config]="core pg storage pipeline config"
  [archive]="core pg storage pipeline config archive"
  [ingest]="core pg storage pipeline config archive ingest"
  [restore]="core pg storage pipeline config archive restore"
  [sqlite]="core pg storage pipeline config archive ingest restore sqlite"
  [cmd]="core pg storage pipeline config archive ingest restore sqlite cmd"
)
bad=0
for layer in "${!may[@]}"; do
  for f in $( { ls "$layer.rs" 2>/dev/null; find "$layer" -name '*.rs' 2>/dev/null; } ); do
    # every `crate::X` named in the file, including inside `use crate::{X, Y}`
    for m in $(grep -oE 'crate::(\{[^}]*\}|[a-z_0-9]+)' "$f" | sed -E 's/^crate:://; s/[{},]/ /g; s/::[a-zA-Z_:0-9]*//g' | tr ' ' '\n' | sed '/^$/d' | sort -u); do
      if [[ " ${may[$layer]} " != *" $m "* ]]; then
        echo "src/$f: layer '$layer' uses crate::$m (allowed: ${may[$layer]})"; bad=1
      fi
    done
  done
done
# a command never imports another command (cmd/mod.rs holds what they share)
cmds=$(ls cmd/*.rs | xargs -n1 basename | sed 's/\.rs$//' | grep -vx mod)
for f in cmd/*.rs; do
  self=$(basename "$f" .rs)
  [[ $self == mod ]] && continue
  for c in $cmds; do
    [[ $c == "$self" ]] && continue
    if grep -nE "(crate::cmd::|super::)\{?[^;]*\b$c\b" "$f" | grep -vE '^\s*[0-9]+:\s*//' >/dev/null; then
      echo "src/$f: command '$self' imports command '$c'"; bad=1
    fi
  done
done
# core is pure: no I/O, clock, environment or randomness
if grep -nE 'tokio|std::fs|std::env|std::net|SystemTime::now|Instant::now|rand::' -r core | grep -vE '^\S+:[0-9]+:\s*//'; then
  echo "src/core: must not do I/O or read the clock, the environment or randomness (pass them in)"; bad=1
fi
if ((bad)); then
  echo "error: the layer rule is broken (see src/lib.rs and docs/ARCHITECTURE.md)" >&2
  exit 1
fi
echo "layers ok"
