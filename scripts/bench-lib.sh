# shellcheck shell=bash
# bench-lib.sh -- setup, measurement and report helpers shared by the benchmark scripts
# (bench.sh, bench-extra.sh).  Sourced, never run.
#
# The sourcing script sets BASE, PGVER, PORT, RPORT and RUNS first (its own defaults),
# then sources this file, which derives the common paths below and puts PostgreSQL
# $PGVER's binaries first on PATH.  Conventions of every benchmark script:
#   * runs as root; PostgreSQL, psql, pgbench and the tools run as the postgres OS user
#     (`pg CMD...`), with a copy of the pgward binary under $BASE/bin that user can execute
#     (and that a concurrent `cargo build` cannot change under a run);
#   * one scratch cluster under $BASE (data checksums, unix socket in $BASE only,
#     shared_buffers 1GB, max_wal_size 4GB) whose archive_command the script chooses;
#   * every timed command runs under GNU time (`run_timed`), after `sync`; one line per
#     timed command in $TSV (`record`), columns:
#       1 step  2 tool/variant  3 run  4 order  5 status  6 wall s  7 max RSS KiB  8 user s
#       9 sys s  10 srv CPU s  11 bytes  12 note  13 id (stem of $RES/ID.{out,time,cmd})
#       14 host 1-min load average just before the step  15 bytes the command read from
#       disk (GNU time's file system inputs x 512: page-cache misses of it and its children)
# shellcheck disable=SC2034   # variables used by the sourcing scripts

BENCH_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH_REPO=$(cd "$BENCH_LIB_DIR/.." && pwd)
BENCH_ORIG_PATH=$PATH
PGBIN=/usr/lib/postgresql/$PGVER/bin
PGDATA=$BASE/pgdata
BRREPO=$BASE/pgbackrest-repo
PWREPO=$BASE/pgward-repo
CONF=$BASE/pgbackrest.conf
RES=$BASE/results
TSV=$RES/results.tsv
export PATH=$PGBIN:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
T_START=$SECONDS
CLK=$(getconf CLK_TCK)

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
want() { [[ " $STEPS " == *" $1 "* ]]; }   # is step $1 among $STEPS?

# ---------------------------------------------------------------- preflight, packages
bench_preflight() {
    [ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
    case "$BASE" in /|/tmp|/tmp/|"") echo "refusing BASE=$BASE" >&2; exit 1;; esac
    [ -x "$PGBIN/initdb" ] || { echo "PostgreSQL $PGVER not found in $PGBIN" >&2; exit 1; }
    [ "$RUNS" -ge 1 ] 2>/dev/null || { echo "RUNS must be >= 1" >&2; exit 1; }
    id postgres >/dev/null 2>&1 || { echo "no postgres OS user (install postgresql-$PGVER)" >&2; exit 1; }
}

