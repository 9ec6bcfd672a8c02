#!/usr/bin/env bash
# bench-s3.sh -- pgward against pgBackRest on one S3 server over HTTPS (issue 13's
# benchmark): the same local S3 server (S3_SERVER: moto, scripts/moto.sh's venv, or a
# one-node Garage, scripts/garage-lib.sh; behind stunnel for TLS) with a certificate of a small CA of this script's (pgBackRest speaks S3 only over
# HTTPS; rustls refuses a self-signed CA:TRUE server certificate, and pgBackRest 2.45
# matches no IP address in a subjectAltName, so the leaf is CA:FALSE and names
# `localhost`), pgward with `--s3-ca-file`, pgBackRest with `repo1-storage-ca-file`, same
# data, same bucket.
#
# Per SCALE (each in $BASE/scale-N, run one after the other): a scratch cluster (data
# checksums, bench-lib.sh settings) loaded with pgbench, every WAL segment pushed by
# pgBackRest and pgward to the S3 server and by pgward to a local repository too; then
# RUNS rounds, the two tools alternating (odd rounds pgward first):
#   full       full backup (lz4, 2 processes) to S3; pgward also into its local repository
#   incr       incremental after a contiguous 1% UPDATE of pgbench_accounts + CHECKPOINT
#   restore    restore of that round's full and of its full+incr chain, into an empty
#              directory (--archive-mode off), from S3 by both tools and by pgward from
#              the local repository (same data, backed up at the same moment): pgward's
#              S3/local ratio
#   verify     pgward verify / pgbackrest verify of the whole S3 repository
#   aget       archive-get of AGET_SEGS segments, one process each (pgward without
#              prefetch), from S3, each checked against the one pushed
# The last round's pgward chain restore from S3 is started once and its pgbench tables
# compared with the source.  Requests: moto and Garage log every request; a step's are the
# log lines it added under the tool's prefix of the bucket (pgward/, pgbackrest/).  pgward's own
# warnings of retried requests (storage/s3/retry_report.rs) are counted from its output.
# Prints a markdown table per scale: medians, ratios, requests, peak RSS, the issue's
# targets (restore from S3 >= 2x faster than pgBackRest's; <= 1.5x pgward's own restore
# from local disk; scale 100: at most one request per 4 MiB restored).
#
# Usage (as root):  bash scripts/bench-s3.sh       (scale 20 ~10 min, scale 100 ~30 min)
#
# Environment knobs:
#   SCALE       pgbench scale(s), space-separated (default "20 100")
#   RUNS        rounds (default 3)
#   STEPS       steps (default "full incr restore verify aget"; restore needs full and incr)
#   AGET_SEGS   segments for archive-get (default 100; WAL is generated until that many
#               were archived)
#   BASE        work directory, wiped at start (default /tmp/pgward-bench-s3)
#   PGWARD      pgward binary (default: the repository's target/release/pgward)
#   PORT/RPORT  source / restored cluster port (default 5489 / 5488)
#   S3_SERVER   moto (default) or garage: a real S3 server (Rust; ranged GETs read only
#               the blocks of the range; checks signatures, region "garage"), one node,
#               replication factor 1, no block compression (the backups are lz4 already);
#               installed into $GARAGE_ROOT by `cargo install` the first time (~10 min)
#   S3_PORT     port of the HTTPS S3 server (stunnel) on 127.0.0.1 (default 5487; the
#               server itself listens on S3_PORT+1, Garage's RPC and admin on +2, +3);
#               MOTO_PORT is the old name
#   PGVER       PostgreSQL major (default 15)
#   READ_AHEAD  pgward --repo-read-ahead for the S3 restores and verify (default: pgward's)
#   KEEP        1: keep repositories and clusters under $BASE (default 0: only results)
#   HOLD        1: at the end, keep the S3 server (and the source cluster) up until
#               $BASE/hold is removed, for commands run by hand against it (profiling)
set -euo pipefail

SCALE=${SCALE:-"20 100"}
BASE=${BASE:-/tmp/pgward-bench-s3}
if [ "$(wc -w <<<"$SCALE")" -gt 1 ]; then   # one run of this script per scale
    rc=0
    for s in $SCALE; do
        SCALE=$s BASE=$BASE/scale-$s bash "${BASH_SOURCE[0]}" || rc=$?
    done
    exit $rc
fi

