#!/usr/bin/env bash
# bench.sh -- THE benchmark harness: pgward against pgBackRest (and pg_basebackup) on the
# same data, in the same run, on this host.  Extras (encryption, S3, asynchronous
# archiving, prefetch, memory at scale 500) are in bench-extra.sh.
#
# Self-contained: installs pgBackRest, GNU time, jq and bc from Debian if missing, builds
# pgward (`cargo build --release`) if no binary is there, creates a scratch PostgreSQL
# cluster (data checksums) under $BASE whose archive_command pushes every WAL segment into
# BOTH tools' repositories (lz4), loads pgbench data (then vacuumdb --all --analyze +
# vacuumdb --all, so that autovacuum's first catalog pass after initdb does not fall into
# the "no change" step), then runs these steps ($STEPS), each tool alternating with the
# other (odd rounds pgward first, even rounds pgBackRest first), RUNS rounds each:
#   full     full backups, lz4 and zstd, --jobs 1 and 2 (pgBackRest: --compress-type
#            lz4/zst, --process-max 1/2), each tool at its default compression level; and
#            pg_basebackup -Ft --compress=server-lz4 --checkpoint=fast (-X stream) in the
#            same rounds, syncing its files as pgward does (BB_SYNC=0 adds --no-sync);
#   incr     one full per tool (lz4, --jobs 2), then RUNS incrementals each after an UPDATE
#            of a contiguous 1% of pgbench_accounts (aid BETWEEN k*N/100+1 AND (k+1)*N/100,
#            a different k each round) + CHECKPOINT, each with the page cache dropped
#            first (DROP_CACHES=1; both tools' programs are then loaded again, untimed),
#            so that what it reads from disk is what it needs;
#            then RUNS incrementals with nothing changed (warm), and one more by pgward
#            with the page cache dropped (lz4, --jobs 2; 3 s sleeps keep both tools'
#            timestamp checks honest);
#   restore  restore of the latest full and of the full+incr chain of the incr step
#            (full + the 1% incrementals + the no-change ones) by each tool, and by pgward
#            of a full taken right after the chain's last backup (the same data, for the
#            chain/full target), into an empty
#            directory, --archive-mode off, --jobs 2 / --process-max 2.  Before each one
#            the previous target is removed (but for the one kept for the check), `sync`,
#            and with DROP_CACHES=1 the page cache is dropped (echo 3 >
#            /proc/sys/vm/drop_caches), so both tools read their repository cold and no
#            writeback of the previous restore lands in the next one.  Once, not timed,
#            the pgward-restored chain is started on $RPORT (it recovers from pgward's
#            archive) and compared with the source: rows and a hash of every row of the
#            four pgbench tables;
#   archive  archive-push of AR_SEGS real WAL segments, the load's first (fetched
#            beforehand from the archive, untimed), one process per segment, into a fresh
#            scratch stanza and repository per tool and round (the real archive is not
#            touched; lz4 for both), by pgward with block maps (--wal-maps on) and
#            without them (tool pgward-nomaps); then archive-get of the same segments, one process
#            each, from those repositories (pgward with prefetch off:
#            --archive-get-queue-max 0; pgBackRest synchronous), each result compared
#            byte for byte with the original.
# Prints a markdown table of medians (successful runs), pgward/other ratios, the project's
# targets and whether they are met, and each side's peak RSS, then the block-map table
# (issue 12; PASS/MISS per row): archive-push with maps against without, map bytes per
# GiB of WAL (every map of the run's real archive), and, page cache dropped, the bytes
# the incrementals read from disk (GNU time's file system inputs of the command and its
# children) and their wall against pgBackRest's; stops every server it
# started (trap on EXIT) and removes the restore directories.  Per-run raw figures stay in
# $BASE/results/results.tsv (columns: see bench-lib.sh), every command's output in
# $BASE/results/ID.{out,time,cmd}, the report in $BASE/results/results.md, a per-run
# table in $BASE/results/per-run.md.
#
# Usage (as root):   bash scripts/bench.sh
#   (SCALE=100, RUNS=3 is meant to finish within 10 minutes on the 2-core development VM;
#   SCALE=5 RUNS=2 takes about 2.5 minutes there)
#
# Environment knobs:
#   SCALE        pgbench scale (default 100, ~1.6 GB of data, N = 100000*SCALE accounts)
#   RUNS         rounds of each timed step per tool (default 3)
#   BASE         work directory, wiped at start (default /tmp/pgward-bench)
#   PGWARD       pgward binary (default: the repository's target/release/pgward, built with
#                `cargo build --release` when missing); copied to $BASE/bin for the
#                postgres user
#   PORT / RPORT port of the source / restored cluster (default 5497 / 5496; unix socket
#                in $BASE only)
#   PGVER        PostgreSQL major version (default 15, Debian's)
#   STEPS        steps to run (default "full incr restore archive"); restore without incr
#                takes its own full per tool and restores only that
#   AR_SEGS      WAL segments for archive-push/get (default 10): the load's first, then
#                other segments archived by both tools (fewer if not that many were)
#   DROP_CACHES  1 (default): drop the page cache before each timed restore; 0: warm
#   BB_SYNC      1 (default): pg_basebackup fsyncs what it wrote, as pgward does; 0: --no-sync
#
# What is measured (every command runs as the postgres OS user under /usr/bin/time -v,
# after `sync`, once WAL archiving has caught up):
#   * wall to the microsecond ($EPOCHREALTIME of a bash right around the command, inside
#     GNU time: GNU time's own wall has 10 ms steps), max RSS, user, sys from GNU time.
#     user+sys include waited-for children (pgBackRest's local worker processes); max
#     RSS is the largest single process (pgward: one multi-threaded process; pgBackRest:
#     main or one worker, not a sum); "peak" = the largest over a row's runs.
#   * srv CPU: CPU seconds used meanwhile by the cluster (postmaster and children,
#     including archive_command children), from /proc/*/stat.
#   * bytes: a backup's stored data (pgward `info` stored_size; pgBackRest `info`
#     repository.delta; pg_basebackup du -sb of its tar files), a restore's du -sb.
#   * bytes read: GNU time's "File system inputs" x 512 (reads that missed the page
#     cache, the command's and its children's), in column 15 of results.tsv.
set -euo pipefail

