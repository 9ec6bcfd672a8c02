#!/usr/bin/env bash
# bench-extra.sh -- pgward extras: encryption cost, S3 (moto), asynchronous archiving,
# restore_command prefetch, archive-get per segment, pg_basebackup comparison, peak memory.
#
# Companion of bench.sh (the main harness; same cluster settings, setup and measurement
# helpers, all in bench-lib.sh).  Self-contained: installs pgBackRest, GNU time, jq, bc,
# curl from Debian if missing, builds pgward if no binary is there, creates a scratch
# PostgreSQL cluster (data checksums) under $BASE, loads pgbench data with every WAL
# segment pushed to pgBackRest and to pgward (so that archive-get can be compared on the
# same segments), then, with the archive_command adapted per step:
#   1. local repository: RUNS full backups (lz4, then zstd; --jobs 2) into an unencrypted
#      and an aes-256-gcm stanza of the same repository directory, alternating, then RUNS
#      restores of each (into an empty directory, --archive-mode off);
#   2. S3 (a local moto server): the same with lz4, unencrypted vs encrypted stanza;
#   3. asynchronous archiving (archive-push --async, ALTER SYSTEM + pg_reload_conf) under
#      `pgbench -c 2 -T $LOAD_SECS`, sampled every 5 s (.ready files, spool queue,
#      pg_stat_archiver), then the same with the synchronous archive_command;
#   4. prefetch: a full backup, ~$PREFETCH_WAL_MB MB of WAL (UPDATEs over pgbench_accounts),
#      then the backup restored and started twice: restore_command with the default
#      prefetch, and with `archive-get --archive-get-queue-max 0`; start to end of recovery;
#   5. archive-get of $AGET_SEGS archived load segments back to back: pgward (no prefetch)
#      vs pgBackRest, per-segment wall;
#   6. pg_basebackup -Ft --compress=server-lz4 vs pgward backup lz4 --jobs 2 (alternating);
#   7. peak memory of one pgward backup and restore at MEM_SCALE (skipped when that would
#      leave less than 15 GB free on $BASE's file system);
#   8. delta restore: a full backup by each tool; per run, pgward's restore of it is
#      started, 1% of pgbench_accounts updated (contiguous), checkpointed and stopped, and
#      two copies of that diverged directory are brought back by `pgward restore --delta`
#      and `pgbackrest restore --delta` (alternating), beside a full restore by each tool
#      into an empty directory; wall, and bytes written (GNU time's file system outputs;
#      pgward's own report too);
#   9. many files: $MANY_TABLES small tables (one row each, vacuumed: heap, fsm, vm and a
#      primary key index, 4 files a table) in a database of their own, files counted;
#      one untimed full by each tool (pgward into a stanza of its own), then RUNS rounds,
#      alternating: full backup, restore of it, an incremental after updating 10 tables,
#      restore of that chain; round r runs against a repository already holding r fulls
#      (peak RSS must not grow with them).  Run it alone with SCALE=1 STEPS=9: every
#      other step's data is in the cluster too.
# Prints markdown tables (per-run figures in $RES), stops every server it started (and the
# moto server and any background archive-push worker of its spool), removes the restore
# directories; raw results stay in $BASE/results.
#
# Usage (as root):   bash scripts/bench-extra.sh     (about 20-25 min at SCALE=100, RUNS=3)
#
# Environment knobs:
#   SCALE           pgbench scale (default 100, ~1.5 GB)
#   RUNS            repetitions of each timed step (default 3)
#   BASE            work directory, wiped at start (default /tmp/pgward-bench-extra)
#   PGWARD          pgward binary (default: the repository's target/release/pgward, built
#                   with `cargo build --release` when missing; copied to $BASE/bin)
#   PORT / RPORT    source / restored cluster port (default 5493 / 5492; unix socket in $BASE)
#   MOTO_PORT       port of the moto server on 127.0.0.1 (default 5499)
#   PGVER           PostgreSQL major version (default 15)
#   LOAD_SECS       pgbench duration for step 3 (default 60)
#   QUEUE_MAX       --archive-push-queue-max for step 3 (default 64, pgward's default)
#   DRAIN_MAX       max seconds to wait for the backlog to drain after step 3's load (300)
#   PREFETCH_WAL_MB WAL to replay in step 4 (default 2048)
#   AGET_SEGS       segments for step 5 (default 10)
#   MEM_SCALE       pgbench scale for step 7 (default 500; 0 skips step 7)
#   STEPS           which steps to run (default "1 2 3 4 5 6 7 8")
#   DROP_CACHES     1: drop the page cache before each timed restore of steps 8 and 9 (default 0)
#   MANY_TABLES     tables for step 9 (default 25000: about 100,000 files)
set -euo pipefail

SCALE=${SCALE:-100}
RUNS=${RUNS:-3}
BASE=${BASE:-/tmp/pgward-bench-extra}
PORT=${PORT:-5493}
RPORT=${RPORT:-5492}
MOTO_PORT=${MOTO_PORT:-5499}
PGVER=${PGVER:-15}
LOAD_SECS=${LOAD_SECS:-60}
QUEUE_MAX=${QUEUE_MAX:-64}
DRAIN_MAX=${DRAIN_MAX:-300}
PREFETCH_WAL_MB=${PREFETCH_WAL_MB:-2048}
AGET_SEGS=${AGET_SEGS:-10}
MEM_SCALE=${MEM_SCALE:-500}
MANY_TABLES=${MANY_TABLES:-25000}
STEPS=${STEPS:-"1 2 3 4 5 6 7 8 9"}
BRSTANZA=bench
BUCKET=pgward-bench

# shellcheck source=scripts/bench-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

PASS=$BASE/cipher-pass
S3P=$BASE/pgward-s3-plain.toml
S3E=$BASE/pgward-s3-enc.toml
SPOOL=$BASE/spool-pgward
SPOOL_QUEUE=$SPOOL/plain/push   # wait_archived also waits for this spool to drain
MOTO_DIR=$BASE/moto
RST=$BASE/restore
TARGETS=$BASE/archive-targets
WRAPPER=$BASE/archive-pgbackrest-pgward.sh
MOTO_SH=$BENCH_LIB_DIR/moto.sh

bench_preflight
bench_install_packages curl
bench_resolve_pgward

PGENV=(env PGHOST="$BASE" PGPORT="$PORT" PGUSER=postgres PGDATABASE=postgres)
BR=(pgbackrest --config="$CONF" --stanza="$BRSTANZA" --log-level-console=info)
# pgward command prefix of a variant (stanza): local-plain local-enc s3-plain s3-enc
pgw() {
    case $1 in
        local-plain) PW=("${PGENV[@]}" "$PGWARD" --repo "$PWREPO" --stanza plain) ;;
        local-enc)   PW=("${PGENV[@]}" "$PGWARD" --repo "$PWREPO" --stanza enc --cipher-pass-file "$PASS") ;;
        local-many)  PW=("${PGENV[@]}" "$PGWARD" --repo "$PWREPO" --stanza many) ;;
        s3-plain)    PW=("${PGENV[@]}" "$PGWARD" --config "$S3P") ;;
        s3-enc)      PW=("${PGENV[@]}" "$PGWARD" --config "$S3E") ;;
        *) die "unknown variant $1" ;;
    esac
}

