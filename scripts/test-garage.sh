#!/usr/bin/env bash
# Second-tier test, not run by CI: pgward against a real 3-node Garage S3 cluster
# (replication factor 3, so writes and reads need 2 of the 3 nodes), with nodes killed
# and restarted under it. Garage checks request signatures (moto does not).
#
#   bash scripts/test-garage.sh
#
# Scenario, each step printed as PASS/FAIL (exit status non-zero on any failure):
#   1. Garage is installed once with `cargo install garage --locked` into
#      $GARAGE_ROOT (default /var/cache/pgward/garage; 9-12 minutes on 2 cores the first time,
#      skipped when the pinned version is there), and pgward is built (`cargo build
#      --release`; PGWARD=/path/to/pgward uses that binary instead).
#   2. Three Garage nodes on 127.0.0.1, each with its own config, ports and
#      data/meta dirs, one rpc_secret; connected, laid out (RF 3), a key and a bucket.
#   3. A cluster (initdb -k, archiving through pgward), pgbench -i -s 5,
#      stanza-create, full backup.
#   4. One node killed (-9): changes, incremental backup, more changes, a restore
#      point, changes after it, WAL switch archived: all with 2 of 3 nodes.
#   5. The node restarted: restore of the incremental to the restore point, started
#      on another port, its data compared with the source's at the restore point.
#   6. Two nodes stopped: `info` and `backup` fail within $FAIL_WITHIN seconds
#      (PGWARD_S3_RETRY_SECONDS=10) with a message naming the bucket.
#   7. Nodes restarted: `info` lists exactly the two complete backups, `verify` passes.
# Everything started is stopped on exit. Works as root (PostgreSQL and pgward then run
# as the `postgres` user) or as an ordinary user.
#
# Environment: PGWARD (binary to test), GARAGE_VERSION (2.5.0), GARAGE_ROOT,
# WORK (work dir, default /tmp/pgward-garage, wiped at start), PGBIN
# (/usr/lib/postgresql/15/bin), PG_PORT (55610; the restore uses +1),
# GARAGE_PORT_BASE (29100: node N listens on base+10N for S3, +1 RPC, +3 admin),
# FAIL_WITHIN (30), KEEP=1 (leave the work dir behind).
set -euo pipefail
cd "$(dirname "$0")/.."
T0=$SECONDS

# shellcheck source=scripts/garage-lib.sh
. scripts/garage-lib.sh   # GARAGE_VERSION, GARAGE_ROOT, GARAGE, garage_*
WORK=${WORK:-/tmp/pgward-garage}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PG_PORT=${PG_PORT:-55610}
RPORT=$((PG_PORT + 1))
# Below Linux's ephemeral range (32768-60999), so no outgoing connection holds one.
GARAGE_PORT_BASE=${GARAGE_PORT_BASE:-29100}
FAIL_WITHIN=${FAIL_WITHIN:-30}
BUCKET=pgward-garage-test
REGION=$GARAGE_REGION
STANZA=main
RP_NAME=garage_rp

PASSED=0 FAILED=0
step() { printf '\n\033[1m== [%4ss] %s\033[0m\n' "$((SECONDS - T0))" "$*"; }
pass() { PASSED=$((PASSED + 1)); printf '\033[32mPASS\033[0m %s\n' "$*"; }
fail() { FAILED=$((FAILED + 1)); printf '\033[31mFAIL\033[0m %s\n' "$*"; }
die() { fail "$*"; exit 1; }   # a step the rest cannot do without
need() { check "$@" || exit 1; }   # a checked step the rest cannot do without
check() { # description, command...: PASS/FAIL by exit status
    local what=$1; shift
    if "$@"; then pass "$what"; else fail "$what"; return 1; fi
}

if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --create-home postgres
    as_pg() { runuser -u postgres -- env PATH="$PGBIN:$PATH" "$@"; }
    PG_OWNER=postgres
else
    as_pg() { env PATH="$PGBIN:$PATH" "$@"; }
    PG_OWNER=$(id -un)
fi