SCALE=${SCALE:-100}
RUNS=${RUNS:-3}
BASE=${BASE:-/tmp/pgward-bench}
PORT=${PORT:-5497}
RPORT=${RPORT:-5496}
PGVER=${PGVER:-15}
STEPS=${STEPS:-"full incr restore archive"}
AR_SEGS=${AR_SEGS:-10}
DROP_CACHES=${DROP_CACHES:-1}
BB_SYNC=${BB_SYNC:-1}
STANZA=bench
HIRES_WALL=1   # wall to the microsecond (run_timed), not GNU time's 10 ms

# shellcheck source=scripts/bench-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

RST_PWF=$BASE/restore-pgward-full
RST_PWI=$BASE/restore-pgward-chain
RST_BRF=$BASE/restore-pgbackrest-full
RST_BRI=$BASE/restore-pgbackrest-chain
RST_PWS=$BASE/restore-pgward-same
RST_DIRS=("$RST_PWF" "$RST_PWI" "$RST_BRF" "$RST_BRI" "$RST_PWS")
WRAPPER=$BASE/pgbackrest-and-pgward-archive-push.sh
AR=$BASE/archive-bench        # scratch repositories and segments of the archive step
NACC=$((100000 * SCALE))
# k of the 1% slices, one per round: at SCALE 100 the first three lie in the first 1 GiB
# segment of pgbench_accounts (the new row versions are appended to its last segment)
K_SEQ=(10 40 70 25 55 85 5 35 65 95 15 45 75 20 50 80 0 30 60 90)
for s in $STEPS; do
    case $s in full|incr|restore|archive) ;; *) echo "unknown step '$s' in STEPS (full incr restore archive)" >&2; exit 1;; esac
done
[ "$AR_SEGS" -ge 1 ] 2>/dev/null || { echo "AR_SEGS must be >= 1" >&2; exit 1; }

bench_preflight
bench_install_packages
bench_resolve_pgward
for d in "${RST_DIRS[@]}" "$PGDATA"; do stop_server "$d"; done
bench_fresh_base archive-bench/segs archive-bench/get
bench_install_pgward

cleanup() {
    local rc=$?
    for d in "${RST_DIRS[@]}" "$PGDATA"; do stop_server "$d"; done
    rm -rf "${RST_DIRS[@]}" "$BASE"/pgbb-*
    log "servers stopped, restore directories removed; raw results in $RES (exit $rc, script ran $((SECONDS - T_START)) s)"
}
trap cleanup EXIT

PGENV=(env PGHOST="$BASE" PGPORT="$PORT" PGUSER=postgres PGDATABASE=postgres)
# command prefixes (argument vectors) for the two tools, run as postgres
PGW=("${PGENV[@]}" "$PGWARD" --repo "$PWREPO" --stanza "$STANZA")
BR=(pgbackrest --config="$CONF" --stanza="$STANZA" --log-level-console=info)

# newest backup of each tool as one line of JSON
br_last() { pg "${BR[@]}" info --output=json 2>/dev/null | jq -c '.[0].backup[-1] // empty'; }
pw_last() { pg "${PGW[@]}" --output json info 2>/dev/null | jq -c '.backups | sort_by(.label) | last // empty'; }
order_for() { if (( $1 % 2 == 1 )); then echo "pgward pgbackrest"; else echo "pgbackrest pgward"; fi; }
order3_for() {   # archive-push: pgward with block maps, without them, pgBackRest
    if (( $1 % 2 == 1 )); then echo "pgward pgward-nomaps pgbackrest"; else echo "pgbackrest pgward-nomaps pgward"; fi
}