# ---------------------------------------------------------------- clean slate
# background archive-push workers of our spool (started through our archive_command)
stop_spool_workers() {
    local p c
    for p in /proc/[0-9]*; do
        c=$(tr '\0' ' ' 2>/dev/null < "$p/cmdline") || continue
        if [[ $c == "$PGWARD "* && $c == *" archive-push-worker --spool-path $SPOOL"* ]]; then
            log "stopping background archive-push worker pid ${p#/proc/}"
            kill "${p#/proc/}" 2>/dev/null || true
        fi
    done
}
stop_all() {
    local d
    for d in "$RST"-* "$PGDATA"; do [ -d "$d" ] && stop_server "$d"; done
    if [ -d "$MOTO_DIR" ]; then bash "$MOTO_SH" stop "$MOTO_DIR" || true; fi
    stop_spool_workers
}
[ -d "$BASE" ] && stop_all
bench_fresh_base aget "${SPOOL#"$BASE"/}" "${MOTO_DIR#"$BASE"/}"
bench_install_pgward

cleanup() {
    local rc=$?
    stop_all
    rm -rf "$RST"-* "$BASE"/pgbb-*
    log "servers (and moto) stopped, restore directories removed; raw results in $RES (exit $rc, script ran $((SECONDS - T_START)) s)"
}
trap cleanup EXIT

# ---------------------------------------------------------------- helpers
# (run_timed, record, wait_archived, new_dir, ...: bench-lib.sh)
set_archive_command() {   # COMMAND (ALTER SYSTEM + reload)
    psqlq -c "ALTER SYSTEM SET archive_command = '$1'"
    psqlq -c "SELECT pg_reload_conf()" >/dev/null
    sleep 1
}
set_targets() { echo "$*" > "$TARGETS"; log "archive targets: $*"; }
pw_label_last() { pgw "$1"; pg "${PW[@]}" --output json info 2>/dev/null | jq -r '.backups | sort_by(.label) | last | .label // empty'; }
pw_stored() {   # VARIANT LABEL
    pgw "$1"; pg "${PW[@]}" --output json info 2>/dev/null |
        jq -r --arg l "$2" '[.backups[] | select(.label == $l) | .stored_size] | first // 0'
}

# ---------------------------------------------------------------- cluster, repositories
head -c 32 /dev/urandom | base64 > "$PASS"; chmod 600 "$PASS"
for v in plain enc; do
    f=$S3P; [ $v = enc ] && f=$S3E
    {
        echo "[global]"
        echo "repo = \"s3://$BUCKET/$v\""
        echo "stanza = \"$v\""
        echo "s3-endpoint = \"http://127.0.0.1:$MOTO_PORT\""
        echo "s3-region = \"us-east-1\""
        echo "s3-uri-style = \"path\""
        echo "s3-key = \"test\""
        echo "s3-key-secret = \"test\""
        [ $v = enc ] && echo "cipher-pass-file = \"$PASS\""
    } > "$f"
    chmod 600 "$f"
done

# archive_command for the load and steps 1-2: pushes each segment, in parallel, to every
# target named in $TARGETS; each push is timed into $RES/archive-push-TARGET.log
cat > "$WRAPPER" <<EOF
#!/bin/bash
seg=\$1; b=\$(basename "\$1"); pids=()
for t in \$(cat $TARGETS); do
    case \$t in
        pgbackrest)  cmd=(pgbackrest --config=$CONF --stanza=$BRSTANZA archive-push "\$seg") ;;
        local-plain) cmd=($PGWARD --repo $PWREPO --stanza plain --compress lz4 archive-push "\$seg") ;;
        local-enc)   cmd=($PGWARD --repo $PWREPO --stanza enc --cipher-pass-file $PASS --compress lz4 archive-push "\$seg") ;;
        local-many)  cmd=($PGWARD --repo $PWREPO --stanza many --compress lz4 archive-push "\$seg") ;;
        s3-plain)    cmd=($PGWARD --config $S3P --compress lz4 archive-push "\$seg") ;;
        s3-enc)      cmd=($PGWARD --config $S3E --compress lz4 archive-push "\$seg") ;;
        *) echo "unknown archive target \$t" >&2; exit 1 ;;
    esac
    /usr/bin/time -a -o $RES/archive-push-\$t.log -f "\$b %e %M %U %S %x" "\${cmd[@]}" &
    pids+=(\$!)
done
rc=0
for p in "\${pids[@]}"; do wait "\$p" || rc=1; done
exit \$rc
EOF
chmod 755 "$WRAPPER"
for t in pgbackrest local-plain local-enc local-many s3-plain s3-enc; do touch "$RES/archive-push-$t.log"; done
set_targets pgbackrest local-plain local-enc
chown -R postgres:postgres "$BASE"

bench_initdb "$WRAPPER %p" bench-extra.sh
bench_pgbackrest_conf "$BRSTANZA"
bench_start_source

WALL=0 RSS=0 USR=0 SYS=0 SRV=0
setup_step stanza-create-pgbackrest pgbackrest 1 stanza-create "${BR[@]}" stanza-create
pgw local-plain
setup_step stanza-create-local-plain local-plain 1 stanza-create "${PW[@]}" stanza-create
pgw local-enc
setup_step stanza-create-local-enc local-enc 1 "stanza-create --cipher aes-256-gcm" \
    "${PW[@]}" stanza-create --cipher aes-256-gcm
psqlq -c "SELECT pg_switch_wal()" >/dev/null; psqlq -c "CHECKPOINT"

PUSHLOG_L0=$(wc -l < "$RES/archive-push-local-plain.log")
log "pgbench -i -s $SCALE"
setup_step pgbench-init pgbench-init 1 "pgbench -i -s $SCALE" \
    pgbench -i -s "$SCALE" -h "$BASE" -p "$PORT" postgres
pg vacuumdb -h "$BASE" -p "$PORT" --all --analyze -q
psqlq -c "CHECKPOINT"
psqlq -c "SELECT pg_switch_wal()" >/dev/null
wait_archived
log "load WAL archived by pgBackRest, pgward plain and pgward enc ${ARCH_WAIT}s after the load ended"
SRC_NOWAL=$(datasize)
SRC_TOTAL=$(du -sb "$PGDATA" | cut -f1)
log "source: du -sb pgdata = $SRC_TOTAL, without pg_wal = $SRC_NOWAL"
# load segments pushed (exit 0) by both pgBackRest and pgward plain, for step 5
tail -n +"$((PUSHLOG_L0 + 1))" "$RES/archive-push-local-plain.log" |
    awk '$6 == 0 && length($1) == 24 && $1 ~ /^[0-9A-F]+$/ {print $1}' > "$RES/load-segments.txt"
awk '$6 == 0 && length($1) == 24 && $1 ~ /^[0-9A-F]+$/ {print $1}' "$RES/archive-push-pgbackrest.log" > "$RES/br-segments.txt"
# (small scales: fewer load segments than AGET_SEGS -> also earlier ones pushed to both)
{ grep -Fxf "$RES/br-segments.txt" "$RES/load-segments.txt" || true
  grep -Fxvf "$RES/load-segments.txt" "$RES/br-segments.txt" || true; } | head -"$AGET_SEGS" > "$RES/aget-segments.txt"

order2() {   # RUN A B -> "A B" on odd runs, "B A" on even runs
    if (( $1 % 2 == 1 )); then echo "$2 $3"; else echo "$3 $2"; fi
}

