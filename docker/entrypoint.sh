#!/bin/sh
# First start: make the age key pair and the configuration in /keys, then run the command.
set -eu
if [ ! -f /keys/identity.txt ]; then
  age-keygen -o /keys/identity.txt 2>/dev/null
  chmod 600 /keys/identity.txt
fi
if [ ! -f /keys/lifeboat.toml ]; then
  recipient=$(age-keygen -y /keys/identity.txt)
  sed "s|@RECIPIENT@|$recipient|" /docker/lifeboat.toml.in > /keys/lifeboat.toml
fi
export LIFEBOAT_CONFIG=/keys/lifeboat.toml
exec "$@"
