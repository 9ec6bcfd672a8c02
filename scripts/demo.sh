#!/usr/bin/env bash
# A self-contained pgward demo: throwaway cluster, WAL archiving, a full backup, a
# change, a point-in-time restore to just before the change, and a check of the rows.
# Runs as root (servers then run as the 'postgres' user) or as an ordinary user.
set -euo pipefail
cd "$(dirname "$0")/.."

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
BASE=${BASE:-/tmp/pgward-demo}
PORT=${PORT:-55499}
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "installing PostgreSQL 15 if missing"
bash scripts/install-test-deps.sh 15

step "building pgward (release; the first build compiles every dependency: about 5 minutes on 2 cores)"
cargo build --release
install -d -m 755 "$BASE"
install -m 755 target/release/pgward "$BASE/pgward"   # somewhere the postgres user can run it
PGWARD="$BASE/pgward"

if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --create-home postgres
    as_pg() { runuser -u postgres -- env PATH="$PGBIN:$PATH" "$@"; }
else
    as_pg() { env PATH="$PGBIN:$PATH" "$@"; }
fi

for d in "$BASE/data" "$BASE/restored"; do
    [ -f "$d/postmaster.pid" ] && as_pg pg_ctl -D "$d" -m immediate -w stop >/dev/null 2>&1 || true
done
rm -rf "$BASE/data" "$BASE/restored" "$BASE/repo" "$BASE"/*.log
install -d -m 700 "$BASE/repo"
[ "$(id -u)" = 0 ] && chown -R postgres: "$BASE"

export PGHOST="$BASE" PGPORT="$PORT" PGUSER=postgres PGDATABASE=postgres
REPO_OPTS="--repo $BASE/repo --stanza demo"
pgw() { as_pg env PGHOST="$PGHOST" PGPORT="$PGPORT" PGUSER="$PGUSER" "$PGWARD" $REPO_OPTS "$@"; }
sql() { as_pg psql -X -Atq -v ON_ERROR_STOP=1 -h "$BASE" -p "$1" -d postgres -c "$2"; }

step "creating a throwaway cluster with data checksums in $BASE/data"
as_pg initdb -k -U postgres --auth=trust -D "$BASE/data" >/dev/null
cat >> "$BASE/data/postgresql.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$BASE'
wal_level = replica
archive_mode = on
archive_command = '$PGWARD $REPO_OPTS archive-push %p'
CONF
as_pg pg_ctl -D "$BASE/data" -l "$BASE/source.log" -w start >/dev/null
echo "archive_command = $PGWARD $REPO_OPTS archive-push %p"

step "pgward stanza-create"
pgw stanza-create

step "loading data (pgbench scale 5) and a small orders table"
as_pg pgbench -i -s 5 -q -h "$BASE" -p "$PORT" postgres 2>&1 | tail -1
sql "$PORT" "CREATE TABLE orders (id int PRIMARY KEY, item text); INSERT INTO orders SELECT g, 'item ' || g FROM generate_series(1, 1000) g"

step "pgward backup --type full"
pgw backup --type full

step "a change we will want to undo"
sql "$PORT" "INSERT INTO orders VALUES (1001, 'good order')"
TARGET=$(sql "$PORT" "SELECT now()")
sleep 1
sql "$PORT" "DELETE FROM orders WHERE id <= 500"   # the mistake
sql "$PORT" "SELECT pg_switch_wal()" >/dev/null
echo "recovery target: $TARGET (after the good insert, before the mistaken delete)"
echo "rows now: $(sql "$PORT" "SELECT count(*) FROM orders")"

step "pgward info"
sleep 2
pgw info

step "pgward verify"
pgw verify

step "pgward restore --target-time '$TARGET' --target-action promote"
pgw restore --pgdata "$BASE/restored" --target-time "$TARGET" --target-action promote --archive-mode off

step "starting the restored cluster (recovers to the target, then promotes)"
RPORT=$((PORT + 1))
echo "port = $RPORT" >> "$BASE/restored/postgresql.conf"
as_pg pg_ctl -D "$BASE/restored" -l "$BASE/restored.log" -w -t 120 start >/dev/null
for _ in $(seq 1 120); do
    [ "$(sql "$RPORT" "SELECT pg_is_in_recovery()")" = f ] && break
    sleep 0.5
done

step "checking the restored rows"
ROWS=$(sql "$RPORT" "SELECT count(*) FROM orders")
GOOD=$(sql "$RPORT" "SELECT count(*) FROM orders WHERE id = 1001")
echo "restored orders: $ROWS rows (expected 1001), good order present: $GOOD (expected 1)"

as_pg pg_ctl -D "$BASE/restored" -m fast -w stop >/dev/null
as_pg pg_ctl -D "$BASE/data" -m fast -w stop >/dev/null
if [ "$ROWS" = 1001 ] && [ "$GOOD" = 1 ]; then
    step "demo passed: the restore undid the mistake and kept the good insert"
    echo "(the demo's clusters and repository stay in $BASE for a look; rm -rf $BASE removes them)"
else
    step "demo FAILED"; exit 1
fi