RUNS=${RUNS:-3}
STEPS=${STEPS:-"full incr restore verify aget"}
AGET_SEGS=${AGET_SEGS:-100}
PORT=${PORT:-5489}
RPORT=${RPORT:-5488}
S3_SERVER=${S3_SERVER:-moto}
S3_PORT=${S3_PORT:-${MOTO_PORT:-5487}}
PGVER=${PGVER:-15}
READ_AHEAD=${READ_AHEAD:-}
KEEP=${KEEP:-0}
HOLD=${HOLD:-0}
STANZA=bench
BUCKET=pgward-bench

# shellcheck source=scripts/bench-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

case $S3_SERVER in moto|garage) ;; *) die "S3_SERVER=$S3_SERVER: moto or garage" ;; esac
S3_DIR=$BASE/s3
TLS=$BASE/tls
CA=$TLS/ca.pem
PWCONF=$BASE/pgward-s3.toml
WRAPPER=$BASE/archive-pgbackrest-pgward.sh
RST=$BASE/restore
AGET=$BASE/aget
ENDPOINT=https://localhost:$S3_PORT
# credentials and region: moto takes any; Garage's key is made by garage_start
S3_REGION=us-east-1 S3_KEY=test S3_SECRET=test

bench_preflight
bench_install_packages curl openssl stunnel4
bench_resolve_pgward

PGENV=(env PGHOST="$BASE" PGPORT="$PORT" PGUSER=postgres PGDATABASE=postgres)
BR=(pgbackrest --config="$CONF" --stanza="$STANZA" --log-level-console=info)
PWS=("${PGENV[@]}" "$PGWARD" --config "$PWCONF")
PWL=("${PGENV[@]}" "$PGWARD" --repo "$PWREPO" --stanza "$STANZA")
RA=()
[ -z "$READ_AHEAD" ] || RA=(--repo-read-ahead "$READ_AHEAD")

# ---------------------------------------------------------------- clean slate
s3_stop() {   # the S3 server and stunnel, by the pids this script wrote
    local f pid
    for f in "$S3_DIR/server.pid" "$S3_DIR/stunnel.pid"; do
        [ -f "$f" ] || continue
        pid=$(cat "$f")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$f"
    done
}
stop_all() {
    local d
    for d in "$RST"-* "$PGDATA"; do [ -d "$d" ] && stop_server "$d"; done
    s3_stop
}
[ -d "$BASE" ] && stop_all
bench_fresh_base "${S3_DIR#"$BASE"/}" "${TLS#"$BASE"/}" "${AGET#"$BASE"/}"
# pgward keeps host-local locks in $TMPDIR/pgward-locks and refuses one another user owns:
# in a shared /tmp, root (the test suite) may have made it first.  Everything started
# from here (PostgreSQL, its archive_command, the tools) gets a TMPDIR of postgres's own.
install -d -m 700 -o postgres -g postgres "$BASE/tmp"
export TMPDIR=$BASE/tmp
bench_install_pgward
cleanup() {
    local rc=$?
    stop_all
    rm -rf "$RST"-* "$AGET"
    [ "$KEEP" = 1 ] || rm -rf "$PGDATA" "$PWREPO" "$BRREPO" "$BASE/spool" "$S3_DIR/garage"
    log "servers stopped, restore directories$([ "$KEEP" = 1 ] || echo ", cluster and repositories") removed; results in $RES (exit $rc, $((SECONDS - T_START)) s)"
}
trap cleanup EXIT

