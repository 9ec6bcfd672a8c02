#!/usr/bin/env bash
# bench-full.sh -- full backup and restore: pgward against pgBackRest on this host.
#
# Self-contained: installs pgBackRest and GNU time from Debian if missing, creates a
# scratch PostgreSQL cluster (data checksums) under $BASE whose archive_command pushes
# every WAL segment into BOTH tools' repositories, loads pgbench data, then times, in
# alternating order, RUNS full backups (lz4, 2 workers) and RUNS restores of the newest
# full by each tool.  Once, the pgward-restored cluster is started (it recovers from
# pgward's archive) and compared with the source.  Prints a markdown table with per-run
# figures, medians and pgward/pgBackRest ratios, stops every server it started and
# removes the restore directories; raw results stay in $BASE/results.
#
# Usage (as root):   bash scripts/bench-full.sh        (about 10 min at SCALE=100, RUNS=3)
#
# Environment knobs:
#   SCALE    pgbench scale (default 100, ~1.6 GB of data)
#   RUNS     repetitions of each timed step per tool (default 3)
#   BASE     work directory, wiped at start (default /tmp/pgward-bench)
#   PGWARD   pgward binary (default /tmp/pgward-bench-bin/pgward)
#   PORT     port of the source cluster (default 5497), RPORT of the restored one (5496);
#            both listen on a unix socket in $BASE only
#   PGVER    PostgreSQL major version (default 15)
#
# What is measured (every command runs as the postgres OS user under /usr/bin/time -v,
# after `sync`, with a warm page cache, once WAL archiving has caught up):
#   * wall, max RSS, user, sys from GNU time.  user+sys include waited-for children
#     (pgBackRest's local worker processes); max RSS is the largest single process
#     (pgward: one multi-threaded process; pgBackRest: main or one worker, not a sum).
#   * srv CPU: CPU seconds used meanwhile by the cluster (postmaster and children,
#     including exited backends and archive_command children, i.e. both tools'
#     archive-push of the segments the backup produced), from /proc/*/stat.
#   * backup bytes: what the backup added to its repository (pgBackRest: du -sb of
#     backup/<stanza>/<label>; pgward: du -sb of bundles/<label>-*.bundle plus
#     backups/<label>.manifest); WAL archived meanwhile is not counted for either.
#   * restore bytes: du -sb of the restored directory.
set -euo pipefail

SCALE=${SCALE:-100}
RUNS=${RUNS:-3}
BASE=${BASE:-/tmp/pgward-bench}
PGWARD=${PGWARD:-/tmp/pgward-bench-bin/pgward}
PORT=${PORT:-5497}
RPORT=${RPORT:-5496}
PGVER=${PGVER:-15}
STANZA=bench