# ================================================================ cluster and load
setup_cluster() {
    cat > "$WRAPPER" <<EOF
#!/bin/sh
# archive_command: push each WAL segment to pgBackRest's and then to pgward's repository
# (the name must contain "pgbackrest": pgBackRest's check/backup insist on that).
# Each push is timed; logs: $RES/archive-push-{pgbackrest,pgward}.log
/usr/bin/time -a -o $RES/archive-push-pgbackrest.log -f "\$(basename "\$1") %e %M %U %S %x" \\
    pgbackrest --config=$CONF --stanza=$STANZA archive-push "\$1" &&
/usr/bin/time -a -o $RES/archive-push-pgward.log -f "\$(basename "\$1") %e %M %U %S %x" \\
    $PGWARD --repo $PWREPO --stanza $STANZA --compress lz4 archive-push "\$1"
EOF
    chmod 755 "$WRAPPER"; chown postgres:postgres "$WRAPPER"
    touch "$RES/archive-push-pgbackrest.log" "$RES/archive-push-pgward.log"
    chown postgres:postgres "$RES" "$RES"/archive-push-*.log

    bench_initdb "$WRAPPER %p" bench.sh
    bench_pgbackrest_conf "$STANZA"
    bench_start_source

    WALL=0 RSS=0 USR=0 SYS=0 SRV=0
    setup_step stanza-create-pgbackrest pgbackrest 1 stanza-create "${BR[@]}" stanza-create
    setup_step stanza-create-pgward pgward 1 stanza-create "${PGW[@]}" stanza-create
    run_timed check-pgbackrest "${BR[@]}" check
    record setup pgbackrest 1 2 0 "check (WAL switch through the archive_command wrapper)" check-pgbackrest
    if [ "$RC" -ne 0 ]; then
        tail -5 "$RES"/archive-push-*.log "$BASE/log/postgres.log" >&2
        die "pgbackrest check failed (is archive_command working? see above)"
    fi

    PUSHLOG_L0=$(wc -l < "$RES/archive-push-pgward.log")
    log "pgbench -i -s $SCALE"
    setup_step pgbench-init pgbench-init 1 "pgbench -i -s $SCALE" \
        pgbench -i -s "$SCALE" -h "$BASE" -p "$PORT" postgres
    # Pre-empt autovacuum's first visit to template1/postgres after initdb (it ANALYZEs
    # the catalogs and VACUUMs pg_statistic a minute or two after start-up), which would
    # otherwise land in the middle of the "no change" incrementals: analyze, then vacuum
    # away what the analyze left behind.
    pg vacuumdb -h "$BASE" -p "$PORT" --all --analyze -q
    pg vacuumdb -h "$BASE" -p "$PORT" --all -q
    psqlq -c "CHECKPOINT"
    wait_archived
    log "load WAL archived by both tools ${ARCH_WAIT}s after the load ended"
    # segments of the load pushed by pgward (exit 0), for the archive step
    tail -n +"$((PUSHLOG_L0 + 1))" "$RES/archive-push-pgward.log" |
        awk '$6 == 0 && length($1) == 24 && $1 ~ /^[0-9A-F]+$/ {print $1}' > "$RES/load-segments.txt"
    SRC_NOWAL=$(datasize)
    SRC_TOTAL=$(du -sb "$PGDATA" | cut -f1)
    log "source: du -sb pgdata = $SRC_TOTAL, without pg_wal = $SRC_NOWAL"
    sleep 3
}

# ================================================================ backups
# backup_one STEP TOOL TYPE COMPRESS JOBS RUN ORDER : one timed backup; records stored
# bytes and checks that what was stored is of the type asked for
declare -A LAST_LABEL   # tool -> newest label
backup_one() {
    local step=$1 tool=$2 type=$3 comp=$4 jobs=$5 r=$6 o=$7 id b label bytes=0 note got=""
    id="$step-$tool-$r"
    wait_archived
    if [ "$tool" = pgward ]; then
        run_timed "$id" "${PGW[@]}" backup --type "$type" --jobs "$jobs" --compress "$comp"
        b=$(pw_last || true); label=$(jq -r '.label // empty' <<<"$b")
        note="label=${label:-none}"
        if [ "$RC" -eq 0 ] && [ -n "$label" ]; then
            got=$(jq -r .type <<<"$b"); bytes=$(jq -r .stored_size <<<"$b")
            note="label=$label type=$got reference=$(jq -r '.reference // "-"' <<<"$b") files=$(jq -r .file_count <<<"$b") chain=$(jq -r '.chain | length' <<<"$b"); $(pw_phases "$RES/$id.out")"
            LAST_LABEL[pgward]=$label
        fi
    else
        local brcomp=$comp; [ "$comp" = zstd ] && brcomp=zst
        run_timed "$id" "${BR[@]}" backup --type="$type" --compress-type="$brcomp" --process-max="$jobs"
        b=$(br_last || true); label=$(jq -r '.label // empty' <<<"$b")
        note="label=${label:-none}"
        if [ "$RC" -eq 0 ] && [ -n "$label" ]; then
            got=$(jq -r .type <<<"$b"); bytes=$(jq -r .info.repository.delta <<<"$b")
            note="label=$label type=$got prior=$(jq -r '.prior // "-"' <<<"$b") db.delta=$(jq -r .info.delta <<<"$b"); $(br_phases "$RES/$id.out")"
            LAST_LABEL[pgbackrest]=$label
        fi
    fi
    if [ "$RC" -eq 0 ] && [ -n "$label" ] && [ "$got" != "$type" ]; then
        RC=98; note="TYPE MISMATCH (asked $type, got $got): $note"
        log "$tool stored a $got backup when asked for $type"
    fi
    record "$step" "$tool" "$r" "$o" "$bytes" "$note" "$id"
}

basebackup_one() {   # RUN ORDER
    local r=$1 o=$2 d=$BASE/pgbb-$1 id=full-pg_basebackup-$1
    wait_archived
    new_dir "$d"
    local opts=(-Ft --compress=server-lz4 --checkpoint=fast)
    [ "$BB_SYNC" = 1 ] || opts+=(--no-sync)
    run_timed "$id" pg_basebackup -h "$BASE" -p "$PORT" -U postgres -D "$d" "${opts[@]}"
    record full-pg_basebackup pg_basebackup "$r" "$o" "$(du -sb "$d" | cut -f1)" \
        "${opts[*]} (-X stream)" "$id"
    rm -rf "$d"
}