# backup_restore STEP COMPRESS VARIANT_A VARIANT_B  (RUNS backups each, then RUNS restores each)
declare -A LABEL
backup_restore() {
    local step=$1 comp=$2 a=$3 b=$4 r o v label bytes dir id
    for r in $(seq 1 "$RUNS"); do
        o=0
        for v in $(order2 "$r" "$a" "$b"); do
            o=$((o + 1)); wait_archived
            id=$step-backup-$v-$comp-$r
            pgw "$v"; run_timed "$id" "${PW[@]}" backup --type full --jobs 2 --compress "$comp"
            label=$(pw_label_last "$v" || true); bytes=0
            if [ "$RC" -eq 0 ] && [ -n "$label" ]; then bytes=$(pw_stored "$v" "$label"); fi
            LABEL[$step-$v-$comp-$r]=$label
            record "$step-backup" "$v-$comp" "$r" "$o" "$bytes" "label=${label:-none}" "$id"
        done
    done
    wait_archived
    for r in $(seq 1 "$RUNS"); do
        o=0
        for v in $(order2 "$r" "$a" "$b"); do
            o=$((o + 1)); dir=$RST-$v; new_dir "$dir"
            id=$step-restore-$v-$comp-$r; label=${LABEL[$step-$v-$comp-$r]}
            pgw "$v"; run_timed "$id" "${PW[@]}" restore --set "$label" --pgdata "$dir" --archive-mode off --jobs 2
            bytes=$(du -sb "$dir" | cut -f1)
            record "$step-restore" "$v-$comp" "$r" "$o" "$bytes" "label=$label into empty $dir" "$id"
            if [ "$r" = "$RUNS" ] && [ "$RC" -eq 0 ]; then
                [ -f "$dir/postgresql.auto.conf" ] && cp "$dir/postgresql.auto.conf" "$RES/$id.postgresql.auto.conf"
            fi
            rm -rf "$dir"
        done
    done
}

# ================================================================ 1. encryption, local
if want 1; then
    log "=== step 1: encryption cost, local repository"
    set_targets local-plain local-enc
    psqlq -c "SELECT pg_switch_wal()" >/dev/null; wait_archived
    backup_restore s1 lz4 local-plain local-enc
    backup_restore s1 zstd local-plain local-enc
fi

# ================================================================ 2. S3 (moto)
S3_OK=0
if want 2; then
    log "=== step 2: S3 (moto on 127.0.0.1:$MOTO_PORT)"
    if bash "$MOTO_SH" start "$MOTO_PORT" "$MOTO_DIR" 2> "$RES/moto-start.log" &&
            curl -sf -X PUT "http://127.0.0.1:$MOTO_PORT/$BUCKET" > /dev/null; then
        chown -R postgres:postgres "$MOTO_DIR"
        pgw s3-plain; run_timed stanza-create-s3-plain "${PW[@]}" stanza-create
        record setup s3-plain 1 1 0 stanza-create stanza-create-s3-plain; rc1=$RC
        pgw s3-enc; run_timed stanza-create-s3-enc "${PW[@]}" stanza-create --cipher aes-256-gcm
        record setup s3-enc 1 1 0 "stanza-create --cipher aes-256-gcm" stanza-create-s3-enc
        if [ "$rc1" -eq 0 ] && [ "$RC" -eq 0 ]; then
            S3_OK=1
            wait_archived
            set_targets s3-plain s3-enc
            psqlq -c "SELECT pg_switch_wal()" >/dev/null; wait_archived
            backup_restore s2 lz4 s3-plain s3-enc
            MOTO_RSS=$(awk '/VmHWM/{print $2}' "/proc/$(cat "$MOTO_DIR/moto.pid")/status" 2>/dev/null || echo '?')
        fi
    else
        log "moto did not start: $(cat "$RES/moto-start.log")"
    fi
    wait_archived
fi
set_targets local-plain
wait_archived

# direct archive_commands (no wrapper) for steps 3-7, stanza plain of the local repository
SYNC_CMD="$PGWARD --repo $PWREPO --stanza plain --compress lz4 archive-push %p"
ASYNC_CMD="$PGWARD --repo $PWREPO --stanza plain --compress lz4 archive-push --async --spool-path $SPOOL --archive-push-queue-max $QUEUE_MAX %p"

# ================================================================ 3. async archiving
# sample_backlog MODE: pgbench -c 2 -T LOAD_SECS in the background, a sample every 5 s
# until the load ended and the backlog drained (max DRAIN_MAX s after the load)
sample_backlog() {
    local mode=$1 out=$RES/s3-backlog-$1.tsv t0 now el k=0 bpid lsn0 lsn ac fc ready spool ended=-1 pbrc
    : > "$out"
    lsn0=$(psqlq -c "SELECT pg_current_wal_lsn()")
    read -r AC0 FC0 < <(psqlq -F' ' -c "SELECT archived_count, failed_count FROM pg_stat_archiver")
    pg pgbench -c 2 -T "$LOAD_SECS" -h "$BASE" -p "$PORT" postgres > "$RES/s3-pgbench-$mode.out" 2>&1 &
    bpid=$!
    t0=$(date +%s.%N)
    while :; do
        now=$(date +%s.%N); el=$(echo "$now - $t0" | bc)
        ready=$(ready_count); spool=$(spool_count)
        read -r ac fc < <(psqlq -F' ' -c "SELECT archived_count, failed_count FROM pg_stat_archiver")
        lsn=$(psqlq -c "SELECT round(pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn0') / 1048576.0)")
        printf '%.0f\t%s\t%s\t%s\t%s\t%s\t%s\n' "$el" "$ready" "$spool" "$((ac - AC0))" "$((fc - FC0))" "$lsn" \
            "$([ "$ended" -ge 0 ] && echo post || echo load)" >> "$out"
        if [ "$ended" -lt 0 ] && ! kill -0 "$bpid" 2>/dev/null; then
            pbrc=0; wait "$bpid" || pbrc=$?
            ended=$(printf '%.0f' "$el")
            [ "$pbrc" -eq 0 ] || log "pgbench ($mode) exit $pbrc"
        fi
        if [ "$ended" -ge 0 ] && [ "$ready" -eq 0 ] && [ "$spool" -eq 0 ]; then
            DRAIN[$mode]=$(printf '%.0f' "$(echo "$el - $ended" | bc)"); break
        fi
        if [ "$ended" -ge 0 ] && [ "$(echo "$el - $ended > $DRAIN_MAX" | bc)" = 1 ]; then
            DRAIN[$mode]=">$DRAIN_MAX"; break
        fi
        k=$((k + 1))
        sleep "$(echo "$t0 + 5 * $k - $(date +%s.%N)" | bc | awk '{print ($1 > 0) ? $1 : 0}')"
    done
    TPS[$mode]=$(awk '/^tps/ {printf "%.0f", $3; exit}' "$RES/s3-pgbench-$mode.out")
    WALMB[$mode]=$(awk -F'\t' '{m=$6} END{print m}' "$out")
    MAXREADY[$mode]=$(awk -F'\t' '$2>m{m=$2} END{print m+0}' "$out")
    MAXSPOOL[$mode]=$(awk -F'\t' '$3>m{m=$3} END{print m+0}' "$out")
    FAILS[$mode]=$(awk -F'\t' '{m=$5} END{print m+0}' "$out")
    log "step 3 $mode: tps=${TPS[$mode]} WAL=${WALMB[$mode]}MB max .ready=${MAXREADY[$mode]} max spool=${MAXSPOOL[$mode]} failed=${FAILS[$mode]} drained ${DRAIN[$mode]}s after the load"
}
declare -A DRAIN TPS WALMB MAXREADY MAXSPOOL FAILS
if want 3; then
    log "=== step 3: asynchronous archiving under pgbench -c 2 -T $LOAD_SECS"
    set_archive_command "$ASYNC_CMD"
    ASYNC_SHOWN=$(psqlq -c "SHOW archive_command")
    psqlq -c "SELECT pg_switch_wal()" >/dev/null; wait_archived
    sample_backlog async
    set_archive_command "$SYNC_CMD"
    psqlq -c "SELECT pg_switch_wal()" >/dev/null; wait_archived
    sample_backlog sync
    cp "$SPOOL/plain/push/.last-error" "$RES/s3-spool-last-error.txt" 2>/dev/null || true