# bench_install_packages [EXTRA...]: pgBackRest, GNU time, jq, bc (and the named extra
# commands, each a Debian package of the same name) from Debian, when missing
# shellcheck disable=SC2120   # the extras are optional
bench_install_packages() {
    local pkgs=() p
    command -v pgbackrest >/dev/null || pkgs+=(pgbackrest)
    [ -x /usr/bin/time ] || pkgs+=(time)
    command -v jq >/dev/null || pkgs+=(jq)
    command -v bc >/dev/null || pkgs+=(bc)
    for p in "$@"; do command -v "$p" >/dev/null || pkgs+=("$p"); done
    [ ${#pkgs[@]} -gt 0 ] || return 0
    log "installing: ${pkgs[*]}"
    # pgbackrest pulls in postgresql-common: never let it create/start a default cluster
    if ! grep -qs '^ *create_main_cluster *= *false' /etc/postgresql-common/createcluster.conf \
            /etc/postgresql-common/createcluster.d/*.conf; then
        mkdir -p /etc/postgresql-common/createcluster.d
        echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/pgward-bench.conf
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y "${pkgs[@]}" >/dev/null ||
        { apt-get update >/dev/null && apt-get install -y "${pkgs[@]}" >/dev/null; }
}

# bench_resolve_pgward: PGWARD_SRC = $PGWARD if set, else the repository's release build
# (`cargo build --release` when it is missing); PGWARD = $BASE/bin/pgward, the copy that
# bench_install_pgward makes once $BASE exists
bench_resolve_pgward() {
    PGWARD_SRC=${PGWARD:-$BENCH_REPO/target/release/pgward}
    if [ -z "${PGWARD:-}" ] && [ ! -x "$PGWARD_SRC" ]; then
        log "building pgward: cargo build --release in $BENCH_REPO"
        (cd "$BENCH_REPO" && PATH=$BENCH_ORIG_PATH cargo build --release) >&2 ||
            die "cargo build --release failed"
    fi
    [ -x "$PGWARD_SRC" ] || die "pgward binary not found: $PGWARD_SRC"
    PGWARD=$BASE/bin/pgward
}
bench_install_pgward() {
    install -m 755 -o postgres -g postgres "$PGWARD_SRC" "$PGWARD"
    log "pgward: $PGWARD_SRC copied to $PGWARD ($("$PGWARD" --version))"
}

# ---------------------------------------------------------------- running as postgres
pg() { runuser -u postgres -- env PATH="$PATH" "$@"; }
psqlq() { pg psql -X -v ON_ERROR_STOP=1 -h "$BASE" -p "$PORT" -d postgres -Atq "$@"; }
rq() { pg psql -X -v ON_ERROR_STOP=1 -h "$BASE" -p "$RPORT" -d postgres -Atq "$@"; }
stop_server() {   # DIR
    if [ -f "$1/postmaster.pid" ]; then
        pg pg_ctl -D "$1" -m fast -w -t 120 stop >/dev/null 2>&1 ||
            pg pg_ctl -D "$1" -m immediate -w stop >/dev/null 2>&1 || true
    fi
}
new_dir() { stop_server "$1"; rm -rf "$1"; mkdir -m 700 "$1"; chown postgres:postgres "$1"; }

# bench_fresh_base [SUBDIR...]: wipe and recreate $BASE for postgres (the caller stops
# its servers first)
bench_fresh_base() {
    local d
    rm -rf "$BASE"
    mkdir -p "$BASE"/{log,lock,spool,results,bin} "$BRREPO" "$PWREPO"
    for d in "$@"; do mkdir -p "$BASE/$d"; done
    chown -R postgres:postgres "$BASE"
    chmod 700 "$BASE"
    cd "$BASE" || exit 1
    : > "$TSV"
}

# ---------------------------------------------------------------- cluster
# bench_initdb ARCHIVE_COMMAND SCRIPT_NAME: initdb -k and the benchmark settings
bench_initdb() {
    log "initdb -k at $PGDATA"
    pg initdb -k -D "$PGDATA" -U postgres --auth=trust > "$RES/initdb.log"
    cat >> "$PGDATA/postgresql.conf" <<EOF

# ---- pgward $2 (bench-lib.sh settings)
port = $PORT
listen_addresses = ''
unix_socket_directories = '$BASE'
wal_level = replica
archive_mode = on
archive_command = '$1'
shared_buffers = 1GB
max_wal_size = 4GB
checkpoint_timeout = 30min
max_wal_senders = 10
log_checkpoints = on
EOF
}
# bench_pgbackrest_conf STANZA: $CONF with the repository $BRREPO (lz4 by default)
bench_pgbackrest_conf() {
    cat > "$CONF" <<EOF
[global]
repo1-path=$BRREPO
repo1-retention-full=9999
log-path=$BASE/log
lock-path=$BASE/lock
spool-path=$BASE/spool
start-fast=y
compress-type=lz4

[$1]
pg1-path=$PGDATA
pg1-port=$PORT
pg1-socket-path=$BASE
EOF
    chown postgres:postgres "$CONF"
}
bench_start_source() {
    pg pg_ctl -D "$PGDATA" -l "$BASE/log/postgres.log" -w start >/dev/null
    log "source cluster up on port $PORT (socket in $BASE)"
}

# ---------------------------------------------------------------- measurement
srv_cpu() {   # CPU ticks of postmaster + children (live ones' own + cumulative children)
    local pm
    [ -f "$PGDATA/postmaster.pid" ] || { echo 0; return; }
    pm=$(head -1 "$PGDATA/postmaster.pid")
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v pm="$pm" '
        { pid = $1; s = $0; sub(/^.*\) /, "", s); n = split(s, a, " ")
          # a[1]=state a[2]=ppid ... a[12]=utime a[13]=stime a[14]=cutime a[15]=cstime
          if (pid == pm || a[2] == pm) tot += a[12] + a[13] + a[14] + a[15] }
        END { printf "%d\n", tot }'
}

# parse_time FILE -> "wall rss_kb user sys vcs ivcs fsout fsin"
parse_time() {
    awk -F': ' '/User time/{u=$2} /System time/{s=$2} /Elapsed \(wall/{e=$2}
        /Maximum resident/{m=$2} /^\tVoluntary context/{v=$2} /Involuntary context/{iv=$2}
        /File system outputs/{fo=$2} /File system inputs/{fi=$2}
        END{n=split(e,a,":"); w=0; for(i=1;i<=n;i++) w=w*60+a[i];
            printf "%.2f %d %.2f %.2f %d %d %d %d\n", w, m, u, s, v, iv, fo, fi}' "$1"
}

# run_timed ID CMD... : sync, run CMD as postgres under time -v (output in $RES/ID.*);
# sets WALL RSS USR SYS SRV VCS IVCS FSO FSI RC LOAD (FSO, FSI: file system outputs and
# inputs, 512-byte blocks).  GNU time's wall has a resolution of
# 10 ms; with HIRES_WALL=1 a bash between time and CMD takes the wall to the microsecond
# from $EPOCHREALTIME just before and after CMD (max RSS is still CMD's: bash is smaller).
run_timed() {
    local id=$1; shift
    local s0 s1 hires=()
    RC=0
    sync
    LOAD=$(cut -d' ' -f1 /proc/loadavg)   # 1-min load average just before (other work on the host)
    rm -f "$RES/$id.wall"
    # shellcheck disable=SC2016   # expanded by that bash
    [ "${HIRES_WALL:-0}" = 1 ] &&
        hires=(bash -c 's=$EPOCHREALTIME; "$@"; rc=$?; echo "$s $EPOCHREALTIME" > "$0"; exit $rc' "$RES/$id.wall")
    s0=$(srv_cpu)
    pg /usr/bin/time -v -o "$RES/$id.time" "${hires[@]}" "$@" >"$RES/$id.out" 2>&1 || RC=$?
    s1=$(srv_cpu)
    SRV=$(echo "scale=2; ($s1 - $s0) / $CLK" | bc | awk '{printf "%.2f", $1}')
    if [ -s "$RES/$id.time" ] && grep -q 'Elapsed' "$RES/$id.time"; then
        read -r WALL RSS USR SYS VCS IVCS FSO FSI < <(parse_time "$RES/$id.time")
    else
        WALL=0 RSS=0 USR=0 SYS=0 VCS=0 IVCS=0 FSO=0 FSI=0
    fi
    [ ! -s "$RES/$id.wall" ] || WALL=$(awk '{printf "%.4f", $2 - $1}' "$RES/$id.wall")
    printf '%q ' "$@" > "$RES/$id.cmd"; echo >> "$RES/$id.cmd"
    if [ "$RC" -ne 0 ]; then
        log "FAILED (exit $RC): $id: $*"
        sed 's/^/    | /' "$RES/$id.out" | tail -30 >&2
    fi
    return 0
}

# setup_step ID TOOL RUN NOTE CMD...: a timed and recorded setup command that must succeed
setup_step() {
    local id=$1 tool=$2 run=$3 note=$4
    shift 4
    run_timed "$id" "$@"
    record setup "$tool" "$run" 1 0 "$note" "$id"
    [ "$RC" -eq 0 ] || die "$tool: $note failed (see $RES/$id.out)"
}

# record STEP TOOL RUN ORDER BYTES NOTE ID   (uses RC WALL RSS USR SYS SRV LOAD FSI)
record() {
    local status=ok
    [ "$RC" -eq 0 ] || status="FAILED($RC)"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$1" "$2" "$3" "$4" "$status" "$WALL" "$RSS" "$USR" "$SYS" "$SRV" "$5" "$6" "$7" "${LOAD:--}" \
        "$(( ${FSI:-0} * 512 ))" >> "$TSV"
    log "$1 $2 run $3 (#$4): $status wall=${WALL}s rss=$((RSS / 1024))MiB user=${USR} sys=${SYS} srv=${SRV} bytes=$5 $6"
}

# phase breakdowns from the tools' own log timestamps (wall minus the logged span =
# process start-up and exit)
pw_phases() {   # OUTFILE
    awk 'function ts(s,  a) { split(substr(s, 12), a, ":"); return a[1] * 3600 + a[2] * 60 + a[3] }
        /INFO starting backup/ { t0 = ts($1) }   /INFO backup started/ { t1 = ts($1) }
        /INFO backup stopped/  { t2 = ts($1) }   /INFO backup complete/ { t3 = ts($1) }
        END { if (t3) printf "phases s: start+ckpt %.2f, copy+stop %.2f, WAL wait+finish %.2f", t1 - t0, t2 - t1, t3 - t2 }' "$1"
}
br_phases() {   # OUTFILE
    awk 'function ts(t,  a) { split(t, a, ":"); return a[1] * 3600 + a[2] * 60 + a[3] }
        /backup command begin/ { t0 = ts($2) }                 /execute (non-)?exclusive backup start/ { t1 = ts($2) }
        /backup start archive =/ { t2 = ts($2) }               /execute (non-)?exclusive backup stop/ { t3 = ts($2) }
        /new backup label =/ { t4 = ts($2) }                   /backup command end/ { t5 = ts($2) }
        END { if (t5) printf "phases s: prep %.2f, start+ckpt %.2f, copy %.2f, stop+WAL wait %.2f, finish %.2f",
                t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4 }' "$1"
}

datasize() { echo $(( $(du -sb "$PGDATA" | cut -f1) - $(du -sb "$PGDATA/pg_wal" | cut -f1) )); }
ready_count() { find "$PGDATA/pg_wal/archive_status" -name '*.ready' 2>/dev/null | wc -l; }
# WAL files queued in an asynchronous archive-push spool ($SPOOL_QUEUE, when set)
spool_count() {
    [ -n "${SPOOL_QUEUE:-}" ] || { echo 0; return; }
    { ls -1 "$SPOOL_QUEUE" 2>/dev/null || true; } | grep -Evc '^\.|\.pgward-tmp$' || true
}
wait_archived() {   # until no segment waits for archive_command nor in the spool (max 20 min)
    local t0=$SECONDS f0 f1
    f0=$(psqlq -c "SELECT failed_count FROM pg_stat_archiver" 2>/dev/null || echo 0)
    while [ "$(ready_count)" -gt 0 ] || [ "$(spool_count)" -gt 0 ]; do
        if [ $((SECONDS - t0)) -gt 1200 ]; then
            f1=$(psqlq -c "SELECT failed_count FROM pg_stat_archiver" 2>/dev/null || echo 0)
            tail -30 "$BASE/log/postgres.log" >&2
            die "WAL archiving did not catch up within 20 min (archive failures meanwhile: $((f1 - f0)))"
        fi
        sleep 0.2
    done
    ARCH_WAIT=$((SECONDS - t0))
}

# drop_caches: write back dirty pages, then drop the page cache (when DROP_CACHES=1), so
# that the next command reads its input cold and pays for none of the previous one's writes
drop_caches() {
    sync
    [ "${DROP_CACHES:-0}" = 1 ] || return 0
    if ! { echo 3 > /proc/sys/vm/drop_caches; } 2>/dev/null; then
        log "cannot write /proc/sys/vm/drop_caches: the page cache stays warm from here on"
        DROP_CACHES=unavailable
    fi
}

# ---------------------------------------------------------------- restored cluster
# pgbench_checksum PORT -> per pgbench table "name=rows/sum of hashtext(row)" (order-free)
pgbench_checksum() {
    pg psql -X -v ON_ERROR_STOP=1 -h "$BASE" -p "$1" -d postgres -Atq -c "
        SELECT string_agg(format('%s=%s/%s', t, n, s), ' ' ORDER BY t) FROM (
            SELECT 'accounts' t, count(*) n, sum(hashtext(x::text)::bigint) s FROM pgbench_accounts x
            UNION ALL SELECT 'branches', count(*), sum(hashtext(x::text)::bigint) FROM pgbench_branches x
            UNION ALL SELECT 'tellers', count(*), sum(hashtext(x::text)::bigint) FROM pgbench_tellers x
            UNION ALL SELECT 'history', count(*), sum(hashtext(x::text)::bigint) FROM pgbench_history x) c"
}
# start_restored DIR NAME: start a restored cluster on $RPORT and wait for the end of
# recovery (max 10 min); sets RECOV (start to end of recovery, s) and RST_INREC; log in
# $BASE/log/restored-NAME.log; returns 1 when it does not start
start_restored() {
    local dir=$1 name=$2 t0
    RECOV=-; RST_INREC=-
    t0=$(date +%s.%N)
    if ! pg pg_ctl -D "$dir" -l "$BASE/log/restored-$name.log" -t 600 -w \
            -o "-p $RPORT -c listen_addresses=''" start > "$RES/restored-$name-start.out" 2>&1; then
        cat "$RES/restored-$name-start.out" >&2; tail -30 "$BASE/log/restored-$name.log" >&2 || true
        return 1
    fi
    for _ in $(seq 1 3000); do
        [ "$(rq -c 'SELECT pg_is_in_recovery()' 2>/dev/null || echo t)" = f ] && break
        sleep 0.2
    done
    RECOV=$(printf '%.2f' "$(echo "$(date +%s.%N) - $t0" | bc)")
    RST_INREC=$(rq -c 'SELECT pg_is_in_recovery()' || echo '?')
}

# ---------------------------------------------------------------- report helpers
col() {   # STEP TOOL COLUMN -> values of the successful runs
    awk -F'\t' -v s="$1" -v v="$2" -v c="$3" '$1==s && $2==v && $5=="ok" {print $c}' "$TSV"
}
cpu_col() { awk -F'\t' -v s="$1" -v v="$2" '$1==s && $2==v && $5=="ok" {printf "%.2f\n", $8 + $9}' "$TSV"; }
median() { sort -g | awk '{a[NR]=$1} END{if(NR==0){print "nan"; exit}
    if(NR%2) print a[(NR+1)/2]; else printf "%.10g\n", (a[NR/2]+a[NR/2+1])/2}'; }
maxof() { sort -g | tail -1 | awk '{print} END{if(NR==0) print "nan"}'; }
rng() { sort -g | awk 'NR==1{lo=$1} {hi=$1} END{if(NR) printf "%s–%s", lo, hi; else print "-"}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a=="nan" || b=="nan" || a=="" || b=="" || b+0==0) print "n/a"; else printf "%.2f\n", a/b }'; }
mib() { awk -v k="$1" 'BEGIN{ if (k=="nan" || k=="") print "nan"; else printf "%.1f", k/1024 }'; }
mb() { awk -v b="$1" 'BEGIN{ if (b=="nan" || b=="" ) print "nan"; else printf "%.1f", b/1e6 }'; }
mbps() { awk -v b="$1" -v w="$2" 'BEGIN{ if (w=="nan" || w=="" || w+0==0) print "n/a"; else printf "%.0f", b/1e6/w }'; }
nok() { echo "$(col "$1" "$2" 6 | wc -l)/$3"; }
arch_stats() {   # LOGFILE (lines "segment wall rss_kb user sys exit") -> "n median_wall max_wall max_rss_kb failures"
    awk '$6 ~ /^[0-9]+$/ {print}' "$1" | sort -k2,2g | awk '
        {w[NR]=$2; if($3>m)m=$3; if($6!=0)f++}
        END{ if(NR==0){print "0 nan nan 0 0"; exit}
             med = (NR%2) ? w[(NR+1)/2] : (w[NR/2]+w[NR/2+1])/2;
             printf "%d %.3f %.2f %d %d\n", NR, med, w[NR], m, f+0 }'
}
host_line() {
    echo "$(nproc) cores, $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM, $(. /etc/os-release; echo "$PRETTY_NAME"), $(date -u +%FT%TZ)"
}
pgward_line() {
    echo "pgward $("$PGWARD" --version 2>/dev/null | awk '{print $NF}') ($PGWARD_SRC, sha256 $(sha256sum "$PGWARD" | cut -c1-12))"
}