# ---------------------------------------------------------------- TLS and the S3 server
# A CA, and a CA:FALSE leaf for localhost signed by it (rustls takes no CA:TRUE leaf).
make_certs() {
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=pgward bench CA" \
        -keyout "$TLS/ca.key" -out "$CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$TLS/server.key" -out "$TLS/server.csr" 2>/dev/null
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost" > "$TLS/leaf.ext"
    openssl x509 -req -in "$TLS/server.csr" -CA "$CA" -CAkey "$TLS/ca.key" -CAcreateserial \
        -days 2 -extfile "$TLS/leaf.ext" -out "$TLS/server.pem" 2>/dev/null
    chmod 644 "$CA"; chown -R postgres:postgres "$TLS"
}
# The S3 server on plain HTTP at S3_PORT+1, behind stunnel for TLS on S3_PORT.  moto
# (scripts/moto.sh's venv): its own TLS (werkzeug's, `moto_server -c/-k`) ends connections
# without a TLS close_notify, which pgBackRest takes for an error ("unexpected eof while
# reading") and retries every PUT for a minute.  Both servers log a line per request,
# which is how requests are counted.
moto_start() {
    bash "$BENCH_LIB_DIR/moto.sh" install
    local venv=${PGWARD_MOTO_VENV:-/var/cache/pgward/moto-venv}
    setsid "$venv/bin/moto_server" -H 127.0.0.1 -p "$((S3_PORT + 1))" \
        > "$S3_DIR/server.log" 2>&1 < /dev/null &
    echo $! > "$S3_DIR/server.pid"
}
# Garage: one node (replication factor 1), RPC and admin on S3_PORT+2/+3, data under
# $S3_DIR/garage; no block compression (zstd by default), as the objects are lz4 already
garage_start() {
    local conf=$S3_DIR/garage.toml
    # shellcheck source=scripts/garage-lib.sh
    . "$BENCH_LIB_DIR/garage-lib.sh"
    PATH=$BENCH_ORIG_PATH garage_install >&2 || die "garage $GARAGE_VERSION could not be installed"
    garage_write_config "$conf" "$S3_DIR/garage" 1 "$(garage_secret 32)" "$((S3_PORT + 1))" \
        "$((S3_PORT + 2))" "$((S3_PORT + 3))" "$(garage_secret 16)" 'compression_level = "none"'
    setsid "$GARAGE" -c "$conf" server > "$S3_DIR/server.log" 2>&1 < /dev/null &
    echo $! > "$S3_DIR/server.pid"
    garage_wait_up "$(cat "$S3_DIR/server.pid")" "$conf" "$S3_DIR/server.log" 1 "$((S3_PORT + 1))" \
        || die "garage did not start"
    garage_layout "$conf" 100G "$("$GARAGE" -c "$conf" node id -q)" || die "garage layout"
    garage_key_bucket "$conf" "$BUCKET" pgward-bench "$S3_DIR/key.txt" || die "garage key and bucket"
    S3_REGION=$GARAGE_REGION S3_KEY=$GARAGE_KEY_ID S3_SECRET=$GARAGE_KEY_SECRET
}
s3_start() {
    "${S3_SERVER}_start"
    printf '%s\n' "foreground = yes" "pid =" "[s3]" "accept = 127.0.0.1:$S3_PORT" \
        "connect = 127.0.0.1:$((S3_PORT + 1))" "cert = $TLS/server.pem" "key = $TLS/server.key" \
        > "$S3_DIR/stunnel.conf"
    setsid stunnel4 "$S3_DIR/stunnel.conf" > "$S3_DIR/stunnel.log" 2>&1 < /dev/null &
    echo $! > "$S3_DIR/stunnel.pid"
    # any HTTP answer through the TLS front (Garage: 403 to an unsigned request)
    for _ in $(seq 1 300); do
        curl -s --cacert "$CA" -o /dev/null "$ENDPOINT/moto-api/" && break
        kill -0 "$(cat "$S3_DIR/server.pid")" 2>/dev/null || { cat "$S3_DIR/server.log" >&2; die "$S3_SERVER exited"; }
        kill -0 "$(cat "$S3_DIR/stunnel.pid")" 2>/dev/null || { cat "$S3_DIR/stunnel.log" >&2; die "stunnel exited"; }
        sleep 0.1
    done
    if [ "$S3_SERVER" = moto ]; then
        curl -sf --cacert "$CA" -X PUT "$ENDPOINT/$BUCKET" > /dev/null || die "cannot create bucket $BUCKET"
    fi
    log "$S3_SERVER behind stunnel on $ENDPOINT (CA $CA), bucket $BUCKET"
}
# CPU seconds the S3 server and stunnel have used so far (all their threads): what a step
# cost the S3 server, which shares the cores with the tools. moto answers a ranged GET by reading
# and copying the whole object and slicing it (moto/s3/responses.py _handle_range_header
# over FakeKey.value), so its cost grows with the object's size, not the range's: real
# object stores do not work that way (Garage reads the 1 MiB blocks the range covers).
s3_cpu() {
    cat "/proc/$(cat "$S3_DIR/server.pid")/stat" "/proc/$(cat "$S3_DIR/stunnel.pid")/stat" 2>/dev/null |
        awk -v hz="$CLK" '{ s = $0; sub(/^.*\) /, "", s); split(s, a, " "); t += a[12] + a[13] }
            END { printf "%.2f\n", t / hz }'
}
# requests in the S3 server's log since line $1 under the tool's prefix: "total GET PUT
# other".  moto: '... "GET /bucket/key?query HTTP/1.1" 200 -'; Garage: '... (key GK...)
# GET /bucket/key?query', and for a refused one another line '... in response to ...'.
s3_lines() { wc -l < "$S3_DIR/server.log"; }
s3_requests() {   # FROM_LINE PREFIX
    # a request is the tool's when its path is under /BUCKET/PREFIX/ or it lists PREFIX/...
    tail -n +"$(($1 + 1))" "$S3_DIR/server.log" | sed 's/\x1b\[[0-9;]*m//g' | awk -v b="/$BUCKET" -v p="$2" '
        !/ in response to / && match($0, /(^|[ "])(GET|PUT|POST|HEAD|DELETE) \/[^ "]*/) {
            t = substr($0, RSTART, RLENGTH); sub(/^[ "]/, "", t)
            split(t, r, " "); m = r[1]; t = r[2]
            path = t; q = ""; i = index(t, "?"); if (i) { path = substr(t, 1, i - 1); q = substr(t, i) }
            if (index(path, b "/" p "/") == 1 || q ~ ("[?&]prefix=(%2F)?" p "(%2F|/|&|$)")) { n++; c[m]++ } }
        END { printf "%d %d %d %d\n", n, c["GET"], c["PUT"], n - c["GET"] - c["PUT"] }'
}

# the file system is shared: stop rather than fill it (a restore takes the source's size)
need_space() {   # BYTES
    local free
    free=$(df -B1 --output=avail "$BASE" | tail -1)
    [ "$free" -gt $(($1 + (1 << 30))) ] || die "only $(mb "$free") MB free on $BASE's file system: not enough for $(mb "$1") MB and 1 GiB to spare"
}

# ---------------------------------------------------------------- configuration
write_configs() {
    cat > "$PWCONF" <<EOF
[global]
repo = "s3://$BUCKET/pgward"
stanza = "$STANZA"
s3-endpoint = "$ENDPOINT"
s3-region = "$S3_REGION"
s3-uri-style = "path"
s3-key = "$S3_KEY"
s3-key-secret = "$S3_SECRET"
s3-ca-file = "$CA"
EOF
    cat > "$CONF" <<EOF
[global]
repo1-type=s3
repo1-path=/pgbackrest
repo1-s3-bucket=$BUCKET
repo1-s3-endpoint=localhost
repo1-storage-port=$S3_PORT
repo1-s3-region=$S3_REGION
repo1-s3-key=$S3_KEY
repo1-s3-key-secret=$S3_SECRET
repo1-s3-uri-style=path
repo1-storage-ca-file=$CA
repo1-retention-full=9999
log-path=$BASE/log
lock-path=$BASE/lock
spool-path=$BASE/spool
start-fast=y
compress-type=lz4

[$STANZA]
pg1-path=$PGDATA
pg1-port=$PORT
pg1-socket-path=$BASE
EOF
    chmod 600 "$PWCONF" "$CONF"; chown postgres:postgres "$PWCONF" "$CONF"
    # archive_command: each segment to pgBackRest (S3), pgward (S3) and pgward (local),
    # in parallel; each push timed into $RES/archive-push-TARGET.log
    cat > "$WRAPPER" <<EOF
#!/bin/bash
seg=\$1; b=\$(basename "\$1")
/usr/bin/time -a -o $RES/archive-push-pgbackrest.log -f "\$b %e %M %U %S %x" \
    pgbackrest --config=$CONF --stanza=$STANZA archive-push "\$seg" & p1=\$!
/usr/bin/time -a -o $RES/archive-push-pgward.log -f "\$b %e %M %U %S %x" \
    $PGWARD --config $PWCONF --compress lz4 archive-push "\$seg" & p2=\$!
/usr/bin/time -a -o $RES/archive-push-pgward-local.log -f "\$b %e %M %U %S %x" \
    $PGWARD --repo $PWREPO --stanza $STANZA --compress lz4 archive-push "\$seg" & p3=\$!
rc=0
wait \$p1 || rc=1; wait \$p2 || rc=1; wait \$p3 || rc=1
exit \$rc
EOF
    chmod 755 "$WRAPPER"
    touch "$RES"/archive-push-{pgbackrest,pgward,pgward-local}.log
    chown -R postgres:postgres "$BASE"
}

# ---------------------------------------------------------------- setup
make_certs
s3_start
write_configs
bench_initdb "$WRAPPER %p" bench-s3.sh
bench_start_source
WALL=0 RSS=0 USR=0 SYS=0 SRV=0
setup_step stanza-create-pgbackrest pgbackrest 1 stanza-create "${BR[@]}" stanza-create
setup_step stanza-create-pgward pgward 1 stanza-create "${PWS[@]}" stanza-create
setup_step stanza-create-pgward-local pgward-local 1 stanza-create "${PWL[@]}" stanza-create
run_timed check-pgbackrest "${BR[@]}" check
record setup pgbackrest 1 2 0 "check over HTTPS" check-pgbackrest
[ "$RC" -eq 0 ] || { tail -5 "$RES"/archive-push-*.log >&2; die "pgbackrest check failed (see $RES/check-pgbackrest.out)"; }

log "pgbench -i -s $SCALE"
setup_step pgbench-init pgbench-init 1 "pgbench -i -s $SCALE" pgbench -i -s "$SCALE" -h "$BASE" -p "$PORT" postgres
pg vacuumdb -h "$BASE" -p "$PORT" --all --analyze -q
psqlq -c "CHECKPOINT"
NACC=$((100000 * SCALE))
archived_by_all() {   # segments every target pushed (exit 0), sorted
    local f
    for f in pgbackrest pgward pgward-local; do
        awk '$6 == 0 && length($1) == 24 && $1 ~ /^[0-9A-F]+$/ {print $1}' "$RES/archive-push-$f.log" | sort -u > "$RES/pushed-$f.txt"
    done
    comm -12 "$RES/pushed-pgbackrest.txt" "$RES/pushed-pgward.txt" | comm -12 - "$RES/pushed-pgward-local.txt"
}
if want aget; then   # WAL of real changes until AGET_SEGS segments are archived
    k=0
    while [ "$(archived_by_all | wc -l)" -lt "$AGET_SEGS" ] && [ $k -lt 200 ]; do
        need_space $((2 << 30))
        psqlq -c "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 10 = $((k % 10))"
        k=$((k + 1)); wait_archived
        psqlq -c "CHECKPOINT"   # archived WAL is recycled, not kept up to max_wal_size
    done
    psqlq -c "VACUUM pgbench_accounts"
fi
psqlq -c "SELECT pg_switch_wal()" > /dev/null
wait_archived
psqlq -c "CHECKPOINT"
archived_by_all | head -"$AGET_SEGS" > "$RES/aget-segments.txt"
SRC_NOWAL=$(datasize)
log "source: $(mb "$SRC_NOWAL") MB without pg_wal; $(wc -l < "$RES/aget-segments.txt") segments archived by all three"

# ---------------------------------------------------------------- steps
order_for() { if (( $1 % 2 == 1 )); then echo "$2 $3"; else echo "$3 $2"; fi; }
pw_last() { pg "$@" --output json info 2>/dev/null | jq -r '.backups | sort_by(.label) | last | .label // empty'; }
br_last() { pg "${BR[@]}" info --output=json 2>/dev/null | jq -r '.[0].backup[-1].label // empty'; }
pw_stored() {   # LABEL CMD...
    local l=$1; shift
    pg "$@" --output json info 2>/dev/null | jq -r --arg l "$l" '[.backups[] | select(.label == $l) | .stored_size] | first // 0'
}
prefix_of() { case $1 in pgbackrest) echo pgbackrest ;; pgward) echo pgward ;; *) echo "-" ;; esac; }