PGBIN=/usr/lib/postgresql/$PGVER/bin
PGDATA=$BASE/pgdata
BRREPO=$BASE/pgbackrest-repo
PWREPO=$BASE/pgward-repo
CONF=$BASE/pgbackrest.conf
RST_PW=$BASE/restore-pgward
RST_BR=$BASE/restore-pgbackrest
RES=$BASE/results
TSV=$RES/results.tsv
WRAPPER=$BASE/pgbackrest-and-pgward-archive-push.sh
export PATH=$PGBIN:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
T_START=$SECONDS

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
case "$BASE" in /|/tmp|/tmp/|"") echo "refusing BASE=$BASE" >&2; exit 1;; esac
[ -x "$PGWARD" ] || { echo "pgward binary not found: $PGWARD" >&2; exit 1; }
[ -x "$PGBIN/initdb" ] || { echo "PostgreSQL $PGVER not found in $PGBIN" >&2; exit 1; }

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- packages
pkgs=()
command -v pgbackrest >/dev/null || pkgs+=(pgbackrest)
[ -x /usr/bin/time ] || pkgs+=(time)
command -v jq >/dev/null || pkgs+=(jq)
command -v bc >/dev/null || pkgs+=(bc)
if [ ${#pkgs[@]} -gt 0 ]; then
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
fi

pg() { runuser -u postgres -- env PATH="$PATH" "$@"; }
psqlq() { pg psql -X -v ON_ERROR_STOP=1 -h "$BASE" -p "$PORT" -d postgres -Atq "$@"; }
# command prefixes (argument vectors) for the two tools, run as postgres
PGW=(env PGHOST="$BASE" PGPORT="$PORT" PGUSER=postgres PGDATABASE=postgres
     "$PGWARD" --repo "$PWREPO" --stanza "$STANZA")
BR=(pgbackrest --config="$CONF" --stanza="$STANZA" --log-level-console=info)

# ---------------------------------------------------------------- clean slate
stop_server() {   # DIR
    if [ -f "$1/postmaster.pid" ]; then
        pg pg_ctl -D "$1" -m fast -w -t 120 stop >/dev/null 2>&1 ||
            pg pg_ctl -D "$1" -m immediate -w stop >/dev/null 2>&1 || true
    fi
}
for d in "$RST_PW" "$RST_BR" "$PGDATA"; do stop_server "$d"; done
rm -rf "$BASE"
mkdir -p "$BASE"/{log,lock,spool,results} "$BRREPO" "$PWREPO"
chown -R postgres:postgres "$BASE"
chmod 700 "$BASE"
cd "$BASE"
: > "$TSV"

cleanup() {
    local rc=$?
    for d in "$RST_PW" "$RST_BR" "$PGDATA"; do stop_server "$d"; done
    rm -rf "$RST_PW" "$RST_BR"
    log "servers stopped, restore directories removed; raw results in $RES (exit $rc, script ran $((SECONDS - T_START)) s)"
}
trap cleanup EXIT

# ---------------------------------------------------------------- measurement helpers
CLK=$(getconf CLK_TCK)
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

# parse_time FILE -> "wall rss_kb user sys vcs ivcs fsout"
parse_time() {
    awk -F': ' '/User time/{u=$2} /System time/{s=$2} /Elapsed \(wall/{e=$2}
        /Maximum resident/{m=$2} /^\tVoluntary context/{v=$2} /Involuntary context/{iv=$2}
        /File system outputs/{fo=$2}
        END{n=split(e,a,":"); w=0; for(i=1;i<=n;i++) w=w*60+a[i];
            printf "%.2f %d %.2f %.2f %d %d %d\n", w, m, u, s, v, iv, fo}' "$1"
}

# run_timed ID CMD... : sync, run CMD as postgres under time -v; sets WALL RSS USR SYS SRV VCS IVCS FSO RC
run_timed() {
    local id=$1; shift
    local s0 s1
    RC=0
    sync
    s0=$(srv_cpu)
    pg /usr/bin/time -v -o "$RES/$id.time" "$@" >"$RES/$id.out" 2>&1 || RC=$?
    s1=$(srv_cpu)
    SRV=$(echo "scale=2; ($s1 - $s0) / $CLK" | bc | awk '{printf "%.2f", $1}')
    if [ -s "$RES/$id.time" ] && grep -q 'Elapsed' "$RES/$id.time"; then
        read -r WALL RSS USR SYS VCS IVCS FSO < <(parse_time "$RES/$id.time")
    else
        WALL=0 RSS=0 USR=0 SYS=0 VCS=0 IVCS=0 FSO=0
    fi
    printf '%q ' "$@" > "$RES/$id.cmd"; echo >> "$RES/$id.cmd"
    if [ "$RC" -ne 0 ]; then
        log "FAILED (exit $RC): $id: $*"
        sed 's/^/    | /' "$RES/$id.out" | tail -30 >&2
    fi
    return 0
}

# record OP TOOL RUN ORDER BYTES NOTE   (uses RC WALL RSS USR SYS SRV VCS IVCS FSO)
record() {
    local status=ok
    [ "$RC" -eq 0 ] || status="FAILED($RC)"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$1" "$2" "$3" "$4" "$status" "$WALL" "$RSS" "$USR" "$SYS" "$SRV" "$5" "$VCS" "$IVCS" "$FSO" "$6" >> "$TSV"
    log "$1 $2 run $3 (#$4): $status wall=${WALL}s rss=$((RSS / 1024))MiB user=${USR} sys=${SYS} srv=${SRV} bytes=$5 $6"
}

# phase breakdowns from the tools' own log timestamps (wall minus the logged span = process
# start-up and exit)
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

wait_archived() {   # until no segment is waiting for archive_command (max 20 min)
    local t0=$SECONDS f0 f1
    f0=$(psqlq -c "SELECT failed_count FROM pg_stat_archiver")
    while [ -n "$(find "$PGDATA/pg_wal/archive_status" -name '*.ready' -print -quit)" ]; do
        if [ $((SECONDS - t0)) -gt 1200 ]; then
            f1=$(psqlq -c "SELECT failed_count FROM pg_stat_archiver")
            tail -30 "$BASE/log/postgres.log" >&2
            die "WAL archiving did not catch up within 20 min (archive failures meanwhile: $((f1 - f0)))"
        fi
        sleep 0.2
    done
    ARCH_WAIT=$((SECONDS - t0))
}

br_last_label() { pg "${BR[@]}" info --output=json 2>/dev/null | jq -r '.[0].backup[-1].label // empty'; }
pw_last_label() {
    pg "${PGW[@]}" --output json info 2>/dev/null |
        jq -r '[.. | objects | select(has("label")) | .label | strings
                | select(test("^[0-9]{8}-[0-9]{6}[FDI]$"))] | sort | last // empty'
}
pw_bytes() {   # LABEL
    local d=$PWREPO/$STANZA
    du -cb "$d/backups/$1.manifest" "$d"/bundles/"$1"-*.bundle 2>/dev/null | tail -1 | cut -f1
}

# ---------------------------------------------------------------- cluster
log "initdb -k at $PGDATA"
pg initdb -k -D "$PGDATA" -U postgres --auth=trust > "$RES/initdb.log"

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

cat >> "$PGDATA/postgresql.conf" <<EOF

# ---- pgward bench-full.sh
port = $PORT
listen_addresses = ''
unix_socket_directories = '$BASE'
wal_level = replica
archive_mode = on
archive_command = '$WRAPPER %p'
shared_buffers = 1GB
max_wal_size = 4GB
checkpoint_timeout = 30min
max_wal_senders = 10
log_checkpoints = on
EOF

cat > "$CONF" <<EOF
[global]
repo1-path=$BRREPO
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
chown postgres:postgres "$CONF"

pg pg_ctl -D "$PGDATA" -l "$BASE/log/postgres.log" -w start >/dev/null
log "source cluster up on port $PORT (socket in $BASE)"

WALL=0 RSS=0 USR=0 SYS=0 SRV=0 VCS=0 IVCS=0 FSO=0
run_timed stanza-create-pgbackrest "${BR[@]}" stanza-create
record setup pgbackrest 1 1 0 stanza-create
[ "$RC" -eq 0 ] || die "pgBackRest stanza-create failed"
run_timed stanza-create-pgward "${PGW[@]}" stanza-create
record setup pgward 1 1 0 stanza-create
PW_OK=1
[ "$RC" -eq 0 ] || { PW_OK=0; log "pgward stanza-create failed: pgward steps will fail too"; }
run_timed check-pgbackrest "${BR[@]}" check
record setup pgbackrest 1 2 0 "check (WAL switch through the archive_command wrapper)"
if [ "$RC" -ne 0 ]; then
    tail -5 "$RES"/archive-push-*.log "$BASE/log/postgres.log" >&2
    die "pgbackrest check failed (is archive_command working? see above)"
fi

log "pgbench -i -s $SCALE"
run_timed pgbench-init pgbench -i -s "$SCALE" -h "$BASE" -p "$PORT" postgres
record setup pgbench-init 1 1 0 "scale $SCALE"
[ "$RC" -eq 0 ] || die "pgbench -i failed"
psqlq -c "CHECKPOINT"
wait_archived
log "load WAL archived by both tools ${ARCH_WAIT}s after the load ended"
SRC_NOWAL=$(datasize)
SRC_TOTAL=$(du -sb "$PGDATA" | cut -f1)
log "source: du -sb pgdata = $SRC_TOTAL, without pg_wal = $SRC_NOWAL"

# ---------------------------------------------------------------- full backups
backup_one() {   # TOOL RUN ORDER
    local tool=$1 r=$2 o=$3 label bytes note
    wait_archived
    if [ "$tool" = pgward ]; then
        run_timed "backup-pgward-$r" "${PGW[@]}" backup --jobs 2 --compress lz4
        label=$(pw_last_label || true); bytes=0; note="label=${label:-none}"
        if [ "$RC" -eq 0 ] && [ -n "$label" ]; then
            bytes=$(pw_bytes "$label")
            note="$note manifest.stored_size=$(jq -r '.stored_size // "?"' "$PWREPO/$STANZA/backups/$label.manifest" 2>/dev/null || echo '?'); $(pw_phases "$RES/backup-pgward-$r.out")"
        fi
    else
        run_timed "backup-pgbackrest-$r" "${BR[@]}" backup --type=full --compress-type=lz4 --process-max=2
        label=$(br_last_label || true); bytes=0; note="label=${label:-none}"
        if [ "$RC" -eq 0 ] && [ -n "$label" ]; then
            bytes=$(du -sb "$BRREPO/backup/$STANZA/$label" | cut -f1)
            note="$note; $(br_phases "$RES/backup-pgbackrest-$r.out")"
        fi
    fi
    record backup "$tool" "$r" "$o" "$bytes" "$note"
}

restore_one() {   # TOOL RUN ORDER
    local tool=$1 r=$2 o=$3 dir bytes
    if [ "$tool" = pgward ]; then dir=$RST_PW; else dir=$RST_BR; fi
    stop_server "$dir"
    rm -rf "$dir"; mkdir -m 700 "$dir"; chown postgres:postgres "$dir"
    if [ "$tool" = pgward ]; then
        run_timed "restore-pgward-$r" "${PGW[@]}" restore --pgdata "$dir" --archive-mode off --jobs 2
    else
        run_timed "restore-pgbackrest-$r" "${BR[@]}" --pg1-path="$dir" restore --archive-mode=off --process-max=2
    fi
    bytes=$(du -sb "$dir" | cut -f1)
    record restore "$tool" "$r" "$o" "$bytes" "into empty $dir"
}

order_for() { if (( $1 % 2 == 1 )); then echo "pgward pgbackrest"; else echo "pgbackrest pgward"; fi; }

for r in $(seq 1 "$RUNS"); do
    o=0
    for tool in $(order_for "$r"); do o=$((o + 1)); backup_one "$tool" "$r" "$o"; done
done
wait_archived

for r in $(seq 1 "$RUNS"); do
    o=0
    for tool in $(order_for "$r"); do
        o=$((o + 1)); restore_one "$tool" "$r" "$o"
        # keep the last restore of each tool (pgward's is checked below); free the other
    done
done
rm -rf "$RST_BR"

# ---------------------------------------------------------------- correctness check
SRC_SUM=$(psqlq -c "SELECT sum(abalance) FROM pgbench_accounts")
SRC_CNT=$(psqlq -c "SELECT count(*) FROM pgbench_accounts")
VERIFY="NOT RUN"; RST_SUM=-; RST_CNT=-; RECOV=-; RST_ARCHMODE=-; RST_RESTORECMD=-
if [ -f "$RST_PW/PG_VERSION" ] && [ "$(awk -F'\t' '$1=="restore" && $2=="pgward" {s=$5} END{print s}' "$TSV")" = ok ]; then
    log "starting the pgward-restored cluster on port $RPORT (recovery from pgward's archive)"
    t0=$(date +%s.%N)
    if pg pg_ctl -D "$RST_PW" -l "$BASE/log/restored-pgward.log" -t 600 -w \
            -o "-p $RPORT -c listen_addresses=''" start > "$RES/restored-start.out" 2>&1; then
        rq() { pg psql -X -v ON_ERROR_STOP=1 -h "$BASE" -p "$RPORT" -d postgres -Atq "$@"; }
        for _ in $(seq 1 3000); do
            [ "$(rq -c 'SELECT pg_is_in_recovery()' 2>/dev/null || echo t)" = f ] && break
            sleep 0.2
        done
        RECOV=$(printf '%.2f' "$(echo "$(date +%s.%N) - $t0" | bc)")
        RST_INREC=$(rq -c 'SELECT pg_is_in_recovery()' || echo '?')
        RST_SUM=$(rq -c "SELECT sum(abalance) FROM pgbench_accounts" || echo ERROR)
        RST_CNT=$(rq -c "SELECT count(*) FROM pgbench_accounts" || echo ERROR)
        RST_ARCHMODE=$(rq -c "SHOW archive_mode" || echo '?')
        RST_RESTORECMD=$(rq -c "SHOW restore_command" || echo '?')
        if [ "$SRC_SUM" = "$RST_SUM" ] && [ "$SRC_CNT" = "$RST_CNT" ] && [ "$RST_INREC" = f ]; then
            VERIFY=MATCH
        elif [ "$SRC_SUM" = "$RST_SUM" ] && [ "$SRC_CNT" = "$RST_CNT" ]; then
            VERIFY="MATCH (but still in recovery: pg_is_in_recovery=$RST_INREC)"
        else
            VERIFY=MISMATCH
        fi
        pg pg_ctl -D "$RST_PW" -m fast -w stop >/dev/null || true
    else
        VERIFY="FAILED TO START"
        cat "$RES/restored-start.out" >&2; tail -30 "$BASE/log/restored-pgward.log" >&2 || true
    fi
    cp "$BASE/log/restored-pgward.log" "$RES/" 2>/dev/null || true
    for f in postgresql.auto.conf recovery.signal standby.signal; do
        [ -f "$RST_PW/$f" ] && cp "$RST_PW/$f" "$RES/restored-pgward.$f"
    done
fi
log "correctness: source sum=$SRC_SUM count=$SRC_CNT; pgward-restored sum=$RST_SUM count=$RST_CNT -> $VERIFY (start+recovery ${RECOV}s)"

# ---------------------------------------------------------------- finish
pg "${BR[@]}" info > "$RES/pgbackrest-info.txt" 2>&1 || true
pg "${PGW[@]}" info > "$RES/pgward-info.txt" 2>&1 || true
pg "${PGW[@]}" --output json info > "$RES/pgward-info.json" 2>&1 || true
cp "$BASE/log/postgres.log" "$RES/source-postgres.log" || true
stop_server "$PGDATA"
rm -rf "$RST_PW" "$RST_BR"

# ---------------------------------------------------------------- report
col() {   # OP TOOL COLUMN -> values of successful runs
    awk -F'\t' -v op="$1" -v t="$2" -v c="$3" '$1==op && $2==t && $5=="ok" {print $c}' "$TSV"
}
cpu_col() { awk -F'\t' -v op="$1" -v t="$2" '$1==op && $2==t && $5=="ok" {printf "%.2f\n", $8 + $9}' "$TSV"; }
median() { sort -g | awk '{a[NR]=$1} END{if(NR==0){print "nan"; exit}
    if(NR%2) print a[(NR+1)/2]; else printf "%.10g\n", (a[NR/2]+a[NR/2+1])/2}'; }
maxof() { sort -g | tail -1 | awk '{print} END{if(NR==0) print "nan"}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a=="nan" || b=="nan" || b+0==0) print "n/a"; else printf "%.2f\n", a/b }'; }
mib() { awk -v k="$1" 'BEGIN{ if (k=="nan") print "nan"; else printf "%.1f", k/1024 }'; }

arch_stats() {   # LOGFILE -> "n median_wall max_wall max_rss_kb failures"
    awk '$6 ~ /^[0-9]+$/ {print}' "$1" | sort -k2,2g | awk '
        {w[NR]=$2; if($3>m)m=$3; if($6!=0)f++}
        END{ if(NR==0){print "0 nan nan 0 0"; exit}
             med = (NR%2) ? w[(NR+1)/2] : (w[NR/2]+w[NR/2+1])/2;
             printf "%d %.3f %.2f %d %d\n", NR, med, w[NR], m, f+0 }'
}

{
echo "## pgward vs pgBackRest: full backup and restore"
echo
echo "- host: $(nproc) cores, $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM, $(. /etc/os-release; echo "$PRETTY_NAME"), $(date -u +%FT%TZ); machine shared with other work"
echo "- $(pgbackrest version); pgward $("$PGWARD" --version 2>/dev/null | awk '{print $NF}') ($PGWARD, sha256 $(sha256sum "$PGWARD" | cut -c1-12)); server $(postgres --version | awk '{print $3}')"
echo "- pgbench scale $SCALE; source after load: du -sb pgdata = $SRC_TOTAL bytes, **without pg_wal = $SRC_NOWAL bytes**"
echo "- $RUNS runs per tool and step, alternating (odd runs: pgward first; even: pgBackRest first); warm page cache; \`sync\` before each; WAL archiving idle before each backup"
echo "- correctness: source sum(abalance)=$SRC_SUM count=$SRC_CNT; pgward-restored cluster (started on port $RPORT, recovered from pgward's archive) sum=$RST_SUM count=$RST_CNT -> **$VERIFY** (start to end of recovery ${RECOV} s; restored archive_mode=$RST_ARCHMODE; restore_command=\`$RST_RESTORECMD\`)"
read -r n1 m1 x1 r1 f1 < <(arch_stats "$RES/archive-push-pgbackrest.log")
read -r n2 m2 x2 r2 f2 < <(arch_stats "$RES/archive-push-pgward.log")
echo "- archive-push per 16 MiB segment (lz4), from the archive_command wrapper: pgBackRest median ${m1} s (max ${x1} s, max RSS $(mib "$r1") MiB, $n1 calls, $f1 failed); pgward median ${m2} s (max ${x2} s, max RSS $(mib "$r2") MiB, $n2 calls, $f2 failed)"
echo
echo "### Per run"
echo
echo "| step | tool | run | order | status | wall s | max RSS MiB | user s | sys s | (u+s)/wall | srv CPU s | bytes | vol/invol ctx sw | FS out blocks |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
awk -F'\t' '$1=="backup" || $1=="restore" {
    cpu = ($6 > 0) ? ($8 + $9) / $6 * 100 : 0;
    printf "| %s | %s | %s | %s | %s | %.2f | %.1f | %.2f | %.2f | %.0f%% | %s | %s | %s/%s | %s |\n",
        $1, $2, $3, $4, $5, $6, $7 / 1024, $8, $9, cpu, $10, $11, $12, $13, $14 }' "$TSV"
echo
echo "Notes per run (labels, phase breakdown from each tool's own log timestamps):"
echo
awk -F'\t' '$1=="backup" || $1=="restore" { printf "- %s %s run %s: %s\n", $1, $2, $3, $15 }' "$TSV"
echo
echo "### Medians and ratios (successful runs only)"
echo
echo "| step | tool | runs ok | median wall s | min–max wall s | median max RSS MiB | peak RSS MiB | median user+sys s | median srv CPU s | median bytes |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for op in backup restore; do
    for t in pgward pgbackrest; do
        n=$(col $op $t 6 | wc -l)
        echo "| $op | $t | $n/$RUNS | $(col $op $t 6 | median) | $(col $op $t 6 | sort -g | head -1)–$(col $op $t 6 | maxof) | $(mib "$(col $op $t 7 | median)") | $(mib "$(col $op $t 7 | maxof)") | $(cpu_col $op $t | median) | $(col $op $t 10 | median) | $(col $op $t 11 | median) |"
    done
done
echo
echo "| step | time ratio pgward/pgBackRest (median wall) | peak memory ratio (median max RSS) | CPU ratio (median user+sys) | size ratio (median bytes) |"
echo "|---|---|---|---|---|"
for op in backup restore; do
    echo "| $op | $(ratio "$(col $op pgward 6 | median)" "$(col $op pgbackrest 6 | median)") | $(ratio "$(col $op pgward 7 | median)" "$(col $op pgbackrest 7 | median)") | $(ratio "$(cpu_col $op pgward | median)" "$(cpu_col $op pgbackrest | median)") | $(ratio "$(col $op pgward 11 | median)" "$(col $op pgbackrest 11 | median)") |"
done
echo
FAILS=$(awk -F'\t' '$5!="ok" {printf "%s %s run %s: %s\n", $1, $2, $3, $5}' "$TSV")
if [ -n "$FAILS" ]; then
    echo "### Failures"
    echo
    echo "$FAILS" | while read -r op t _ r st; do
        echo "- $op $t run $r $st: output (\`$RES/$op-$t-$r.out\`):"
        echo
        echo '```'
        tail -20 "$RES/$op-$t-${r%:}.out" 2>/dev/null || true
        echo '```'
    done
    echo
fi
echo "Commands (run as OS user postgres under \`/usr/bin/time -v\`):"
echo
echo "- pgward backup: \`$PGWARD --repo $PWREPO --stanza $STANZA backup --jobs 2 --compress lz4\` (PGHOST=$BASE PGPORT=$PORT PGUSER=postgres)"
echo "- pgBackRest backup: \`pgbackrest --config=$CONF --stanza=$STANZA backup --type=full --compress-type=lz4 --process-max=2\`"
echo "- pgward restore: \`$PGWARD --repo $PWREPO --stanza $STANZA restore --pgdata $RST_PW --archive-mode off --jobs 2\`"
echo "- pgBackRest restore: \`pgbackrest --config=$CONF --stanza=$STANZA --pg1-path=$RST_BR restore --archive-mode=off --process-max=2\`"
echo "- archive_command: \`$WRAPPER %p\` (pgbackrest archive-push, then pgward --compress lz4 archive-push)"
echo "- script wall time: $((SECONDS - T_START)) s"
} | tee "$RES/results.md"