else
    set_archive_command "$SYNC_CMD"
fi
psqlq -c "SELECT pg_switch_wal()" >/dev/null; wait_archived

# ================================================================ 4. prefetch
declare -A RECOV REDO REPLAYED
if want 4; then
    log "=== step 4: restore_command prefetch"
    pgw local-plain
    run_timed s4-backup "${PW[@]}" backup --type full --jobs 2 --compress lz4
    S4_LABEL=$(pw_label_last local-plain || true)
    record s4-backup local-plain-lz4 1 1 "$(pw_stored local-plain "$S4_LABEL")" "label=$S4_LABEL" s4-backup
    # no autovacuum while the restored copies recover: otherwise the vacuum of the updated
    # table keeps adding WAL to the archive and the two recoveries replay different amounts
    psqlq -c "ALTER SYSTEM SET autovacuum = off"; psqlq -c "SELECT pg_reload_conf()" >/dev/null
    LSN0=$(psqlq -c "SELECT pg_current_wal_lsn()")
    NACC=$((100000 * SCALE)); CH=$(( (NACC + 9) / 10 )); k=0
    t0=$SECONDS
    while :; do
        gen=$(psqlq -c "SELECT round(pg_wal_lsn_diff(pg_current_wal_lsn(), '$LSN0') / 1048576.0)")
        [ "$gen" -ge "$PREFETCH_WAL_MB" ] && break
        [ "$k" -ge 400 ] && { log "stopping WAL generation after $k UPDATEs"; break; }
        lo=$(( (k % 10) * CH + 1 )); hi=$(( (k % 10 + 1) * CH ))
        psqlq -c "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN $lo AND $hi"
        k=$((k + 1))
    done
    psqlq -c "SELECT pg_switch_wal()" >/dev/null
    S4_GEN_S=$((SECONDS - t0))
    wait_archived
    S4_WAL=$(psqlq -c "SELECT round(pg_wal_lsn_diff(pg_current_wal_lsn(), '$LSN0') / 1048576.0)")
    S4_UPD=$k
    S4_SUM=$(psqlq -c "SELECT sum(abalance) FROM pgbench_accounts")
    log "step 4: $S4_WAL MB of WAL after the backup ($S4_UPD UPDATEs of 1/10 of the table, ${S4_GEN_S}s), archived ${ARCH_WAIT}s later"
    for mode in prefetch noprefetch; do
        dir=$RST-$mode; new_dir "$dir"
        run_timed "s4-restore-$mode" "${PW[@]}" restore --set "$S4_LABEL" --pgdata "$dir" --archive-mode off --jobs 2
        record s4-restore "$mode" 1 1 "$(du -sb "$dir" | cut -f1)" "label=$S4_LABEL" "s4-restore-$mode"
        [ "$RC" -eq 0 ] || continue
        if [ $mode = noprefetch ]; then
            sed -i 's/ archive-get %f/ archive-get --archive-get-queue-max 0 %f/' "$dir/postgresql.auto.conf"
        fi
        grep -h restore_command "$dir/postgresql.auto.conf" > "$RES/s4-restore_command-$mode.txt" || true
        sync
        t0=$(date +%s.%N)
        if pg pg_ctl -D "$dir" -l "$BASE/log/restored-$mode.log" -t 3600 -w \
                -o "-p $RPORT -c listen_addresses=''" start > "$RES/s4-start-$mode.out" 2>&1; then
            for _ in $(seq 1 18000); do
                [ "$(rq -c 'SELECT pg_is_in_recovery()' 2>/dev/null || echo t)" = f ] && break
                sleep 0.2
            done
            RECOV[$mode]=$(printf '%.2f' "$(echo "$(date +%s.%N) - $t0" | bc)")
            REDO[$mode]=$(grep -o 'redo done at .*' "$BASE/log/restored-$mode.log" | head -1 || true)
            l0=$(grep -o 'redo starts at [0-9A-F/]*' "$BASE/log/restored-$mode.log" | head -1 | awk '{print $4}')
            l1=$(grep -o 'redo done at [0-9A-F/]*' "$BASE/log/restored-$mode.log" | head -1 | awk '{print $4}')
            [ -n "$l0" ] && [ -n "$l1" ] && REPLAYED[$mode]=$(psqlq -c "SELECT round(pg_wal_lsn_diff('$l1', '$l0') / 1048576.0)")
            SUMR=$(rq -c "SELECT sum(abalance) FROM pgbench_accounts" || echo ERROR)
            [ "$SUMR" = "$S4_SUM" ] && REDO[$mode]="${REDO[$mode]}; data MATCH" || REDO[$mode]="${REDO[$mode]}; data MISMATCH ($SUMR vs $S4_SUM)"
            stop_server "$dir"
        else
            RECOV[$mode]=FAILED
            cat "$RES/s4-start-$mode.out" >&2; tail -20 "$BASE/log/restored-$mode.log" >&2 || true
        fi
        cp "$BASE/log/restored-$mode.log" "$RES/s4-restored-$mode.log" 2>/dev/null || true
        log "step 4 $mode: start to end of recovery ${RECOV[$mode]} s, replayed ${REPLAYED[$mode]:-?} MB (${REDO[$mode]})"
        rm -rf "$dir"
    done
    psqlq -c "ALTER SYSTEM RESET autovacuum"; psqlq -c "SELECT pg_reload_conf()" >/dev/null
fi