# timed STEP TOOL RUN ORDER BYTES NOTE ID CMD...: run_timed + record, with the S3 requests
# the command made in the note
timed() {
    local step=$1 tool=$2 r=$3 o=$4 bytes=$5 note=$6 id=$7 m0 c0 req retries s3cpu
    shift 7
    wait_archived   # no archive-push of the previous step lands in this one's requests
    m0=$(s3_lines); c0=$(s3_cpu)
    run_timed "$id" "$@"
    req=$(s3_requests "$m0" "$(prefix_of "$tool")")
    s3cpu=$(awk -v a="$c0" -v b="$(s3_cpu)" 'BEGIN { printf "%.2f", b - a }')
    retries=$(grep -c 'retrying for another' "$RES/$id.out" || true)
    [ "$tool" = pgward-local ] && req="0 0 0 0"
    REQ=${req%% *}
    record "$step" "$tool" "$r" "$o" "$bytes" "requests=$REQ (total GET PUT other: $req) s3-server-cpu=$s3cpu retry-warnings=$retries $note" "$id"
}

declare -A FULL INCR
backup() {   # STEP TYPE TOOL RUN ORDER
    local step=$1 type=$2 tool=$3 r=$4 o=$5 id=$1-$3-$4 label bytes=0
    wait_archived
    case $tool in
        pgward)       timed "$step" "$tool" "$r" "$o" 0 "" "$id" "${PWS[@]}" backup --type "$type" --jobs 2 --compress lz4
                      label=$(pw_last "${PWS[@]}"); [ "$RC" -ne 0 ] || bytes=$(pw_stored "$label" "${PWS[@]}") ;;
        pgward-local) timed "$step" "$tool" "$r" "$o" 0 "" "$id" "${PWL[@]}" backup --type "$type" --jobs 2 --compress lz4
                      label=$(pw_last "${PWL[@]}"); [ "$RC" -ne 0 ] || bytes=$(pw_stored "$label" "${PWL[@]}") ;;
        pgbackrest)   timed "$step" "$tool" "$r" "$o" 0 "" "$id" "${BR[@]}" backup --type="$type" --process-max=2
                      label=$(br_last) ;;
    esac
    [ "$RC" -eq 0 ] || die "$tool $type backup failed (see $RES/$id.out)"
    # the recorded line gets the label and stored bytes
    sed -i '$ s/\t0\t\(requests=[^\t]*\)\t/\t'"$bytes"'\t\1 label='"$label"'\t/' "$TSV"
    if [ "$type" = full ]; then FULL[$tool-$r]=$label; else INCR[$tool-$r]=$label; fi
}

