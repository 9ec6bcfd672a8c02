#!/usr/bin/env bash
# bench-memory.sh -- peak resident memory of pgward's backup, restore and verify at
# --jobs 2, 8 and 32, on a local repository and on a local S3 server (moto), against the
# 64 MiB budget of issue 13. As root (the cluster runs as `postgres`).
#
#   bash scripts/bench-memory.sh [PGWARD_BINARY] [SCALE]
#
# Defaults: target/release/pgward (built if missing), pgbench scale 10. Uses Debian's
# PostgreSQL 15 and GNU time (installed if missing) and scripts/moto.sh; works under
# $BASE (default /tmp/pgward-bench-memory), removed at the end. Prints one line per
# command: its peak RSS and whether it is under 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_SRC=${1:-target/release/pgward}
SCALE=${2:-10}
BASE=${BASE:-/tmp/pgward-bench-memory}
PG=/usr/lib/postgresql/15/bin
PORT=${PORT:-55432}
MOTO_PORT=${MOTO_PORT:-55433}
[ -x "$BIN_SRC" ] || cargo build --release
command -v /usr/bin/time >/dev/null 2>&1 || [ -x /usr/bin/time ] || apt-get install -y time >/dev/null
rm -rf "$BASE"; mkdir -p "$BASE"; chown postgres "$BASE"
cp "$BIN_SRC" "$BASE/pgward"; chmod 755 "$BASE/pgward"; BIN=$BASE/pgward
cleanup() {
  runuser -u postgres -- "$PG/pg_ctl" -D "$BASE/data" -m immediate -w stop >/dev/null 2>&1 || true
  bash scripts/moto.sh stop "$BASE/moto" >/dev/null 2>&1 || true
  rm -rf "$BASE"
}
trap cleanup EXIT
runuser -u postgres -- "$PG/initdb" -D "$BASE/data" -k >/dev/null 2>&1
cat >> "$BASE/data/postgresql.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$BASE'
archive_mode = on
CONF
runuser -u postgres -- "$PG/pg_ctl" -D "$BASE/data" -l "$BASE/server.log" -w start >/dev/null
runuser -u postgres -- "$PG/pgbench" -h "$BASE" -p "$PORT" -i -s "$SCALE" -q postgres >/dev/null 2>&1
bash scripts/moto.sh start "$MOTO_PORT" "$BASE/moto" >/dev/null
python3 -c "import urllib.request; urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:$MOTO_PORT/memory', method='PUT')).read()"
printf '[global]\ns3-endpoint = "http://127.0.0.1:%s"\ns3-region = "us-east-1"\ns3-uri-style = "path"\ns3-key = "test"\ns3-key-secret = "test"\n' "$MOTO_PORT" > "$BASE/s3.toml"
chown postgres "$BASE/s3.toml"; chmod 600 "$BASE/s3.toml"

run() { # label, command...
  local label=$1; shift
  if ! runuser -u postgres -- /usr/bin/time -f "%M" -o "$BASE/rss" "$@" >/dev/null 2>"$BASE/err"; then
    echo "$label FAILED: $(tail -3 "$BASE/err")"; return
  fi
  local mib=$(( $(cat "$BASE/rss") / 1024 ))
  printf "%-26s %4d MiB  %s\n" "$label" "$mib" "$([ "$mib" -lt 64 ] && echo "under 64 MiB" || echo "OVER 64 MiB")"
}
for where in local s3; do
  if [ $where = local ]; then R="--repo $BASE/repo"; else R="--repo s3://memory/r --config $BASE/s3.toml"; fi
  G="$R --stanza main --pg-host $BASE --pg-port $PORT --pg-user postgres --pgdata $BASE/data"
  runuser -u postgres -- $BIN $G stanza-create >/dev/null
  runuser -u postgres -- "$PG/psql" -h "$BASE" -p "$PORT" -qAt \
    -c "ALTER SYSTEM SET archive_command = '$BIN $R --stanza main archive-push %p'" \
    -c "SELECT pg_reload_conf()" postgres >/dev/null
  for j in 2 8 32; do run "$where backup --jobs $j" $BIN $G backup --jobs $j; done
  for j in 2 8 32; do
    rm -rf "$BASE/restore"; install -d -o postgres -m 700 "$BASE/restore"
    run "$where restore --jobs $j" $BIN $G restore --jobs $j --pgdata "$BASE/restore"
    run "$where verify --jobs $j" $BIN $G verify --jobs $j
  done
done