# ---- cleanup: everything started here is stopped on exit -------------------------------
declare -A GARAGE_PID=()
cleanup() {
    local rc=$? d i
    set +e
    for d in "$WORK/pg/restored" "$WORK/pg/data"; do
        [ -f "$d/postmaster.pid" ] && as_pg pg_ctl -D "$d" -m immediate -w stop >/dev/null 2>&1
    done
    for i in "${!GARAGE_PID[@]}"; do stop_node "$i"; done   # TERM, KILL after 10s
    if [ "${KEEP:-0}" != 1 ] && [ "$FAILED" = 0 ] && [ "$rc" = 0 ]; then rm -rf "$WORK"; fi
    printf '\ntest-garage: total %ss\n' "$((SECONDS - T0))"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- 1. Garage and pgward ---------------------------------------------------------------
step "Garage $GARAGE_VERSION in $GARAGE_ROOT"
garage_install || die "garage $GARAGE_VERSION in $GARAGE_ROOT"

[ -x "$PGBIN/pg_ctl" ] || bash scripts/install-test-deps.sh 15

for d in "$WORK/pg/restored" "$WORK/pg/data"; do   # a previous run's, if it was killed
    [ -f "$d/postmaster.pid" ] && as_pg pg_ctl -D "$d" -m immediate -w stop >/dev/null 2>&1 || true
done
rm -rf "$WORK"
install -d -m 755 "$WORK" "$WORK/bin"
# pgward keeps host-local locks in $TMPDIR/pgward-locks and refuses one another user owns:
# in a shared /tmp, root (the test suite) may have made it first
install -d -m 700 -o "$PG_OWNER" "$WORK/tmp"
export TMPDIR=$WORK/tmp

step "pgward"
if [ -z "${PGWARD:-}" ]; then
    cargo build --release --quiet
    PGWARD=target/release/pgward
fi
install -m 755 "$PGWARD" "$WORK/bin/pgward"   # somewhere the postgres user can run it
echo "$PGWARD ($(sha256sum "$PGWARD" | cut -c1-16)…): $("$WORK/bin/pgward" --version)"
PGW=$WORK/bin/pgward

# ---- 2. a 3-node Garage cluster ---------------------------------------------------------
s3_port() { echo $((GARAGE_PORT_BASE + 10 * $1)); }
rpc_port() { echo $((GARAGE_PORT_BASE + 10 * $1 + 1)); }
admin_port() { echo $((GARAGE_PORT_BASE + 10 * $1 + 3)); }
gcli() { local n=$1; shift; "$GARAGE" -c "$WORK/garage/n$n.toml" "$@"; }

start_node() { # n: until its RPC answers and its S3 API listens
    local n=$1 log=$WORK/garage/n$1.log from
    touch "$log"
    from=$(($(stat -c %s "$log") + 1))   # this start's part of the log
    setsid "$GARAGE" -c "$WORK/garage/n$n.toml" server \
        >>"$WORK/garage/n$n.log" 2>&1 </dev/null &
    GARAGE_PID[$n]=$!
    disown "${GARAGE_PID[$n]}"   # no "Killed" job notice when a node is killed on purpose
    garage_wait_up "${GARAGE_PID[$n]}" "$WORK/garage/n$n.toml" "$log" "$from" "$(s3_port "$n")" \
        || die "garage node $n"
}
stop_node() { # n [signal]
    local n=$1 sig=${2:-TERM} pid=${GARAGE_PID[$1]:-} i
    [ -n "$pid" ] || return 0
    kill -"$sig" "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    unset "GARAGE_PID[$n]"
}
wait_health() { garage_wait_health "$WORK/garage/n1.toml" "$@"; }   # status, seconds

step "3-node Garage cluster on 127.0.0.1 (replication factor 3)"
for n in 1 2 3; do
    for p in $(s3_port $n) $(rpc_port $n) $(admin_port $n); do
        (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && die "port $p is in use (set GARAGE_PORT_BASE)"
    done
done
install -d -m 700 "$WORK/garage"
RPC_SECRET=$(garage_secret 32)
ADMIN_TOKEN=$(garage_secret 16)
for n in 1 2 3; do
    garage_write_config "$WORK/garage/n$n.toml" "$WORK/garage/n$n" 3 "$RPC_SECRET" \
        "$(s3_port $n)" "$(rpc_port $n)" "$(admin_port $n)" "$ADMIN_TOKEN"
    start_node "$n"
done
declare -A NODE_ID=()
for n in 1 2 3; do NODE_ID[$n]=$(gcli "$n" node id -q); echo "node $n: ${NODE_ID[$n]}"; done
for n in 2 3; do gcli 1 node connect "${NODE_ID[$n]}" >/dev/null || die "garage node connect $n"; done
garage_layout "$WORK/garage/n1.toml" 1G "${NODE_ID[1]}" "${NODE_ID[2]}" "${NODE_ID[3]}" || die "garage layout"
garage_key_bucket "$WORK/garage/n1.toml" "$BUCKET" pgward "$WORK/garage/key.txt" || die "garage key and bucket"
KEY_ID=$GARAGE_KEY_ID KEY_SECRET=$GARAGE_KEY_SECRET
gcli 1 status
pass "garage $("$GARAGE" --version | head -1 | awk '{print $2}'): 3 nodes, layout applied, key $KEY_ID, bucket $BUCKET"

# ---- 3. a cluster archiving into Garage, full backup ------------------------------------
CONF=$WORK/pgward.toml
cat >"$CONF" <<EOF
[global]
repo = "s3://$BUCKET/repo"
stanza = "$STANZA"
s3-endpoint = "http://127.0.0.1:$(s3_port 1)"
s3-region = "$REGION"
s3-uri-style = "path"
s3-key = "$KEY_ID"
s3-key-secret = "$KEY_SECRET"
EOF
chmod 600 "$CONF"
install -d -m 700 "$WORK/pg"
chown "$PG_OWNER" "$CONF" "$WORK/pg"

export PGHOST=$WORK/pg PGPORT=$PG_PORT PGUSER=postgres PGDATABASE=postgres
# pgward as the postgres user; PGWARD_S3_RETRY_SECONDS / PGWARD_S3_KEY_SECRET set on the
# call are passed on. A hang is cut at 15 minutes.
pgw() { as_pg env PGHOST="$PGHOST" PGPORT="$PGPORT" PGUSER="$PGUSER" \
    ${PGWARD_S3_RETRY_SECONDS:+PGWARD_S3_RETRY_SECONDS=$PGWARD_S3_RETRY_SECONDS} \
    ${PGWARD_S3_KEY_SECRET:+PGWARD_S3_KEY_SECRET=$PGWARD_S3_KEY_SECRET} \
    timeout "${PGW_TIMEOUT:-900}" "$PGW" --config "$CONF" "$@"; }
sql() { as_pg psql -X -Atq -v ON_ERROR_STOP=1 -h "$WORK/pg" -p "$1" -d postgres -c "$2"; }
# What is compared between the source and the restore.
STATE_SQL="SELECT (SELECT sum(abalance) || '/' || count(*) FROM pgbench_accounts)
  || ' history=' || (SELECT count(*) FROM pgbench_history)
  || ' branches=' || (SELECT md5(string_agg(b::text, ',' ORDER BY bid)) FROM pgbench_branches b)
  || ' orders=' || (SELECT md5(string_agg(o::text, ',' ORDER BY id)) FROM garage_orders o)"
wait_archived() { # segment, seconds: until pg_stat_archiver has archived it
    local seg=$1 secs=$2 i last
    for i in $(seq 1 $((secs * 2))); do
        last=$(sql "$PG_PORT" "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
        [[ -n $last && ! $last < $seg ]] && return 0   # same timeline: names sort as LSNs
        sleep 0.5
    done
    sql "$PG_PORT" "SELECT * FROM pg_stat_archiver" || true
    return 1
}
switch_wal() { sql "$PG_PORT" "SELECT pg_walfile_name(pg_switch_wal())"; }
info_json() { pgw --output json info; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

step "PostgreSQL 15 cluster archiving into s3://$BUCKET/repo through node 1"
as_pg initdb -k -U postgres --auth=trust -D "$WORK/pg/data" >/dev/null || die "initdb"
cat >>"$WORK/pg/data/postgresql.conf" <<CONF
port = $PG_PORT
listen_addresses = ''
unix_socket_directories = '$WORK/pg'
wal_level = replica
archive_mode = on
archive_command = '$PGW --config $CONF archive-push %p'
archive_timeout = 0
CONF
as_pg pg_ctl -D "$WORK/pg/data" -l "$WORK/pg/source.log" -w start >/dev/null || die "pg_ctl start"
as_pg pgbench -i -s 5 -q -h "$WORK/pg" -p "$PG_PORT" postgres >"$WORK/pg/pgbench-init.log" 2>&1 \
    || { cat "$WORK/pg/pgbench-init.log"; die "pgbench -i -s 5"; }
sql "$PG_PORT" "CREATE TABLE garage_orders (id int PRIMARY KEY, item text);
                INSERT INTO garage_orders SELECT g, 'item ' || g FROM generate_series(1, 1000) g"
pass "initdb -k, pgbench -i -s 5"

step "wrong secret: Garage refuses the signature"
out=$(PGWARD_S3_KEY_SECRET=not-the-secret PGWARD_S3_RETRY_SECONDS=10 pgw info 2>&1) && rc=0 || rc=$?
echo "$out" | sed 's/^/  | /'
check "info with a wrong secret fails (exit $rc)" test "$rc" != 0 || true
check "refused for its signature (403)" grep -qE "403 Forbidden.*(signature|AccessDenied)|AccessDenied.*signature" <<<"$out" || true

step "stanza-create, full backup (3 nodes up)"
need "stanza-create" pgw stanza-create
need "backup (full)" pgw backup
FULL=$(info_json | json 'd["backups"][-1]["label"]') || die "info --output json"
echo "full backup: $FULL"

# ---- 4. one node down -------------------------------------------------------------------
step "kill -9 garage node 3"
stop_node 3 KILL
if wait_health DEGRADED 30; then
    gcli 1 health | sed 's/^/  | /'
    pass "node 3 killed, cluster degraded (2 of 3 nodes up)"
else
    fail "cluster did not report DEGRADED after node 3 was killed"
fi

step "changes, incremental backup, restore point, WAL switch (2 of 3 nodes)"
as_pg pgbench -n -c 2 -j 2 -t 2000 -h "$WORK/pg" -p "$PG_PORT" postgres >"$WORK/pg/pgbench-1.log" 2>&1 \
    || { cat "$WORK/pg/pgbench-1.log"; die "pgbench run"; }
sql "$PG_PORT" "UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid % 50 = 0;
                INSERT INTO garage_orders SELECT g, 'during outage ' || g FROM generate_series(1001, 1500) g"
need "backup --type incr with node 3 down" pgw backup --type incr
INFO=$(info_json) || die "info --output json"
INCR=$(echo "$INFO" | json 'd["backups"][-1]["label"]')
INCR_TYPE=$(echo "$INFO" | json 'd["backups"][-1]["type"]')
INCR_REF=$(echo "$INFO" | json 'd["backups"][-1]["reference"]')
echo "incremental: $INCR (type $INCR_TYPE, reference $INCR_REF)"
check "the incremental is type incr on $FULL" test "$INCR_TYPE" = incr -a "$INCR_REF" = "$FULL" || true
as_pg pgbench -n -c 2 -j 2 -t 500 -h "$WORK/pg" -p "$PG_PORT" postgres >"$WORK/pg/pgbench-2.log" 2>&1 \
    || { cat "$WORK/pg/pgbench-2.log"; die "pgbench run"; }
sql "$PG_PORT" "DELETE FROM garage_orders WHERE id % 3 = 0"
AT_RP=$(sql "$PG_PORT" "$STATE_SQL")
sql "$PG_PORT" "SELECT pg_create_restore_point('$RP_NAME')" >/dev/null
echo "state at restore point $RP_NAME: $AT_RP"
# After the restore point: must not be in the restore.
sql "$PG_PORT" "UPDATE pgbench_accounts SET abalance = abalance - 1000 WHERE aid <= 5000;
                DELETE FROM garage_orders WHERE id > 1200"
SEG=$(switch_wal)
need "WAL up to $SEG archived with node 3 down" wait_archived "$SEG" 120
sql "$PG_PORT" "SELECT archived_count, failed_count, last_failed_wal FROM pg_stat_archiver" | sed 's/^/  archiver: /'

# ---- 5. node back, PITR restore ---------------------------------------------------------
step "restart garage node 3"
start_node 3
if wait_health HEALTHY 60; then pass "node 3 back, cluster healthy"; else fail "cluster not healthy after node 3 restarted"; fi

step "restore $INCR to restore point $RP_NAME, start it on port $RPORT"
need "restore --set $INCR --target-name $RP_NAME" pgw restore --pgdata "$WORK/pg/restored" --set "$INCR" \
    --target-name "$RP_NAME" --target-action promote --archive-mode off
cat >>"$WORK/pg/restored/postgresql.conf" <<CONF
port = $RPORT
CONF
if as_pg pg_ctl -D "$WORK/pg/restored" -l "$WORK/pg/restored.log" -w -t 300 start >/dev/null; then
    for _ in $(seq 1 600); do
        [ "$(sql "$RPORT" "SELECT pg_is_in_recovery()" 2>/dev/null)" = f ] && break
        sleep 0.5
    done
fi
if [ "$(sql "$RPORT" "SELECT pg_is_in_recovery()" 2>/dev/null)" = f ]; then
    pass "restored cluster recovered and promoted"
    RESTORED=$(sql "$RPORT" "$STATE_SQL")
    echo "source at $RP_NAME: $AT_RP"
    echo "restored:            $RESTORED"
    check "restored data equals the source at the restore point" test "$RESTORED" = "$AT_RP" || true
else
    tail -30 "$WORK/pg/restored.log"
    fail "restored cluster did not finish recovery"
fi
as_pg pg_ctl -D "$WORK/pg/restored" -m fast -w stop >/dev/null 2>&1 || true

# ---- 6. two nodes down ------------------------------------------------------------------
step "stop garage nodes 2 and 3 (only node 1, the S3 endpoint, left)"
stop_node 2
stop_node 3
if wait_health UNAVAILABLE 30; then pass "nodes 2 and 3 stopped, cluster unavailable"
else fail "cluster did not report UNAVAILABLE"; fi
expect_prompt_failure() { # name, pgward args...
    local name=$1 t rc out; shift
    t=$(date +%s%N)
    out=$(PGWARD_S3_RETRY_SECONDS=10 PGW_TIMEOUT=300 pgw "$@" 2>&1) && rc=0 || rc=$?
    t=$((($(date +%s%N) - t) / 1000000))   # ms
    printf 'pgward %s: exit %s after %d.%03ds, output:\n' "$*" "$rc" $((t / 1000)) $((t % 1000))
    echo "$out" | sed 's/^/  | /'
    check "$name fails (exit $rc)" test "$rc" != 0 || true
    check "$name fails within ${FAIL_WITHIN}s ($((t / 1000)).$((t % 1000 / 100))s)" \
        test "$t" -lt $((FAIL_WITHIN * 1000)) || true
    check "$name message names the bucket ($BUCKET)" grep -qF "$BUCKET" <<<"$out" || true
}
expect_prompt_failure "info with 2 of 3 nodes down" info
expect_prompt_failure "backup with 2 of 3 nodes down" backup

# ---- 7. nodes back: only complete backups, verify ---------------------------------------
step "restart garage nodes 2 and 3"
start_node 2
start_node 3
if wait_health HEALTHY 60; then pass "nodes 2 and 3 back, cluster healthy"; else fail "cluster not healthy after the restart"; fi
SEG=$(switch_wal)
check "archiving caught up ($SEG)" wait_archived "$SEG" 180 || true

step "info lists only complete backups"
pgw info || true
LABELS=$(info_json | json '" ".join(b["label"] for b in d["backups"])') || LABELS="(info failed)"
echo "backups: $LABELS"
check "info lists exactly $FULL $INCR" test "$LABELS" = "$FULL $INCR" || true

step "verify"
check "verify" pgw verify || true

step "result"
echo "$PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