FULL_CONFIGS=("lz4 1" "lz4 2" "zstd 1" "zstd 2")
step_full() {
    log "=== full backups: lz4/zstd x --jobs 1/2 by both tools, and pg_basebackup server-lz4; $RUNS rounds"
    local seq=() items=() c i r o tool comp jobs
    for c in "lz4 1" "lz4 2"; do seq+=("pgward $c" "pgbackrest $c"); done
    seq+=("pg_basebackup lz4 1")
    for c in "zstd 1" "zstd 2"; do seq+=("pgward $c" "pgbackrest $c"); done
    for r in $(seq 1 "$RUNS"); do
        items=()   # odd rounds in this order, even rounds reversed
        if (( r % 2 == 1 )); then items=("${seq[@]}"); else
            for ((i = ${#seq[@]} - 1; i >= 0; i--)); do items+=("${seq[i]}"); done
        fi
        o=0
        for c in "${items[@]}"; do
            o=$((o + 1)); read -r tool comp jobs <<<"$c"
            if [ "$tool" = pg_basebackup ]; then basebackup_one "$r" "$o"
            else backup_one "full-$comp-j$jobs" "$tool" full "$comp" "$jobs" "$r" "$o"; fi
        done
    done
}

# one full per tool (lz4, --jobs 2): the base of the incremental chain / of the restores
FULL_PW=""; FULL_BR=""; INCR_PW=""; INCR_BR=""; CHAIN_PW=""; CHAIN_LEN=0; SAME_PW=""
base_full() {
    local o=0 tool
    for tool in $(order_for 1); do
        o=$((o + 1))
        [ $o -gt 1 ] && sleep 3
        backup_one base-full "$tool" full lz4 2 1 "$o"
    done
    FULL_PW=${LAST_LABEL[pgward]:-}
    FULL_BR=${LAST_LABEL[pgbackrest]:-}
    [ -n "$FULL_BR" ] || die "pgBackRest full backup failed"
    [ -n "$FULL_PW" ] || die "pgward full backup failed"
    sleep 3
}

# after the page cache is dropped, load both tools' programs again (untimed): the
# bytes-read rows count what a backup reads, not the loading of its executable (pgward's
# alone is about 20 MB)
warm_programs() {
    pg "$PGWARD" --version >/dev/null 2>&1 || true
    pg pgbackrest version >/dev/null 2>&1 || true
    pg /usr/bin/time -o /dev/null bash -c true 2>/dev/null || true
}

UPD_NOTES=()
step_incr() {
    local r o k lo hi t0 ut tool
    log "=== incremental backups: $RUNS after a 1% change, $RUNS after no change"
    base_full
    for r in $(seq 1 "$RUNS"); do
        k=${K_SEQ[$(( (r - 1) % ${#K_SEQ[@]} ))]}
        lo=$((k * NACC / 100 + 1)); hi=$(((k + 1) * NACC / 100))
        t0=$(date +%s.%N)
        psqlq -c "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN $lo AND $hi" -c "CHECKPOINT"
        ut=$(printf '%.2f' "$(echo "$(date +%s.%N) - $t0" | bc)")
        wait_archived
        UPD_NOTES+=("round $r: k=$k, aid $lo..$hi, UPDATE+CHECKPOINT ${ut}s, archive catch-up ${ARCH_WAIT}s")
        log "${UPD_NOTES[-1]}"
        sleep 3
        o=0
        for tool in $(order_for "$r"); do
            o=$((o + 1))
            [ $o -gt 1 ] && sleep 3
            drop_caches; warm_programs
            backup_one incr-1pct "$tool" incr lz4 2 "$r" "$o"
        done
    done
    for r in $(seq 1 "$RUNS"); do
        o=0
        for tool in $(order_for "$r"); do
            o=$((o + 1))
            sleep 3
            backup_one incr-0 "$tool" incr lz4 2 "$r" "$o"
        done
    done
    sleep 3
    drop_caches; warm_programs
    backup_one incr-0-cold pgward incr lz4 2 1 1
    INCR_PW=${LAST_LABEL[pgward]:-}
    INCR_BR=${LAST_LABEL[pgbackrest]:-}
    [ "$INCR_PW" != "$FULL_PW" ] || INCR_PW=""
    [ "$INCR_BR" != "$FULL_BR" ] || INCR_BR=""
    CHAIN_PW=$(pg "${PGW[@]}" --output json info 2>/dev/null |
        jq -r --arg l "$INCR_PW" '.backups[] | select(.label == $l) | .chain | join(" ")' || true)
    CHAIN_LEN=$(wc -w <<<"$CHAIN_PW")
    log "latest pgward incr $INCR_PW (chain: $CHAIN_PW); latest pgBackRest incr $INCR_BR"
    # A pgward full of the data the chain ends with (nothing changed since): the project's
    # chain target compares the chain's restore with the restore of such a full.
    if [ -n "$INCR_PW" ]; then
        sleep 3
        backup_one same-full pgward full lz4 2 1 1
        SAME_PW=${LAST_LABEL[pgward]:-}
        [ "$SAME_PW" != "$INCR_PW" ] || SAME_PW=""
    fi
}

# ================================================================ restores
# restore_one KIND RUN ORDER   KIND = pw-full | pw-chain | br-full | br-chain
restore_one() {
    local kind=$1 r=$2 o=$3 dir step tool set id d
    case $kind in
        pw-full)  dir=$RST_PWF; step=restore-full;  tool=pgward;     set=$FULL_PW;;
        pw-chain) dir=$RST_PWI; step=restore-chain; tool=pgward;     set=$INCR_PW;;
        pw-same)  dir=$RST_PWS; step=restore-same;  tool=pgward;     set=$SAME_PW;;
        br-full)  dir=$RST_BRF; step=restore-full;  tool=pgbackrest; set=$FULL_BR;;
        br-chain) dir=$RST_BRI; step=restore-chain; tool=pgbackrest; set=$INCR_BR;;
    esac
    id="$step-$tool-$r"
    # the previous targets go (all but the one kept for the check, unless restored again)
    for d in "${RST_DIRS[@]}"; do
        if [ "$d" != "$CHECK_DIR" ] || [ "$d" = "$dir" ]; then stop_server "$d"; rm -rf "$d"; fi
    done
    drop_caches
    new_dir "$dir"
    if [ "$tool" = pgward ]; then
        run_timed "$id" "${PGW[@]}" restore --set "$set" --pgdata "$dir" --archive-mode off --jobs 2
    else
        run_timed "$id" "${BR[@]}" --pg1-path="$dir" restore --set="$set" --archive-mode=off --process-max=2
    fi
    record "$step" "$tool" "$r" "$o" "$(du -sb "$dir" | cut -f1)" "set=$set into empty $dir" "$id"
}

step_restore() {
    local kinds=(pw-full br-full) r o k d ordered
    log "=== restores (DROP_CACHES=$DROP_CACHES)"
    [ -n "$FULL_PW" ] || base_full
    # pgward's restore of the chain (or of the full) is kept for the check
    CHECK_DIR=$RST_PWF
    if [ -n "$INCR_PW" ] && [ -n "$INCR_BR" ]; then kinds+=(pw-chain br-chain); CHECK_DIR=$RST_PWI; fi
    [ -z "$SAME_PW" ] || kinds+=(pw-same)
    for r in $(seq 1 "$RUNS"); do
        if (( r % 2 == 1 )); then ordered=("${kinds[@]}"); else
            ordered=(); for ((k = ${#kinds[@]} - 1; k >= 0; k--)); do ordered+=("${kinds[k]}"); done
        fi
        o=0
        for k in "${ordered[@]}"; do o=$((o + 1)); restore_one "$k" "$r" "$o"; done
    done
    for d in "${RST_DIRS[@]}"; do [ "$d" = "$CHECK_DIR" ] || rm -rf "$d"; done
}

# start the kept pgward restore (it recovers from pgward's archive) and compare it with
# the source; no write reaches the source after the last backup
VERIFY="NOT RUN"; RECOV=-; SRC_SUM=-; RST_SUM=-; RST_RESTORECMD=-; CHECK_DIR=""
check_restored() {
    local what="full ($FULL_PW)" step=restore-full
    [ "$CHECK_DIR" != "$RST_PWI" ] || { what="full+incr chain ($INCR_PW)"; step=restore-chain; }
    if [ ! -f "$CHECK_DIR/PG_VERSION" ] ||
            [ "$(awk -F'\t' -v s=$step '$1==s && $2=="pgward" {st=$5} END{print st}' "$TSV")" != ok ]; then
        VERIFY="NOT RUN (pgward's last restore of the $what failed)"; return
    fi
    SRC_SUM=$(pgbench_checksum "$PORT")
    log "starting the pgward-restored $what on port $RPORT (recovery from pgward's archive)"
    if start_restored "$CHECK_DIR" pgward; then
        RST_SUM=$(pgbench_checksum "$RPORT" || echo ERROR)
        RST_RESTORECMD=$(rq -c "SHOW restore_command" || echo '?')
        if [ "$SRC_SUM" = "$RST_SUM" ] && [ "$RST_INREC" = f ]; then VERIFY=MATCH
        elif [ "$SRC_SUM" = "$RST_SUM" ]; then VERIFY="MATCH (but still in recovery: pg_is_in_recovery=$RST_INREC)"
        else VERIFY=MISMATCH; fi
        stop_server "$CHECK_DIR"
    else
        VERIFY="FAILED TO START"
    fi
    cp "$BASE/log/restored-pgward.log" "$RES/" 2>/dev/null || true
    VERIFY="$VERIFY: pgward-restored $what"
    log "correctness: source $SRC_SUM; restored $RST_SUM -> $VERIFY (start to end of recovery ${RECOV}s)"
    rm -rf "$CHECK_DIR"
}

# ================================================================ archive-push / archive-get
AR_LIST=$RES/archive-segments.txt
AR_NOTE="not run"
# AR_SEGS segments pushed by both tools: load segments first, then any other ones
pick_segments() {
    local both=$RES/archived-by-both.txt
    awk '$6 == 0 && length($1) == 24 && $1 ~ /^[0-9A-F]+$/ {print $1}' "$RES/archive-push-pgbackrest.log" |
        grep -Fxf - <(awk '$6 == 0 && length($1) == 24 && $1 ~ /^[0-9A-F]+$/ {print $1}' "$RES/archive-push-pgward.log") |
        sort -u > "$both" || true
    { grep -Fxf "$both" "$RES/load-segments.txt" || true
      grep -Fxvf "$RES/load-segments.txt" "$both" || true; } | head -"$AR_SEGS" | sort > "$AR_LIST"
}

# scratch stanza "ar" in a repository of its own, per tool and round (pgBackRest: the
# configuration of the real stanza, the repository path on the command line)
ar_pw() { AR_CMD=("${PGENV[@]}" "$PGWARD" --repo "$AR/pgward-$1" --stanza ar); }
ar_br() {
    AR_CMD=(pgbackrest --config="$AR/pgbackrest.conf" --stanza=ar --repo1-path="$AR/pgbackrest-$1"
            --log-level-console=info)
}

step_archive() {
    local seg n nload r o tool sz
    log "=== archive-push / archive-get per segment"
    wait_archived
    pick_segments
    n=$(wc -l < "$AR_LIST"); nload=$(grep -cFxf "$RES/load-segments.txt" "$AR_LIST" || true)
    [ "$n" -gt 0 ] || { log "no segment archived by both tools: archive step skipped"; AR_NOTE="skipped: no segment"; return; }
    AR_NOTE="$n segments ($nload of them written by the load), $(head -1 "$AR_LIST")…$(tail -1 "$AR_LIST")"
    log "archive step: $AR_NOTE"
    sed "s/^\[$STANZA\]\$/[ar]/" "$CONF" > "$AR/pgbackrest.conf"; chown postgres:postgres "$AR/pgbackrest.conf"
    while read -r seg; do   # untimed: the originals, from pgBackRest's real archive
        pg "${BR[@]}" archive-get "$seg" "$AR/segs/$seg" > "$RES/ar-fetch-$seg.out" 2>&1 ||
            die "cannot fetch $seg from pgBackRest's archive (see $RES/ar-fetch-$seg.out)"
    done < "$AR_LIST"

    for r in $(seq 1 "$RUNS"); do
        mkdir -p "$AR/pgward-$r" "$AR/pgbackrest-$r"; chown postgres:postgres "$AR/pgward-$r" "$AR/pgbackrest-$r"
        ar_pw "$r"
        setup_step "ar-stanza-create-pgward-$r" pgward "$r" "scratch stanza-create" "${AR_CMD[@]}" stanza-create
        ar_br "$r"
        setup_step "ar-stanza-create-pgbackrest-$r" pgbackrest "$r" "scratch stanza-create" "${AR_CMD[@]}" stanza-create
        mkdir -p "$AR/pgward-nomaps-$r"; chown postgres:postgres "$AR/pgward-nomaps-$r"
        ar_pw "nomaps-$r"
        setup_step "ar-stanza-create-pgward-nomaps-$r" pgward "$r" "scratch stanza-create" "${AR_CMD[@]}" stanza-create
        o=0
        for tool in $(order3_for "$r"); do
            o=$((o + 1))
            while read -r seg; do
                if [ "$tool" = pgward ]; then
                    ar_pw "$r"; run_timed "archive-push-$tool-$r-$seg" "${AR_CMD[@]}" --compress lz4 --wal-maps on archive-push "$AR/segs/$seg"
                elif [ "$tool" = pgward-nomaps ]; then
                    ar_pw "nomaps-$r"; run_timed "archive-push-$tool-$r-$seg" "${AR_CMD[@]}" --compress lz4 --wal-maps off archive-push "$AR/segs/$seg"
                else
                    ar_br "$r"; run_timed "archive-push-$tool-$r-$seg" "${AR_CMD[@]}" --compress-type=lz4 archive-push "$AR/segs/$seg"
                fi
                record archive-push "$tool" "$r" "$o" "$(stat -c %s "$AR/segs/$seg")" "$seg" "archive-push-$tool-$r-$seg"
            done < "$AR_LIST"
        done
    done
    for r in $(seq 1 "$RUNS"); do
        o=0
        for tool in $(order_for "$r"); do
            o=$((o + 1))
            while read -r seg; do
                rm -f "$AR/get/$seg"
                if [ "$tool" = pgward ]; then
                    ar_pw "$r"; run_timed "archive-get-$tool-$r-$seg" "${AR_CMD[@]}" archive-get --archive-get-queue-max 0 "$seg" "$AR/get/$seg"
                else
                    ar_br "$r"; run_timed "archive-get-$tool-$r-$seg" "${AR_CMD[@]}" archive-get "$seg" "$AR/get/$seg"
                fi
                sz=$(stat -c %s "$AR/get/$seg" 2>/dev/null || echo 0)
                if [ "$RC" -eq 0 ] && ! cmp -s "$AR/segs/$seg" "$AR/get/$seg"; then
                    RC=97; log "archive-get $tool $seg: not the segment that was pushed"
                fi
                record archive-get "$tool" "$r" "$o" "$sz" "$seg" "archive-get-$tool-$r-$seg"
                rm -f "$AR/get/$seg"
            done < "$AR_LIST"
        done
    done
    rm -rf "$AR"
}

# ================================================================ run
setup_cluster
want full && step_full
want incr && step_incr
if want restore; then step_restore; check_restored; fi
want archive && step_archive

# block maps of the run's real archive (every segment archive_command pushed)
WALSEG=$(psqlq -c "SELECT pg_size_bytes(current_setting('wal_segment_size'))" 2>/dev/null || echo 16777216)
read -r MAP_N MAP_BYTES < <(find "$PWREPO/$STANZA/archive" -name '*.map' -printf '%s\n' 2>/dev/null |
    awk '{n++; s+=$1} END{print n+0, s+0}')
SEG_N=$(find "$PWREPO/$STANZA/archive" -regextype posix-extended -regex '.*/[0-9A-F]{24}-[0-9a-f]{64}(\.[a-z0-9]+)?' 2>/dev/null | wc -l)

pg "${BR[@]}" info > "$RES/pgbackrest-info.txt" 2>&1 || true
pg "${BR[@]}" info --output=json > "$RES/pgbackrest-info.json" 2>&1 || true
pg "${PGW[@]}" info > "$RES/pgward-info.txt" 2>&1 || true
pg "${PGW[@]}" --output json info > "$RES/pgward-info.json" 2>&1 || true
cp "$BASE/log/postgres.log" "$RES/source-postgres.log" || true
stop_server "$PGDATA"

# ================================================================ report
# met KIND LIMIT PW OTHER -> yes / **no** / n/a
#   speedup S: OTHER >= S * PW      ratio R: PW/OTHER <= R      below X: PW < X
met() {
    awk -v k="$1" -v x="$2" -v a="$3" -v b="$4" 'BEGIN {
        if (k == "-") { print "-"; exit }
        if (a == "nan" || a == "" || ((k == "speedup" || k == "ratio") && (b == "nan" || b == "" || b + 0 == 0))) { print "n/a"; exit }
        if (k == "speedup") ok = (b + 0 >= x * a)
        else if (k == "ratio") ok = (a / b <= x + 1e-9)
        else ok = (a + 0 < x + 0)
        print ok ? "yes" : "**no**" }'
}
# row NAME STEP_A TOOL_A STEP_B TOOL_B TARGET_TEXT KIND LIMIT
row() {
    local a b
    a=$(col "$2" "$3" 6 | median); b=$(col "$4" "$5" 6 | median)
    echo "| $1 | $(sec "$a") | $(sec "$b") | $(ratio "$a" "$b") | $6 | $(met "$7" "$8" "$a" "$b") | $(mib "$(col "$2" "$3" 7 | maxof)") | $(mib "$(col "$4" "$5" 7 | maxof)") | $(nok "$2" "$3" "$(runs_of "$2" "$3")") · $(nok "$4" "$5" "$(runs_of "$4" "$5")") |"
}
sec() { awk -v s="$1" 'BEGIN{ if (s=="nan" || s=="") print "nan"; else printf "%.3f", s }'; }
runs_of() { awk -F'\t' -v s="$1" -v v="$2" '$1==s && $2==v {n++} END{print n+0}' "$TSV"; }
# peak RSS of every timed step of a tool (setup excluded): "kib step"
peak_of() { awk -F'\t' -v v="$1" '$1!="setup" && $2==v && $5=="ok" && $7>m {m=$7; s=$1} END{print m+0, (s=="" ? "-" : s)}' "$TSV"; }

report() {
    local jobs comp pw_peak pw_peak_step br_peak br_peak_step chain_note
    echo "## pgward vs pgBackRest (bench.sh)"
    echo
    echo "- host: $(host_line); 1-min load before the timed steps: $(awk -F'\t' '$1!="setup" && $14 != "-" {n++; s+=$14; if($14>m)m=$14} END{if(n) printf "mean %.2f, max %.2f", s/n, m; else print "n/a"}' "$TSV")"
    echo "- $(pgward_line); $(pgbackrest version); server and pg_basebackup $(postgres --version | awk '{print $3}')"
    echo "- pgbench scale $SCALE (N = $NACC accounts); source after load: du -sb pgdata = $SRC_TOTAL bytes, without pg_wal = $SRC_NOWAL bytes"
    echo "- $RUNS round(s) per step, tools alternating (odd rounds pgward first, even rounds pgBackRest first); \`sync\` before each timed command; WAL archiving idle before each backup; restores into an empty directory, DROP_CACHES=$DROP_CACHES$([ "$DROP_CACHES" = 1 ] && echo " (page cache dropped before each: both tools read their repository cold)")"
    if want incr; then
        echo "- chains: pgward $FULL_PW + $((CHAIN_LEN > 0 ? CHAIN_LEN - 1 : 0)) incrementals (restored: $INCR_PW); pgBackRest $FULL_BR + $(awk -F'\t' '($1=="incr-1pct" || $1=="incr-0") && $2=="pgbackrest" && $5=="ok"' "$TSV" | wc -l) incrementals (restored: $INCR_BR); 1% changes:"
        for n in "${UPD_NOTES[@]}"; do echo "  - $n"; done
    fi
    want restore && echo "- correctness: **$VERIFY**; started on port $RPORT, start to end of recovery ${RECOV} s; source $SRC_SUM; restored $RST_SUM; restore_command=\`$RST_RESTORECMD\`"
    want archive && echo "- archive-push/get: $AR_NOTE; one process per segment, fresh scratch repository per tool and round, lz4"
    read -r n1 m1 x1 r1 f1 < <(arch_stats "$RES/archive-push-pgbackrest.log")
    read -r n2 m2 x2 r2 f2 < <(arch_stats "$RES/archive-push-pgward.log")
    echo "- archive_command wrapper (every segment of the run, lz4, pgBackRest then pgward): pgBackRest median ${m1} s (max ${x1} s, max RSS $(mib "$r1") MiB, $n1 calls, $f1 failed); pgward median ${m2} s (max ${x2} s, max RSS $(mib "$r2") MiB, $n2 calls, $f2 failed)"
    echo
    echo "| row | pgward median s | pgBackRest (or pg_basebackup) median s | ratio | target | met? | pgward peak RSS MiB | other peak RSS MiB | runs ok pgward · other |"
    echo "|---|---|---|---|---|---|---|---|---|"
    if want full; then
        for c in "${FULL_CONFIGS[@]}"; do
            read -r comp jobs <<<"$c"
            row "full backup $comp --jobs $jobs" "full-$comp-j$jobs" pgward "full-$comp-j$jobs" pgbackrest "≥ 2× faster than pgBackRest" speedup 2
        done
        for jobs in 1 2; do
            row "full backup lz4 --jobs $jobs vs pg_basebackup -Ft server-lz4" "full-lz4-j$jobs" pgward full-pg_basebackup pg_basebackup "no slower than pg_basebackup" ratio 1
        done
    fi
    if want incr; then
        row "incr after a contiguous 1% change" incr-1pct pgward incr-1pct pgbackrest "-" - 0
        row "incr after no change" incr-0 pgward incr-0 pgbackrest "pgward < 0.5 s" below 0.5
    fi
    if want restore; then
        row "restore full" restore-full pgward restore-full pgbackrest "≥ 1.5× faster than pgBackRest" speedup 1.5
        if [ -n "$(col restore-chain pgward 6)$(col restore-chain pgbackrest 6)" ]; then
            chain_note="full + $((CHAIN_LEN > 0 ? CHAIN_LEN - 1 : 0)) incr"
            row "restore chain ($chain_note)" restore-chain pgward restore-chain pgbackrest "≥ 1.5× faster than pgBackRest" speedup 1.5
            row "pgward chain restore / pgward full restore (other = pgward full)" restore-chain pgward restore-full pgward "-" - 0
        fi
        if [ -n "$(col restore-same pgward 6)" ]; then
            row "pgward chain restore / pgward restore of a full of the same data (other = that full)" restore-chain pgward restore-same pgward "≤ 1.10" ratio 1.10
        fi
    fi
    if want archive; then
        row "archive-push per segment" archive-push pgward archive-push pgbackrest "at least as fast as pgBackRest" ratio 1
        row "archive-get per segment (pgward without prefetch)" archive-get pgward archive-get pgbackrest "at least as fast as pgBackRest" ratio 1
    fi
    read -r pw_peak pw_peak_step < <(peak_of pgward)
    read -r br_peak br_peak_step < <(peak_of pgbackrest)
    echo "| peak memory (MiB, max RSS over every timed step; pgward: $pw_peak_step, pgBackRest: $br_peak_step) | $(mib "$pw_peak") | $(mib "$br_peak") | $(ratio "$pw_peak" "$br_peak") | pgward < 64 MiB | $(met below 65536 "$pw_peak" "") | $(mib "$pw_peak") | $(mib "$br_peak") | |"
    echo
    echo "ratio = pgward / other (median wall; below 1 pgward is faster). \"≥ N× faster\" is met when other ≥ N × pgward."
    maps_report
    echo
    local fails
    fails=$(awk -F'\t' '$5!="ok" {print $13}' "$TSV")
    if [ -n "$fails" ]; then
        echo "### Failures ($(wc -w <<<"$fails"); the first 5)"
        echo
        for id in $(head -5 <<<"$fails"); do
            echo "- $id ($(awk -F'\t' -v id="$id" '$13==id {print $5 "; " $12}' "$TSV")), \`$RES/$id.out\`:"
            echo
            echo '```'
            tail -15 "$RES/$id.out" 2>/dev/null || true
            echo '```'
        done
        echo
    fi
    echo "Per-run figures: \`$TSV\` (table: \`$RES/per-run.md\`); script wall time $((SECONDS - T_START)) s"
}

# ---------------------------------------------------------------- block maps (issue 12)
fsi_col() { awk -F'\t' -v s="$1" -v v="$2" '$1==s && $2==v && $5=="ok" && $15 != "" {print $15}' "$TSV"; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a=="nan" || a=="" || b=="" || b+0==0) print "n/a"; else printf "%.2f %%", 100*a/b }'; }
# pass KIND LIMIT VALUE [OTHER] -> PASS / **MISS** / n/a   (ratio: VALUE/OTHER <= LIMIT;
# fraction: VALUE/OTHER <= LIMIT; below: VALUE < LIMIT)
pass() {
    awk -v k="$1" -v x="$2" -v a="$3" -v b="${4:-}" 'BEGIN {
        if (a == "nan" || a == "" || (k != "below" && (b == "nan" || b == "" || b + 0 == 0))) { print "n/a"; exit }
        ok = (k == "below") ? (a + 0 < x + 0) : (a / b <= x + 1e-9)
        print ok ? "PASS" : "**MISS**" }'
}
maps_report() {
    local on off pw br pwr brr cold wal cache
    echo
    echo "### Block maps (issue 12)"
    echo
    cache="page cache dropped before each (DROP_CACHES=1)"
    [ "$DROP_CACHES" = 1 ] || cache="**page cache NOT dropped (DROP_CACHES=$DROP_CACHES): the bytes-read rows measure a warm cache, not what the backups need**"
    echo "- incrementals: $cache; bytes read = file system inputs × 512 of the backup command and its children; database size = du -sb pgdata without pg_wal after the load ($SRC_NOWAL bytes)"
    echo
    echo "| row | pgward | other | target | result |"
    echo "|---|---|---|---|---|"
    if want archive; then
        on=$(col archive-push pgward 6 | median); off=$(col archive-push pgward-nomaps 6 | median)
        echo "| archive-push per segment, with maps / without (other) | $(sec "$on") s | $(sec "$off") s ($(ratio "$on" "$off")) | ≤ 1.10 | $(pass ratio 1.10 "$on" "$off") |"
    fi
    wal=$((SEG_N * WALSEG))
    if [ "${MAP_N:-0}" -gt 0 ]; then
        echo "| map bytes per GiB of WAL ($MAP_N maps of $SEG_N segments in the run's archive) | $(awk -v m="$MAP_BYTES" -v n="$MAP_N" -v s="$WALSEG" 'BEGIN{printf "%.2f MiB (%.3f %%)", m/(n*s)*1024, 100*m/(n*s)}') | - | ≤ 2 % | $(pass ratio 0.02 "$MAP_BYTES" "$((MAP_N * WALSEG))") |"
    else
        echo "| map bytes per GiB of WAL | no maps in the run's archive ($SEG_N segments, $(mb "$wal") MB) | - | ≤ 2 % | n/a |"
    fi
    if want incr; then
        pw=$(fsi_col incr-1pct pgward | median); br=$(fsi_col incr-1pct pgbackrest | median)
        echo "| incr after a contiguous 1% change: bytes read from disk / database size | $(mb "$pw") MB ($(pct "$pw" "$SRC_NOWAL")) | $(mb "$br") MB ($(pct "$br" "$SRC_NOWAL")) | ≤ 5 % | $(pass ratio 0.05 "$pw" "$SRC_NOWAL") |"
        pwr=$(col incr-1pct pgward 6 | median); brr=$(col incr-1pct pgbackrest 6 | median)
        echo "| incr after a contiguous 1% change: wall, pgward / pgBackRest | $(sec "$pwr") s | $(sec "$brr") s ($(ratio "$pwr" "$brr")) | ≤ 0.3 | $(pass ratio 0.3 "$pwr" "$brr") |"
        cold=$(fsi_col incr-0-cold pgward | median)
        echo "| incr after no change: bytes read from disk | $(mb "$cold") MB | - | < 1 MB | $(pass below 1000000 "$cold") |"
    fi
    echo
    echo "MB = 10^6 bytes. other: pgBackRest on the same change, or pgward without maps."
}

per_run() {
    echo "| step | tool | run | order | status | wall s | max RSS MiB | user s | sys s | srv CPU s | bytes | load | note |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    awk -F'\t' '{printf "| %s | %s | %s | %s | %s | %.3f | %.1f | %s | %s | %s | %s | %s | %s |\n", $1,$2,$3,$4,$5,$6,$7/1024,$8,$9,$10,$11,$14,$12}' "$TSV"
}
per_run > "$RES/per-run.md"
report | tee "$RES/results.md"