# ================================================================ 5. archive-get per segment
if want 5; then
    log "=== step 5: archive-get per segment ($(wc -l < "$RES/aget-segments.txt") segments)"
    for r in $(seq 1 "$RUNS"); do
        o=0
        for tool in $(order2 "$r" pgward pgbackrest); do
            o=$((o + 1))
            while read -r seg; do
                rm -f "$BASE/aget/$seg"
                if [ "$tool" = pgward ]; then
                    pgw local-plain
                    run_timed "s5-$tool-$r-$seg" "${PW[@]}" archive-get --archive-get-queue-max 0 "$seg" "$BASE/aget/$seg"
                else
                    run_timed "s5-$tool-$r-$seg" "${BR[@]}" archive-get "$seg" "$BASE/aget/$seg"
                fi
                sz=$(stat -c %s "$BASE/aget/$seg" 2>/dev/null || echo 0)
                [ "$sz" -eq 16777216 ] || RC=${RC/#0/99}
                record s5-archive-get "$tool" "$r" "$o" "$sz" "$seg" "s5-$tool-$r-$seg"
                rm -f "$BASE/aget/$seg"
            done < "$RES/aget-segments.txt"
        done
    done
fi

# ================================================================ 6. pg_basebackup vs pgward
if want 6; then
    log "=== step 6: pg_basebackup -Ft --compress=server-lz4 vs pgward backup lz4 --jobs 2"
    wait_archived
    for r in $(seq 1 "$RUNS"); do
        o=0
        for tool in $(order2 "$r" pgward pg_basebackup); do
            o=$((o + 1)); wait_archived
            if [ "$tool" = pgward ]; then
                pgw local-plain
                run_timed "s6-pgward-$r" "${PW[@]}" backup --type full --jobs 2 --compress lz4
                label=$(pw_label_last local-plain || true)
                record s6-backup pgward "$r" "$o" "$(pw_stored local-plain "$label")" "label=$label" "s6-pgward-$r"
            else
                d=$BASE/pgbb-$r; new_dir "$d"
                run_timed "s6-pg_basebackup-$r" pg_basebackup -h "$BASE" -p "$PORT" -U postgres -D "$d" \
                    -Ft --compress=server-lz4 --checkpoint=fast --no-sync
                record s6-backup pg_basebackup "$r" "$o" "$(du -sb "$d" | cut -f1)" "-Ft --compress=server-lz4 --checkpoint=fast --no-sync (-X stream)" "s6-pg_basebackup-$r"
                rm -rf "$d"
            fi
        done
    done
fi

# ================================================================ 7. peak memory at MEM_SCALE
MEM_NOTE="not run"
if want 7 && [ "$MEM_SCALE" -gt 0 ]; then
    log "=== step 7: peak memory at scale $MEM_SCALE"
    [ "$S3_OK" = 1 ] && { bash "$MOTO_SH" stop "$MOTO_DIR"; S3_OK=2; }
    need_kb=$(( MEM_SCALE * 60 * 1024 ))   # ~60 MB per scale unit: data, WAL, archive, backup, restore
    avail_kb=$(df -Pk "$BASE" | awk 'NR==2 {print $4}')
    if [ $(( avail_kb - need_kb )) -lt $(( 15 * 1024 * 1024 )) ]; then
        MEM_NOTE="skipped: $((avail_kb / 1048576)) GiB free, needs ~$((need_kb / 1048576)) GiB and must leave 15 GiB"
        log "$MEM_NOTE"
    else
        run_timed s7-pgbench-init pgbench -i -s "$MEM_SCALE" -h "$BASE" -p "$PORT" postgres
        record s7-setup pgbench-init 1 1 0 "scale $MEM_SCALE" s7-pgbench-init
        psqlq -c "CHECKPOINT"; psqlq -c "SELECT pg_switch_wal()" >/dev/null; wait_archived
        MEM_SRC=$(datasize)
        pgw local-plain
        run_timed s7-backup "${PW[@]}" backup --type full --jobs 2 --compress lz4
        S7_LABEL=$(pw_label_last local-plain || true)
        record s7-backup pgward 1 1 "$(pw_stored local-plain "$S7_LABEL")" "label=$S7_LABEL; source $MEM_SRC bytes" s7-backup
        dir=$RST-mem; new_dir "$dir"
        run_timed s7-restore "${PW[@]}" restore --set "$S7_LABEL" --pgdata "$dir" --archive-mode off --jobs 2
        record s7-restore pgward 1 1 "$(du -sb "$dir" | cut -f1)" "label=$S7_LABEL" s7-restore
        rm -rf "$dir"
        MEM_NOTE="scale $MEM_SCALE, source without pg_wal $MEM_SRC bytes, $((avail_kb / 1048576)) GiB free before"
    fi
fi


# ================================================================ 8. delta restore
# pgward and pgBackRest each restore their own full backup of the same data over the same
# diverged directory (two copies of it), and into an empty one for reference.
if want 8; then
    log "=== step 8: delta restore after a 1% divergence (pgward --delta vs pgBackRest --delta)"
    set_archive_command "$WRAPPER %p"; set_targets pgbackrest local-plain
    psqlq -c "SELECT pg_switch_wal()" >/dev/null; wait_archived
    pgw local-plain
    run_timed s8-backup-pgward "${PW[@]}" backup --type full --jobs 2 --compress lz4
    S8_PW=$(pw_label_last local-plain || true)
    record s8-backup pgward 1 1 "$(pw_stored local-plain "$S8_PW")" "label=$S8_PW" s8-backup-pgward
    run_timed s8-backup-pgbackrest "${BR[@]}" backup --type=full --process-max=2
    S8_BR=$(pg pgbackrest --config="$CONF" --stanza="$BRSTANZA" --output=json info | jq -r '.[0].backup | last | .label')
    record s8-backup pgbackrest 1 1 0 "label=$S8_BR" s8-backup-pgbackrest
    psqlq -c "SELECT pg_switch_wal()" >/dev/null; wait_archived
    set_targets local-plain
    [ -n "$S8_PW" ] && [ -n "$S8_BR" ] || die "step 8: a full backup failed"
    NACC=$((100000 * SCALE)); ONEPCT=$((NACC / 100))
    S8_DIV=$RST-diverged
    for r in $(seq 1 "$RUNS"); do
        # the diverged directory: pgward's restore, recovered, 1% changed, stopped cleanly
        new_dir "$S8_DIV"
        pgw local-plain
        pg "${PW[@]}" restore --set "$S8_PW" --pgdata "$S8_DIV" --archive-mode off --jobs 2 > "$RES/s8-diverge-$r.out" 2>&1 ||
            die "step 8: restore of the copy to diverge failed"
        start_restored "$S8_DIV" "s8-diverge-$r" || die "step 8: the copy to diverge did not start"
        lo=$(( (r % 100) * ONEPCT + 1 )); hi=$(( (r % 100 + 1) * ONEPCT ))
        rq -c "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN $lo AND $hi" -c "CHECKPOINT"
        stop_server "$S8_DIV"
        o=0
        for tool in $(order2 "$r" pgward pgbackrest); do
            o=$((o + 1))
            dir=$RST-delta-$tool
            rm -rf "$dir"; cp -a "$S8_DIV" "$dir"
            drop_caches
            if [ "$tool" = pgward ]; then
                run_timed "s8-delta-$tool-$r" "${PW[@]}" --output json restore --delta --set "$S8_PW" --pgdata "$dir" --archive-mode off --jobs 2
                note="pgward: $(sed -n '/^{/,/^}/p' "$RES/s8-delta-$tool-$r.out" | jq -c '.delta' 2>/dev/null || echo '?')"
            else
                run_timed "s8-delta-$tool-$r" "${BR[@]}" --pg1-path="$dir" restore --set="$S8_BR" --delta --archive-mode=off --process-max=2
                note="aid $lo..$hi"
            fi
            record s8-delta "$tool" "$r" "$o" "$((FSO * 512))" "$note" "s8-delta-$tool-$r"
            rm -rf "$dir"
        done
        o=0
        for tool in $(order2 "$r" pgward pgbackrest); do
            o=$((o + 1))
            dir=$RST-full-$tool; new_dir "$dir"
            drop_caches
            if [ "$tool" = pgward ]; then
                run_timed "s8-full-$tool-$r" "${PW[@]}" restore --set "$S8_PW" --pgdata "$dir" --archive-mode off --jobs 2
            else
                run_timed "s8-full-$tool-$r" "${BR[@]}" --pg1-path="$dir" restore --set="$S8_BR" --archive-mode=off --process-max=2
            fi
            record s8-full "$tool" "$r" "$o" "$((FSO * 512))" "into an empty directory" "s8-full-$tool-$r"
            rm -rf "$dir"
        done
    done
    rm -rf "$S8_DIV"
fi

# ================================================================ 9. many files
# pw_many_count: full backups in pgward's stanza "many"
pw_many_count() { pgw local-many; pg "${PW[@]}" --output json info 2>/dev/null | jq -r '[.backups[] | select(.type == "full")] | length'; }
br_label_last() { pg pgbackrest --config="$CONF" --stanza="$BRSTANZA" --output=json info | jq -r '.[0].backup | last | .label'; }
if want 9; then
    log "=== step 9: $MANY_TABLES small tables"
    pgw local-many
    setup_step stanza-create-local-many local-many 1 stanza-create "${PW[@]}" stanza-create
    set_archive_command "$WRAPPER %p"; set_targets pgbackrest local-many
    psqlq -c "CREATE DATABASE many"
    t0=$SECONDS
    for lo in $(seq 1 1000 "$MANY_TABLES"); do
        hi=$((lo + 999)); [ "$hi" -gt "$MANY_TABLES" ] && hi=$MANY_TABLES
        # one transaction per 1000 tables (2 locks each, under the default lock table)
        pg psql -X -v ON_ERROR_STOP=1 -h "$BASE" -p "$PORT" -d many -q <<SQL
BEGIN;
SELECT format('CREATE TABLE t%s (id int PRIMARY KEY, v int); INSERT INTO t%s VALUES (%s, 0)', i, i, i)
  FROM generate_series($lo, $hi) i \gexec
COMMIT;
SQL
    done
    # one VACUUM of the database (vacuumdb sends one per table: 25,000 round trips)
    pg psql -X -v ON_ERROR_STOP=1 -h "$BASE" -p "$PORT" -d many -q -c "VACUUM"
    psqlq -c "CHECKPOINT"; psqlq -c "SELECT pg_switch_wal()" >/dev/null; wait_archived
    MANY_FILES=$(find "$PGDATA" -path "$PGDATA/pg_wal" -prune -o -type f -print | wc -l)
    MANY_SRC=$(datasize)
    log "step 9: $MANY_TABLES tables in $((SECONDS - t0)) s; the cluster has $MANY_FILES files outside pg_wal ($MANY_SRC bytes)"
    # one full each before the rounds: round r finds r fulls stored
    pgw local-many
    setup_step s9-prefull-pgward local-many 1 "untimed first full" "${PW[@]}" backup --type full --jobs 2 --compress lz4
    setup_step s9-prefull-pgbackrest pgbackrest 1 "untimed first full" "${BR[@]}" backup --type=full --process-max=2
    declare -A S9_LABEL
    for r in $(seq 1 "$RUNS"); do
        nfull=$(pw_many_count)
        for kind in full restore-full incr restore-chain; do
            if [ "$kind" = incr ]; then
                for i in $(seq 1 10); do
                    pg psql -X -h "$BASE" -p "$PORT" -d many -Atqc "UPDATE t$(( (r * 37 + i * 101) % MANY_TABLES + 1 )) SET v = v + 1" >/dev/null
                done
                psqlq -c "CHECKPOINT"
            fi
            o=0
            for tool in $(order2 "$r" pgward pgbackrest); do
                o=$((o + 1)); wait_archived
                id=s9-$kind-$tool-$r
                case $kind in
                    full|incr)
                        if [ "$tool" = pgward ]; then
                            pgw local-many
                            run_timed "$id" "${PW[@]}" backup --type "$kind" --jobs 2 --compress lz4
                            S9_LABEL[$kind-$tool]=$(pw_label_last local-many || true)
                        else
                            run_timed "$id" "${BR[@]}" backup --type="$kind" --process-max=2
                            S9_LABEL[$kind-$tool]=$(br_label_last)
                        fi
                        record "s9-$kind" "$tool" "$r" "$o" 0 "label=${S9_LABEL[$kind-$tool]}; pgward fulls stored before: $nfull" "$id" ;;
                    restore-*)
                        if [ "$kind" = restore-chain ]; then label=${S9_LABEL[incr-$tool]:-}; else label=${S9_LABEL[full-$tool]:-}; fi
                        dir=$RST-many-$tool; new_dir "$dir"
                        # The other tool's 100,000 restored files were just removed: on an ext4
                        # without a journal (this machine's), creating files while their inode
                        # table blocks are cached and their deletion recent scans them per new
                        # file (the kernel's recently_deleted), and the tool that restores next
                        # pays for it (5x the wall, most of it system time). Cold, both start equal.
                        drop_caches
                        if [ "$tool" = pgward ]; then
                            pgw local-many
                            run_timed "$id" "${PW[@]}" restore --set "$label" --pgdata "$dir" --archive-mode off --jobs 2
                        else
                            run_timed "$id" "${BR[@]}" --pg1-path="$dir" restore --set="$label" --archive-mode=off --process-max=2
                        fi
                        files=$(find "$dir" -path "$dir/pg_wal" -prune -o -type f -print | wc -l)
                        record "s9-$kind" "$tool" "$r" "$o" "$files" "label=$label; files restored (bytes column); pgward fulls stored: $nfull" "$id"
                        rm -rf "$dir" ;;
                esac
            done
        done
    done
    set_archive_command "$SYNC_CMD"; set_targets local-plain