restore() {   # STEP(restore-full|restore-chain) TOOL RUN ORDER
    local step=$1 tool=$2 r=$3 o=$4 id=$1-$2-$3 dir=$RST-$2 set
    if [ "$step" = restore-full ]; then set=${FULL[$tool-$r]}; else set=${INCR[$tool-$r]}; fi
    need_space "$SRC_NOWAL"
    new_dir "$dir"
    case $tool in
        pgward)       timed "$step" "$tool" "$r" "$o" 0 "set=$set" "$id" "${PWS[@]}" "${RA[@]}" restore --set "$set" --pgdata "$dir" --archive-mode off --jobs 2 ;;
        pgward-local) timed "$step" "$tool" "$r" "$o" 0 "set=$set" "$id" "${PWL[@]}" restore --set "$set" --pgdata "$dir" --archive-mode off --jobs 2 ;;
        pgbackrest)   timed "$step" "$tool" "$r" "$o" 0 "set=$set" "$id" "${BR[@]}" --pg1-path="$dir" restore --set="$set" --archive-mode=off --process-max=2 ;;
    esac
    [ "$RC" -ne 0 ] || sed -i '$ s/^\(\([^\t]*\t\)\{10\}\)0\t/\1'"$(du -sb "$dir" | cut -f1)"'\t/' "$TSV"
    if [ "$tool" = pgward ] && [ "$step" = restore-chain ] && [ "$r" = "$RUNS" ] && [ "$RC" -eq 0 ]; then
        check_restored "$dir"   # here, so that no second restore lies beside it on disk
    fi
    rm -rf "$dir"
}

# start the last round's pgward chain restore from S3 (it recovers from pgward's S3
# archive) and compare its pgbench tables with the source's: nothing changes them after
# the last incremental
CHECK="not run"
check_restored() {   # DIR
    local src rst
    src=$(pgbench_checksum "$PORT")
    if start_restored "$1" check; then
        rst=$(pgbench_checksum "$RPORT")
        if [ "$src" = "$rst" ]; then CHECK="OK (pgbench tables equal the source's)"
        else CHECK="MISMATCH: source $src, restored $rst"; fi
        stop_server "$1"
    else
        CHECK="FAILED to start (see $BASE/log/restored-check.log)"
    fi
    log "restored chain: $CHECK"
}

aget() {   # TOOL RUN ORDER: AGET_SEGS archive-get processes back to back, timed as one
    local tool=$1 r=$2 o=$3 id=aget-$1-$2 n bad=0 seg
    rm -rf "${AGET:?}"/*
    n=$(wc -l < "$RES/aget-segments.txt")
    local bytes=$((n * 16777216))
    # shellcheck disable=SC2016   # expanded by that bash: $0 the directory, $@ the command
    local loop='while read -r s; do "$@" "$s" "$0/$s" || exit 1; done'
    if [ "$tool" = pgward ]; then
        timed aget "$tool" "$r" "$o" "$bytes" "$n segments" "$id" bash -c "$loop < $RES/aget-segments.txt" "$AGET" \
            "${PWS[@]}" archive-get --archive-get-queue-max 0
    else
        timed aget "$tool" "$r" "$o" "$bytes" "$n segments" "$id" bash -c "$loop < $RES/aget-segments.txt" "$AGET" \
            "${BR[@]}" archive-get
    fi
    # each fetched segment must be what pgward's local archive holds (checked separately)
    while read -r seg; do
        [ -s "$AGET/$seg" ] || { bad=$((bad + 1)); continue; }
        cmp -s "$AGET/$seg" "$AGET/ref-$seg" 2>/dev/null || {
            pg "${PWL[@]}" archive-get --archive-get-queue-max 0 "$seg" "$AGET/ref-$seg" > /dev/null 2>&1
            cmp -s "$AGET/$seg" "$AGET/ref-$seg" || bad=$((bad + 1)); }
    done < "$RES/aget-segments.txt"
    if [ "$bad" -gt 0 ]; then
        log "archive-get $tool: $bad segments missing or different"
        sed -i '$ s/\tok\t/\tBAD('"$bad"')\t/' "$TSV"
    fi
}

for r in $(seq 1 "$RUNS"); do
    log "=== round $r of $RUNS (scale $SCALE)"
    if want full; then
        o=0
        for t in $(order_for "$r" pgward pgbackrest) pgward-local; do o=$((o + 1)); backup full full "$t" "$r" "$o"; done
    fi
    if want incr; then
        k=$(( (r * 37) % 100 )); lo=$((k * NACC / 100 + 1)); hi=$(((k + 1) * NACC / 100))
        psqlq -c "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN $lo AND $hi" -c "CHECKPOINT"
        o=0
        for t in $(order_for "$r" pgward pgbackrest) pgward-local; do o=$((o + 1)); backup incr incr "$t" "$r" "$o"; done
    fi
    if want restore && want full && want incr; then
        for s in restore-full restore-chain; do
            o=0
            for t in $(order_for "$r" pgward pgbackrest) pgward-local; do o=$((o + 1)); restore "$s" "$t" "$r" "$o"; done
        done
    fi
    if want verify; then
        o=0
        for t in $(order_for "$r" pgward pgbackrest); do
            o=$((o + 1))
            if [ "$t" = pgward ]; then timed verify pgward "$r" "$o" 0 "" "verify-pgward-$r" "${PWS[@]}" "${RA[@]}" verify
            else timed verify pgbackrest "$r" "$o" 0 "" "verify-pgbackrest-$r" "${BR[@]}" verify; fi
        done
    fi
    if want aget; then
        o=0
        for t in $(order_for "$r" pgward pgbackrest); do o=$((o + 1)); aget "$t" "$r" "$o"; done
    fi
done

cp "$S3_DIR/server.log" "$RES/$S3_SERVER.log" 2>/dev/null || true
# sizes of pgward's bundles (what each of its ranged GETs costs moto; see s3_cpu)
# (signed for Garage: the prefix's slashes encoded as in the canonical query it checks)
BUNDLES=$(curl -sf --aws-sigv4 "aws:amz:$S3_REGION:s3" --user "$S3_KEY:$S3_SECRET" \
    -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" \
    "http://127.0.0.1:$((S3_PORT + 1))/$BUCKET?list-type=2&prefix=pgward%2F$STANZA%2Fbundles%2F" |
    grep -o '<Size>[0-9]*</Size>' | grep -o '[0-9]*' | sort -n |
    awk '{ a[NR] = $1 } END { if (NR) printf "%d bundles, %.1f-%.1f MB (median %.1f MB)", NR, a[1] / 1e6, a[NR] / 1e6, a[int((NR + 1) / 2)] / 1e6; else print "none" }' || true)

# ---------------------------------------------------------------- report
server_line() {
    case $S3_SERVER in
        moto) echo "moto $(cat "${PGWARD_MOTO_VENV:-/var/cache/pgward/moto-venv}/.pgward-moto" 2>/dev/null)" ;;
        garage) echo "Garage $("$GARAGE" --version | head -1 | awk '{print $2}') (1 node, replication factor 1, lmdb, no block compression)" ;;
    esac
}
med() { col "$1" "$2" "$3" | median; }
s3cpu_med() {   # STEP TOOL -> median CPU seconds of the S3 server
    awk -F'\t' -v s="$1" -v v="$2" '$1==s && $2==v && $5=="ok" { if (match($12, /s3-server-cpu=[0-9.]+/)) print substr($12, RSTART + 14, RLENGTH - 14) }' "$TSV" | median
}
req_med() {   # STEP TOOL -> median requests
    awk -F'\t' -v s="$1" -v v="$2" '$1==s && $2==v && $5=="ok" { if (match($12, /requests=[0-9]+/)) print substr($12, RSTART + 9, RLENGTH - 9) }' "$TSV" | median
}
{
    echo
    echo "## pgward vs pgBackRest on S3 over HTTPS ($S3_SERVER), pgbench scale $SCALE"
    echo
    echo "- $(host_line); $(pgward_line); $(pgbackrest version); PostgreSQL $(postgres --version | awk '{print $3}')"
    echo "- source $(mb "$SRC_NOWAL") MB without pg_wal; $RUNS rounds, tools alternating; lz4, 2 processes each; restores into an empty directory, warm page cache; $(server_line) behind stunnel (CA:FALSE leaf for localhost)"
    echo "- host load (1-min average) before steps: $(awk -F'\t' '$1!="setup" {print $14}' "$TSV" | rng)"
    echo "- restored chain check (last round, pgward from S3): $CHECK"
    echo "- pgward's repository on S3: ${BUNDLES:-?}$([ "$S3_SERVER" = moto ] && echo " (moto copies the whole object for each ranged GET: its CPU per step is in the table)")"
    echo "- the S3 server ($S3_SERVER) and stunnel run on the same cores as the tools: a step's wall includes their CPU; CPU s = user + sys of the tool's processes"
    echo
    echo "| step | pgward s | pgBackRest s | pgward/pgBackRest | pgward local s | pgward S3/local | CPU s pgward S3 / local / pgBackRest | requests pgward / pgBackRest | S3 server ($S3_SERVER + stunnel) CPU s pgward / pgBackRest | MB | pgward MB/s | peak RSS MiB pgward / pgBackRest |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
    # shellcheck disable=SC2015   # echo does not fail
    for s in full incr restore-full restore-chain verify aget; do
        pw=$(med "$s" pgward 6); br=$(med "$s" pgbackrest 6); pl=$(med "$s" pgward-local 6)
        [ "$pw" != nan ] || [ "$br" != nan ] || continue
        bytes=$(med "$s" pgward 11)
        echo "| $s | $pw ($(col "$s" pgward 6 | rng)) | $br ($(col "$s" pgbackrest 6 | rng)) | $(ratio "$pw" "$br") | $([ "$pl" = nan ] && echo - || echo "$pl") | $([ "$pl" = nan ] && echo - || ratio "$pw" "$pl") | $(cpu_col "$s" pgward | median) / $(cpu_col "$s" pgward-local | median | sed 's/^nan$/-/') / $(cpu_col "$s" pgbackrest | median) | $(req_med "$s" pgward) / $(req_med "$s" pgbackrest) | $(s3cpu_med "$s" pgward) / $(s3cpu_med "$s" pgbackrest) | $(mb "$bytes") | $(mbps "$bytes" "$pw") | $(mib "$(col "$s" pgward 7 | maxof)") / $(mib "$(col "$s" pgbackrest 7 | maxof)") |"
    done
    echo
    echo "| target (issue 13) | measured | met |"
    echo "|---|---|---|"
    for s in restore-full restore-chain; do
        pw=$(med "$s" pgward 6); br=$(med "$s" pgbackrest 6); pl=$(med "$s" pgward-local 6)
        x=$(ratio "$br" "$pw"); y=$(ratio "$pw" "$pl")
        echo "| $s from S3 ≥ 2× faster than pgBackRest's | $x× | $(awk -v x="$x" 'BEGIN{print (x != "n/a" && x >= 2) ? "yes" : "NO"}') |"
        echo "| $s from S3 ≤ 1.5× pgward's from local disk | $y× | $(awk -v y="$y" 'BEGIN{print (y != "n/a" && y <= 1.5) ? "yes" : "NO"}') |"
        bytes=$(med "$s" pgward 11); n=$(req_med "$s" pgward)
        per=$(awk -v b="$bytes" -v n="$n" 'BEGIN{ if (n > 0) printf "%.2f", b / n / 1048576; else print "n/a" }')
        echo "| $s: ≤ 1 request per 4 MiB restored (binding at scale 100) | $n requests, $per MiB each | $(awk -v p="$per" 'BEGIN{print (p != "n/a" && p >= 4) ? "yes" : "NO"}') |"
    done
    echo
    echo "Per-run figures: $TSV (column 12: requests total/GET/PUT/other under the tool's prefix, from $S3_SERVER's log)."
} | tee "$RES/report.md"

if [ "$HOLD" = 1 ]; then
    touch "$BASE/hold"
    log "HOLD=1: S3 on $ENDPOINT (pgward: --config $PWCONF; pgBackRest: --config=$CONF) until $BASE/hold is removed"
    while [ -e "$BASE/hold" ]; do sleep 2; done
fi