fi

# ---------------------------------------------------------------- finish
for v in local-plain local-enc; do pgw $v; pg "${PW[@]}" --output json info > "$RES/pgward-info-$v.json" 2>&1 || true; done
cp "$BASE/log/postgres.log" "$RES/source-postgres.log" || true
stop_server "$PGDATA"
if [ -d "$MOTO_DIR" ]; then bash "$MOTO_SH" stop "$MOTO_DIR" || true; fi

# ---------------------------------------------------------------- report
# (col, median, rng, ratio, mib, mb, mbps, nok, arch_stats: bench-lib.sh)
{
echo "## pgward extras: encryption, S3, async archiving, prefetch, archive-get, pg_basebackup, memory, delta restore"
echo
echo "- host: $(host_line); machine shared with other work"
echo "- $(pgward_line); $(pgbackrest version); server $(postgres --version | awk '{print $3}')"
echo "- pgbench scale $SCALE; source after load: du -sb pgdata = $SRC_TOTAL bytes, **without pg_wal = $SRC_NOWAL bytes** (MB/s below = this / wall)"
LOADS=$(awk -F'\t' '$1!="setup" && $14 != "-" {n++; s+=$14; if($14>m)m=$14} END{if(n) printf "mean %.2f, max %.2f", s/n, m; else print "n/a"}' "$TSV")
echo "- $RUNS runs per variant, alternating order (odd runs: plain first); \`sync\` before each timed step; WAL archiving idle before each backup; host 1-min load before the timed steps: $LOADS"
echo
if want 1 || want 2; then
echo "### 1-2. Full backup and restore (--jobs 2), medians"
echo
echo "| repository | cipher | compress | runs ok | backup wall s (min–max) | backup MB/s | stored MB | backup max RSS MiB | backup user+sys s | restore wall s (min–max) | restore MB/s | restore max RSS MiB | restore user+sys s |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for sv in "s1 local-plain lz4" "s1 local-enc lz4" "s1 local-plain zstd" "s1 local-enc zstd" "s2 s3-plain lz4" "s2 s3-enc lz4"; do
    read -r s v c <<<"$sv"
    [ -n "$(awk -F'\t' -v s="$s-backup" -v v="$v-$c" '$1==s && $2==v' "$TSV")" ] || continue
    bw=$(col "$s-backup" "$v-$c" 6 | median); rw=$(col "$s-restore" "$v-$c" 6 | median)
    bc_=$(awk -F'\t' -v s="$s-backup" -v v="$v-$c" '$1==s && $2==v && $5=="ok" {printf "%.2f\n", $8+$9}' "$TSV" | median)
    rc_=$(awk -F'\t' -v s="$s-restore" -v v="$v-$c" '$1==s && $2==v && $5=="ok" {printf "%.2f\n", $8+$9}' "$TSV" | median)
    repo=${v%-*}; ciph=none; [ "${v#*-}" = enc ] && ciph=aes-256-gcm
    echo "| $repo | $ciph | $c | $(nok "$s-backup" "$v-$c" "$RUNS") + $(nok "$s-restore" "$v-$c" "$RUNS") | $bw ($(col "$s-backup" "$v-$c" 6 | rng)) | $(mbps "$SRC_NOWAL" "$bw") | $(mb "$(col "$s-backup" "$v-$c" 11 | median)") | $(mib "$(col "$s-backup" "$v-$c" 7 | median)") | $bc_ | $rw ($(col "$s-restore" "$v-$c" 6 | rng)) | $(mbps "$SRC_NOWAL" "$rw") | $(mib "$(col "$s-restore" "$v-$c" 7 | median)") | $rc_ |"
done
echo
echo "| ratio (median wall) | backup | restore |"
echo "|---|---|---|"
for pr in "s1 local-enc-lz4 s1 local-plain-lz4 encrypted/plain, local, lz4" \
          "s1 local-enc-zstd s1 local-plain-zstd encrypted/plain, local, zstd" \
          "s1 local-plain-zstd s1 local-plain-lz4 zstd/lz4, local, plain" \
          "s2 s3-enc-lz4 s2 s3-plain-lz4 encrypted/plain, S3, lz4" \
          "s2 s3-plain-lz4 s1 local-plain-lz4 S3/local, plain, lz4" \
          "s2 s3-enc-lz4 s1 local-enc-lz4 S3/local, encrypted, lz4"; do
    read -r sa va sb vb name <<<"$pr"
    echo "| $name | $(ratio "$(col "$sa-backup" "$va" 6 | median)" "$(col "$sb-backup" "$vb" 6 | median)") | $(ratio "$(col "$sa-restore" "$va" 6 | median)" "$(col "$sb-restore" "$vb" 6 | median)") |"
done
echo
for t in local-plain local-enc pgbackrest s3-plain s3-enc; do
    read -r n m x r f < <(arch_stats "$RES/archive-push-$t.log")
    [ "$n" -gt 0 ] && echo "- archive-push $t (lz4, synchronous, pushes to the targets in parallel): $n calls, median ${m} s, max ${x} s, max RSS $(mib "$r") MiB, $f failed"
done
[ "$S3_OK" != 0 ] && echo "- moto server peak RSS (VmHWM) after step 2: $(mib "${MOTO_RSS:-}") MiB"
[ "$S3_OK" = 0 ] && want 2 && echo "- **S3 step not run** (moto start or stanza-create failed; see $RES/moto-start.log, $RES/stanza-create-s3-*.out)"
echo
fi
if want 3; then
echo "### 3. Archiving backlog under \`pgbench -c 2 -T $LOAD_SECS\` (sampled every 5 s)"
echo
echo "- async: \`$ASYNC_SHOWN\`"
echo "- sync: \`$SYNC_CMD\`"
echo "- columns: .ready = files in pg_wal/archive_status waiting for archive_command; spool = WAL files queued in $SPOOL/plain/push; archived/failed = pg_stat_archiver deltas since the load started; WAL MB = WAL written since the load started"
echo
echo "| t s | async .ready | async spool | async archived | async failed | async WAL MB | sync .ready | sync archived | sync failed | sync WAL MB |"
echo "|---|---|---|---|---|---|---|---|---|---|"
join -t$'\t' -a1 -a2 -e '-' -o '0,1.2,1.3,1.4,1.5,1.6,1.7,2.2,2.4,2.5,2.6,2.7' \
    <(awk -F'\t' '{printf "%05d\t%s\t%s\t%s\t%s\t%s\t%s\n", $1,$2,$3,$4,$5,$6,$7}' "$RES/s3-backlog-async.tsv" | sort) \
    <(awk -F'\t' '{printf "%05d\t%s\t%s\t%s\t%s\t%s\t%s\n", $1,$2,$3,$4,$5,$6,$7}' "$RES/s3-backlog-sync.tsv" | sort) |
    awk -F'\t' '{ a = ($7=="post") ? " (after load)" : ""; printf "| %d%s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, a, $2,$3,$4,$5,$6, $8,$9,$10,$11 }'
echo
echo "| mode | pgbench tps | WAL MB | max .ready | max spool | archive failures | backlog drained after load end |"
echo "|---|---|---|---|---|---|---|"
for m in async sync; do
    echo "| $m | ${TPS[$m]:-?} | ${WALMB[$m]:-?} | ${MAXREADY[$m]:-?} | ${MAXSPOOL[$m]:-?} | ${FAILS[$m]:-?} | ${DRAIN[$m]:-?} s |"
done
[ -s "$RES/s3-spool-last-error.txt" ] && echo && echo "- spool .last-error: \`$(head -c 400 "$RES/s3-spool-last-error.txt")\`"
echo
fi
if want 4; then
echo "### 4. Recovery with and without archive-get prefetch"
echo
echo "- backup $S4_LABEL, then $S4_WAL MB of WAL (autovacuum off from here until both recoveries ended) ($S4_UPD UPDATEs of a tenth of pgbench_accounts each, ${S4_GEN_S} s), switched and archived (synchronous lz4 archive-push)"
echo "- restore (timed), then \`pg_ctl start\` on port $RPORT until \`pg_is_in_recovery()\` = false (end of archive, promotion)"
echo
echo "| restore_command | restore wall s | start to end of recovery s | WAL replayed MB (redo start..done) | replay MB/s (start to end) | PostgreSQL redo line; data check |"
echo "|---|---|---|---|---|---|"
for m in prefetch noprefetch; do
    echo "| \`$(sed 's/^restore_command = //' "$RES/s4-restore_command-$m.txt" 2>/dev/null | tr -d "'" | sed "s#$PGWARD#pgward#")\` | $(col s4-restore "$m" 6 | median) | ${RECOV[$m]:-?} | ${REPLAYED[$m]:-?} | $(awk -v b="${REPLAYED[$m]:-}" -v w="${RECOV[$m]:-}" 'BEGIN{ if (w+0 > 0 && b != "") printf "%.0f", b / w; else print "n/a" }') | ${REDO[$m]:-?} |"
done
echo
echo "- **ratio no-prefetch / prefetch (start to end of recovery): $(ratio "${RECOV[noprefetch]:-nan}" "${RECOV[prefetch]:-nan}")**"
echo
fi
if want 5; then
echo "### 5. archive-get per 16 MiB segment (load segments, lz4 in both repositories, $RUNS rounds, alternating)"
echo
echo "| tool | calls ok | median wall s | min–max s | median max RSS MiB | median user+sys s |"
echo "|---|---|---|---|---|---|"
for t in pgward pgbackrest; do
    echo "| $t | $(col s5-archive-get $t 6 | wc -l)/$(( RUNS * $(wc -l < "$RES/aget-segments.txt") )) | $(col s5-archive-get $t 6 | median) | $(col s5-archive-get $t 6 | rng) | $(mib "$(col s5-archive-get $t 7 | median)") | $(awk -F'\t' -v t=$t '$1=="s5-archive-get" && $2==t && $5=="ok" {printf "%.2f\n", $8+$9}' "$TSV" | median) |"
done
echo
echo "- ratio pgward/pgBackRest (median wall per segment): **$(ratio "$(col s5-archive-get pgward 6 | median)" "$(col s5-archive-get pgbackrest 6 | median)")**; pgward with \`--archive-get-queue-max 0\`; segments $(head -1 "$RES/aget-segments.txt")…$(tail -1 "$RES/aget-segments.txt")"
echo
fi
if want 6; then
echo "### 6. pg_basebackup -Ft --compress=server-lz4 vs pgward backup lz4 --jobs 2"
echo
echo "| tool | runs ok | median wall s | min–max s | MB/s | median bytes | median max RSS MiB | median user+sys s | median srv CPU s |"
echo "|---|---|---|---|---|---|---|---|---|"
for t in pgward pg_basebackup; do
    w=$(col s6-backup $t 6 | median)
    echo "| $t | $(nok s6-backup $t "$RUNS") | $w | $(col s6-backup $t 6 | rng) | $(mbps "$SRC_NOWAL" "$w") | $(col s6-backup $t 11 | median) | $(mib "$(col s6-backup $t 7 | median)") | $(awk -F'\t' -v t=$t '$1=="s6-backup" && $2==t && $5=="ok" {printf "%.2f\n", $8+$9}' "$TSV" | median) | $(col s6-backup $t 10 | median) |"
done
echo
echo "- ratio pgward/pg_basebackup (median wall): **$(ratio "$(col s6-backup pgward 6 | median)" "$(col s6-backup pg_basebackup 6 | median)")** (pgward bytes = stored_size of its bundles; pg_basebackup bytes = du of base.tar.lz4 + pg_wal.tar; srv CPU includes the server-side lz4 compression)"
echo
fi
if want 7; then
echo "### 7. Peak memory at scale $MEM_SCALE ($MEM_NOTE)"
echo
if [ -n "$(col s7-backup pgward 6)" ] || [ -n "$(awk -F'\t' '$1=="s7-backup"' "$TSV")" ]; then
    echo "| step | status | wall s | max RSS MiB | user s | sys s | bytes |"
    echo "|---|---|---|---|---|---|---|"
    awk -F'\t' '$1=="s7-backup" || $1=="s7-restore" || $1=="s7-setup" {printf "| %s | %s | %.2f | %.1f | %s | %s | %s |\n", $1, $5, $6, $7/1024, $8, $9, $11}' "$TSV"
fi
echo
fi
if want 8; then
echo "### 8. Delta restore after a 1% divergence (--jobs/--process-max 2, DROP_CACHES=${DROP_CACHES:-0})"
echo
echo "- the diverged directory: pgward's restore of its full backup, recovered and promoted, then 1% of pgbench_accounts (contiguous aids) updated, CHECKPOINT, clean stop; each tool restores its own full backup of the same data over a copy of it; bytes written = GNU time's file system outputs × 512 (what the page cache handed the kernel for this process, fsyncs included)"
echo
echo "| tool | delta runs ok | delta wall s (min–max) | delta written MB | full restore wall s (min–max) | full written MB | delta/full wall | delta max RSS MiB |"
echo "|---|---|---|---|---|---|---|---|"
for t in pgward pgbackrest; do
    dw=$(col s8-delta $t 6 | median); fw=$(col s8-full $t 6 | median)
    echo "| $t | $(nok s8-delta $t "$RUNS") | $dw ($(col s8-delta $t 6 | rng)) | $(mb "$(col s8-delta $t 11 | median)") | $fw ($(col s8-full $t 6 | rng)) | $(mb "$(col s8-full $t 11 | median)") | $(ratio "$dw" "$fw") | $(mib "$(col s8-delta $t 7 | median)") |"
done
echo
echo "- ratio pgward/pgBackRest, delta restore (median wall): **$(ratio "$(col s8-delta pgward 6 | median)" "$(col s8-delta pgbackrest 6 | median)")**; pgward's own report per run is in the per-run table's note"
echo
fi
if want 9; then
echo "### 9. Many files: $MANY_TABLES tables, ${MANY_FILES:-?} files outside pg_wal (--jobs/--process-max 2, lz4)"
echo
echo "- round r runs against repositories already holding r full backups (and r-1 incrementals); incremental after updating 10 tables; restores into an empty directory"
echo
echo "| step | pgward wall s (min–max) | pgBackRest wall s (min–max) | pgward/pgBackRest | pgward max RSS MiB per round | pgBackRest max RSS MiB (median) |"
echo "|---|---|---|---|---|---|"
for k in full restore-full incr restore-chain; do
    pw=$(col "s9-$k" pgward 6 | median); br=$(col "s9-$k" pgbackrest 6 | median)
    rss=$(awk -F'\t' -v s="s9-$k" '$1==s && $2=="pgward" {printf "%s%.1f", (n++ ? " / " : ""), $7/1024}' "$TSV")
    echo "| $k | $pw ($(col "s9-$k" pgward 6 | rng)) | $br ($(col "s9-$k" pgbackrest 6 | rng)) | **$(ratio "$pw" "$br")** | $rss | $(mib "$(col "s9-$k" pgbackrest 7 | median)") |"
done
echo
fi
echo "### Per run"
echo
echo "| step | variant | run | order | status | wall s | max RSS MiB | user s | sys s | srv CPU s | bytes | load | note |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
awk -F'\t' '$1!="s5-archive-get" {printf "| %s | %s | %s | %s | %s | %.2f | %.1f | %s | %s | %s | %s | %s | %s |\n", $1,$2,$3,$4,$5,$6,$7/1024,$8,$9,$10,$11,$14,$12}' "$TSV"
echo
FAILED=$(awk -F'\t' '$5!="ok" {print $13}' "$TSV")
if [ -n "$FAILED" ]; then
    echo "### Failures"
    echo
    for id in $FAILED; do
        echo "- $id ($(awk -F'\t' -v id="$id" '$13==id {print $5}' "$TSV")), \`$RES/$id.out\`:"
        echo
        echo '```'
        tail -15 "$RES/$id.out" 2>/dev/null || true
        echo '```'
    done
    echo
fi
echo "- script wall time: $((SECONDS - T_START)) s"
} | tee "$RES/results.md"
