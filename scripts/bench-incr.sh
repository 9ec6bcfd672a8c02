#!/usr/bin/env bash
# bench-incr.sh -- incremental backups and chain restores: pgward against pgBackRest.
#
# Companion of bench-full.sh (same cluster settings, helpers and conventions).
# Self-contained: installs pgBackRest and GNU time from Debian if missing, creates a
# scratch PostgreSQL cluster (data checksums) under $BASE whose archive_command pushes
# every WAL segment into BOTH tools' repositories, loads pgbench data (then vacuumdb
# --all --analyze + vacuumdb --all, so that autovacuum's first catalog pass after initdb
# does not fall into the "no change" step) and takes one full backup with each tool
# (lz4, 2 workers).  Then, timed and in alternating tool order:
#   * RUNS incrementals, each after an UPDATE of a contiguous 1% of pgbench_accounts
#     (aid BETWEEN k*N/100+1 AND (k+1)*N/100, a different k each round) + CHECKPOINT;
#   * RUNS incrementals with nothing changed since the previous one;
#   * RUNS rounds of restores: pgward of the latest full, pgward of the latest incr
#     (chain full + 2*RUNS incrementals) and pgBackRest of the latest incr.
# Once, the pgward-restored incremental is started on another port (it recovers from
# pgward's archive) and compared with the source.  Prints a markdown table with per-run
# figures, medians and ratios, stops every server it started and removes the restore
# directories; raw results stay in $BASE/results.
#
# Usage (as root):   bash scripts/bench-incr.sh      (about 10 min at SCALE=100, RUNS=3)
#
# Environment knobs:
#   SCALE    pgbench scale (default 100, ~1.5 GB of data, N = 100000*SCALE accounts)
#   RUNS     repetitions of each timed step per tool (default 3)
#   BASE     work directory, wiped at start (default /tmp/pgward-bench-incr)
#   PGWARD   pgward binary (default /tmp/pgward-bench-bin/pgward-incr)
#   PORT     port of the source cluster (default 5495), RPORT of the restored one (5494);
#            both listen on a unix socket in $BASE only
#   PGVER    PostgreSQL major version (default 15)
#
# What is measured (every command runs as the postgres OS user under /usr/bin/time -v,
# after `sync`, with a warm page cache, once WAL archiving has caught up):
#   * wall, max RSS, user, sys from GNU time (user+sys include waited-for children, i.e.
#     pgBackRest's local workers; max RSS is the largest single process, not a sum).
#   * srv CPU: CPU seconds used meanwhile by the cluster (incl. archive_command children).
#   * stored bytes of a backup = what the backup's data files add to the repository,
#     manifests excluded, as each tool reports it: pgward `info` backups[].stored_size
#     (its bundles), pgBackRest `info` backup.info.repository.delta.  The per-run table
#     also shows du -sb of everything the backup wrote (pgward: bundles + manifest;
#     pgBackRest: backup/<stanza>/<label>, i.e. files + backup.manifest(.copy)).
#   * restore bytes: du -sb of the restored directory.
# Change detection: both tools compare size+mtime with the reference backup; pgward
# treats files modified within 2 s before the reference backup's start as changed, so
# the script sleeps 3 s after a backup / after a change before the next timed step.
set -euo pipefail

SCALE=${SCALE:-100}
RUNS=${RUNS:-3}
BASE=${BASE:-/tmp/pgward-bench-incr}
PGWARD=${PGWARD:-/tmp/pgward-bench-bin/pgward-incr}
PORT=${PORT:-5495}
RPORT=${RPORT:-5494}
PGVER=${PGVER:-15}
STANZA=bench

PGBIN=/usr/lib/postgresql/$PGVER/bin
PGDATA=$BASE/pgdata
BRREPO=$BASE/pgbackrest-repo
PWREPO=$BASE/pgward-repo
CONF=$BASE/pgbackrest.conf
RST_PWF=$BASE/restore-pgward-full
RST_PWI=$BASE/restore-pgward-incr
RST_BR=$BASE/restore-pgbackrest-incr
RES=$BASE/results
TSV=$RES/results.tsv
WRAPPER=$BASE/pgbackrest-and-pgward-archive-push.sh
NACC=$((100000 * SCALE))
# k of the 1% slices, one per round: at SCALE 100 the first three lie in the first 1 GiB
# segment of pgbench_accounts (the new row versions are appended to its last segment)
K_SEQ=(10 40 70 25 55 85 5 35 65 95 15 45 75 20 50 80 0 30 60 90)
export PATH=$PGBIN:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
T_START=$SECONDS

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
case "$BASE" in /|/tmp|/tmp/|"") echo "refusing BASE=$BASE" >&2; exit 1;; esac
[ -x "$PGWARD" ] || { echo "pgward binary not found: $PGWARD" >&2; exit 1; }
[ -x "$PGBIN/initdb" ] || { echo "PostgreSQL $PGVER not found in $PGBIN" >&2; exit 1; }
[ "$RUNS" -ge 1 ] 2>/dev/null || { echo "RUNS must be >= 1" >&2; exit 1; }

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
for d in "$RST_PWF" "$RST_PWI" "$RST_BR" "$PGDATA"; do stop_server "$d"; done
rm -rf "$BASE"
mkdir -p "$BASE"/{log,lock,spool,results} "$BRREPO" "$PWREPO"
chown -R postgres:postgres "$BASE"
chmod 700 "$BASE"
cd "$BASE"
: > "$TSV"

cleanup() {
    local rc=$?
    for d in "$RST_PWF" "$RST_PWI" "$RST_BR" "$PGDATA"; do stop_server "$d"; done
    rm -rf "$RST_PWF" "$RST_PWI" "$RST_BR"
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

# run_timed ID CMD... : sync, run CMD as postgres under time -v; sets WALL RSS USR SYS SRV VCS IVCS FSO RC LOAD
run_timed() {
    local id=$1; shift
    local s0 s1
    RC=0
    sync
    LOAD=$(cut -d' ' -f1 /proc/loadavg)   # 1-min load average just before (other work on the host)
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

# record OP TOOL RUN ORDER BYTES NOTE [DUBYTES] [ID]  (uses RC WALL RSS USR SYS SRV VCS IVCS FSO)
# TSV columns: 1 op 2 tool 3 run 4 order 5 status 6 wall 7 rss_kb 8 user 9 sys 10 srv
#              11 bytes 12 vcs 13 ivcs 14 fsout 15 note 16 du_bytes 17 id (output file stem)
#              18 host 1-min load average just before the step
record() {
    local status=ok
    [ "$RC" -eq 0 ] || status="FAILED($RC)"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$1" "$2" "$3" "$4" "$status" "$WALL" "$RSS" "$USR" "$SYS" "$SRV" "$5" "$VCS" "$IVCS" "$FSO" "$6" "${7:--}" "${8:--}" "${LOAD:--}" >> "$TSV"
    log "$1 $2 run $3 (#$4): $status wall=${WALL}s rss=$((RSS / 1024))MiB user=${USR} sys=${SYS} srv=${SRV} bytes=$5 du=${7:--} load=${LOAD:--} $6"
}

# phase breakdowns from the tools' own log timestamps
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

# newest backup of each tool as one line of JSON
br_last() { pg "${BR[@]}" info --output=json 2>/dev/null | jq -c '.[0].backup[-1] // empty'; }
pw_last() { pg "${PGW[@]}" --output json info 2>/dev/null | jq -c '.backups | sort_by(.label) | last // empty'; }
pw_du() {   # LABEL -> du -sb of its bundles + manifest
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

# ---- pgward bench-incr.sh (same settings as bench-full.sh)
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
[ "$RC" -eq 0 ] || log "pgward stanza-create failed: pgward steps will fail too"
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
# Pre-empt autovacuum's first visit to template1/postgres after initdb (it ANALYZEs the
# catalogs and VACUUMs pg_statistic a minute or two after start-up), which would otherwise
# land in the middle of the "no change" incrementals: analyze, then vacuum away what
# the analyze left behind.
pg vacuumdb -h "$BASE" -p "$PORT" --all --analyze -q
pg vacuumdb -h "$BASE" -p "$PORT" --all -q
psqlq -c "CHECKPOINT"
wait_archived
log "load WAL archived by both tools ${ARCH_WAIT}s after the load ended"
SRC_NOWAL=$(datasize)
SRC_TOTAL=$(du -sb "$PGDATA" | cut -f1)
ACC_FILES=$(psqlq -c "SELECT pg_relation_filepath('pgbench_accounts')")
log "source: du -sb pgdata = $SRC_TOTAL, without pg_wal = $SRC_NOWAL; pgbench_accounts = $ACC_FILES"
sleep 3

# ---------------------------------------------------------------- backups
# backup_one OP TOOL TYPE RUN ORDER : one timed backup; records stored bytes and checks
# that what was stored is of the type asked for
declare -A LAST_LABEL   # tool -> newest label
backup_one() {
    local op=$1 tool=$2 type=$3 r=$4 o=$5 id b label bytes du note got
    id="$op-$tool-$r"
    wait_archived
    if [ "$tool" = pgward ]; then
        run_timed "$id" "${PGW[@]}" backup --type "$type" --jobs 2 --compress lz4
        b=$(pw_last || true); label=$(jq -r '.label // empty' <<<"$b"); bytes=0; du=0
        note="label=${label:-none}"
        if [ "$RC" -eq 0 ] && [ -n "$label" ]; then
            got=$(jq -r .type <<<"$b")
            bytes=$(jq -r .stored_size <<<"$b"); du=$(pw_du "$label")
            note="label=$label type=$got reference=$(jq -r '.reference // "-"' <<<"$b") files=$(jq -r .file_count <<<"$b") db_size=$(jq -r .database_size <<<"$b") chain=$(jq -r '.chain | length' <<<"$b"); $(pw_phases "$RES/$id.out")"
            [ "$got" = "$type" ] || { note="TYPE MISMATCH (asked $type, got $got): $note"; log "pgward stored a $got backup when asked for $type"; }
            LAST_LABEL[pgward]=$label
        fi
    else
        run_timed "$id" "${BR[@]}" backup --type="$type" --compress-type=lz4 --process-max=2
        b=$(br_last || true); label=$(jq -r '.label // empty' <<<"$b"); bytes=0; du=0
        note="label=${label:-none}"
        if [ "$RC" -eq 0 ] && [ -n "$label" ]; then
            got=$(jq -r .type <<<"$b")
            bytes=$(jq -r .info.repository.delta <<<"$b")
            du=$(du -sb "$BRREPO/backup/$STANZA/$label" | cut -f1)
            note="label=$label type=$got prior=$(jq -r '.prior // "-"' <<<"$b") db.delta=$(jq -r .info.delta <<<"$b") db.size=$(jq -r .info.size <<<"$b") repo.size=$(jq -r .info.repository.size <<<"$b"); $(br_phases "$RES/$id.out")"
            [ "$got" = "$type" ] || { note="TYPE MISMATCH (asked $type, got $got): $note"; log "pgBackRest stored a $got backup when asked for $type"; }
            LAST_LABEL[pgbackrest]=$label
        fi
    fi
    record "$op" "$tool" "$r" "$o" "$bytes" "$note" "$du" "$id"
}

order_for() { if (( $1 % 2 == 1 )); then echo "pgward pgbackrest"; else echo "pgbackrest pgward"; fi; }

# 2. one full backup per tool
o=0
for tool in $(order_for 1); do
    o=$((o + 1))
    [ $o -gt 1 ] && sleep 3
    backup_one full "$tool" full 1 "$o"
done
FULL_PW=${LAST_LABEL[pgward]:-}
FULL_BR=${LAST_LABEL[pgbackrest]:-}
FULL_PW_STORED=$(awk -F'\t' '$1=="full" && $2=="pgward" && $5=="ok" {print $11}' "$TSV")
FULL_BR_STORED=$(awk -F'\t' '$1=="full" && $2=="pgbackrest" && $5=="ok" {print $11}' "$TSV")
[ -n "$FULL_BR" ] || die "pgBackRest full backup failed"
[ -n "$FULL_PW" ] || log "pgward full backup failed: its incrementals will fall back to full or fail"
sleep 3

# 3. incrementals after a 1% UPDATE
UPD_NOTES=()
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
        backup_one incr1pct "$tool" incr "$r" "$o"
    done
done

# 4. incrementals with no change at all
for r in $(seq 1 "$RUNS"); do
    o=0
    for tool in $(order_for "$r"); do
        o=$((o + 1))
        sleep 3
        backup_one incr0 "$tool" incr "$r" "$o"
    done
done
INCR_PW=${LAST_LABEL[pgward]:-}
INCR_BR=${LAST_LABEL[pgbackrest]:-}
[ "$INCR_PW" != "$FULL_PW" ] || INCR_PW=""
CHAIN_PW=$(pg "${PGW[@]}" --output json info 2>/dev/null | jq -r --arg l "$INCR_PW" '.backups[] | select(.label == $l) | .chain | join(" ")' || true)
log "latest pgward incr $INCR_PW chain: $CHAIN_PW; latest pgBackRest incr $INCR_BR"
wait_archived

# 5. restores: pgward full, pgward full+incr chain, pgBackRest incr
restore_one() {   # KIND RUN ORDER   KIND = pwfull | pwincr | brincr
    local kind=$1 r=$2 o=$3 dir op tool set id bytes
    case $kind in
        pwfull) dir=$RST_PWF; op=restore-full; tool=pgward; set=$FULL_PW;;
        pwincr) dir=$RST_PWI; op=restore-incr; tool=pgward; set=$INCR_PW;;
        brincr) dir=$RST_BR;  op=restore-incr; tool=pgbackrest; set=$INCR_BR;;
    esac
    id="$op-$tool-$r"
    stop_server "$dir"
    rm -rf "$dir"; mkdir -m 700 "$dir"; chown postgres:postgres "$dir"
    if [ -z "$set" ]; then
        RC=99 WALL=0 RSS=0 USR=0 SYS=0 SRV=0 VCS=0 IVCS=0 FSO=0 LOAD=-
        echo "no backup to restore (the backup step failed)" > "$RES/$id.out"
        record "$op" "$tool" "$r" "$o" 0 "skipped: no backup" 0 "$id"
        return
    fi
    if [ "$tool" = pgward ]; then
        run_timed "$id" "${PGW[@]}" restore --set "$set" --pgdata "$dir" --archive-mode off --jobs 2
    else
        run_timed "$id" "${BR[@]}" --pg1-path="$dir" restore --set="$set" --archive-mode=off --process-max=2
    fi
    bytes=$(du -sb "$dir" | cut -f1)
    record "$op" "$tool" "$r" "$o" "$bytes" "set=$set into empty $dir" "$bytes" "$id"
}
for r in $(seq 1 "$RUNS"); do
    if (( r % 2 == 1 )); then kinds="pwfull pwincr brincr"; else kinds="brincr pwincr pwfull"; fi
    o=0
    for kind in $kinds; do
        o=$((o + 1)); restore_one "$kind" "$r" "$o"
    done
done
rm -rf "$RST_PWF" "$RST_BR"   # keep only the pgward incr restore (checked below)

# ---------------------------------------------------------------- 6. correctness check
# no writes happen any more on the source: the last incrementals saw no change
SRC_SUM=$(psqlq -c "SELECT sum(abalance) FROM pgbench_accounts")
SRC_CNT=$(psqlq -c "SELECT count(*) FROM pgbench_accounts")
VERIFY="NOT RUN"; RST_SUM=-; RST_CNT=-; RECOV=-; RST_ARCHMODE=-; RST_RESTORECMD=-
if [ -f "$RST_PWI/PG_VERSION" ] && [ "$(awk -F'\t' '$1=="restore-incr" && $2=="pgward" {s=$5} END{print s}' "$TSV")" = ok ]; then
    log "starting the pgward-restored incremental on port $RPORT (recovery from pgward's archive)"
    t0=$(date +%s.%N)
    if pg pg_ctl -D "$RST_PWI" -l "$BASE/log/restored-pgward.log" -t 600 -w \
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
        pg pg_ctl -D "$RST_PWI" -m fast -w stop >/dev/null || true
    else
        VERIFY="FAILED TO START"
        cat "$RES/restored-start.out" >&2; tail -30 "$BASE/log/restored-pgward.log" >&2 || true
    fi
    cp "$BASE/log/restored-pgward.log" "$RES/" 2>/dev/null || true
    for f in postgresql.auto.conf recovery.signal standby.signal; do
        [ -f "$RST_PWI/$f" ] && cp "$RST_PWI/$f" "$RES/restored-pgward.$f"
    done
fi
log "correctness: source sum=$SRC_SUM count=$SRC_CNT; pgward-restored incr sum=$RST_SUM count=$RST_CNT -> $VERIFY (start+recovery ${RECOV}s)"

# ---------------------------------------------------------------- finish
pg "${BR[@]}" info > "$RES/pgbackrest-info.txt" 2>&1 || true
pg "${BR[@]}" info --output=json > "$RES/pgbackrest-info.json" 2>&1 || true
pg "${PGW[@]}" info > "$RES/pgward-info.txt" 2>&1 || true
pg "${PGW[@]}" --output json info > "$RES/pgward-info.json" 2>&1 || true
cp "$BASE/log/postgres.log" "$RES/source-postgres.log" || true
stop_server "$PGDATA"
rm -rf "$RST_PWF" "$RST_PWI" "$RST_BR"

# ---------------------------------------------------------------- 7. report
col() {   # OP TOOL COLUMN -> values of successful runs
    awk -F'\t' -v op="$1" -v t="$2" -v c="$3" '$1==op && $2==t && $5=="ok" {print $c}' "$TSV"
}
cpu_col() { awk -F'\t' -v op="$1" -v t="$2" '$1==op && $2==t && $5=="ok" {printf "%.2f\n", $8 + $9}' "$TSV"; }
median() { sort -g | awk '{a[NR]=$1} END{if(NR==0){print "nan"; exit}
    if(NR%2) print a[(NR+1)/2]; else printf "%.10g\n", (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a=="nan" || b=="nan" || a=="" || b=="" || b+0==0) print "n/a"; else printf "%.2f\n", a/b }'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a=="nan" || b=="nan" || a=="" || b=="" || b+0==0) print "n/a"; else printf "%.2f%%\n", 100*a/b }'; }
mib() { awk -v k="$1" 'BEGIN{ if (k=="nan" || k=="") print "nan"; else printf "%.1f", k/1024 }'; }
mb() { awk -v b="$1" 'BEGIN{ if (b=="nan" || b=="") print "nan"; else printf "%.1f", b/1e6 }'; }
nok() { echo "$(col "$1" "$2" 6 | wc -l)/$3"; }

arch_stats() {   # LOGFILE -> "n median_wall max_wall max_rss_kb failures"
    awk '$6 ~ /^[0-9]+$/ {print}' "$1" | sort -k2,2g | awk '
        {w[NR]=$2; if($3>m)m=$3; if($6!=0)f++}
        END{ if(NR==0){print "0 nan nan 0 0"; exit}
             med = (NR%2) ? w[(NR+1)/2] : (w[NR/2]+w[NR/2+1])/2;
             printf "%d %.3f %.2f %d %d\n", NR, med, w[NR], m, f+0 }'
}

{
echo "## pgward vs pgBackRest: incremental backups and chain restores"
echo
echo "- host: $(nproc) cores, $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM, $(. /etc/os-release; echo "$PRETTY_NAME"), $(date -u +%FT%TZ); machine shared with other work"
echo "- $(pgbackrest version); pgward $("$PGWARD" --version 2>/dev/null | awk '{print $NF}') ($PGWARD, sha256 $(sha256sum "$PGWARD" | cut -c1-12)); server $(postgres --version | awk '{print $3}')"
echo "- pgbench scale $SCALE (N = $NACC accounts, pgbench_accounts at $ACC_FILES); source after load: du -sb pgdata = $SRC_TOTAL bytes, without pg_wal = $SRC_NOWAL bytes"
echo "- full backups (one per tool): pgward $FULL_PW stored ${FULL_PW_STORED:-?} bytes; pgBackRest $FULL_BR repo.delta ${FULL_BR_STORED:-?} bytes"
echo "- 1% changes (each followed by CHECKPOINT, archive catch-up, sleep 3 s):"
for n in "${UPD_NOTES[@]}"; do echo "  - $n"; done
echo "- $RUNS runs per tool and step, alternating (odd runs: pgward first; even: pgBackRest first; restores: odd runs pgward full, pgward incr, pgBackRest incr, even runs reversed); warm page cache; \`sync\` before each; WAL archiving idle before each backup; 3 s sleep before each backup"
echo "- restores of the latest incr: pgward $INCR_PW (chain: $CHAIN_PW), pgBackRest $INCR_BR"
echo "- correctness: source sum(abalance)=$SRC_SUM count=$SRC_CNT; pgward-restored incremental (started on port $RPORT, recovered from pgward's archive) sum=$RST_SUM count=$RST_CNT -> **$VERIFY** (start to end of recovery ${RECOV} s; restored archive_mode=$RST_ARCHMODE; restore_command=\`$RST_RESTORECMD\`)"
read -r n1 m1 x1 r1 f1 < <(arch_stats "$RES/archive-push-pgbackrest.log")
read -r n2 m2 x2 r2 f2 < <(arch_stats "$RES/archive-push-pgward.log")
LOADS=$(awk -F'\t' '$1!="setup" && $18 != "-" {n++; s+=$18; if($18>m)m=$18} END{if(n) printf "mean %.2f, max %.2f", s/n, m; else print "n/a"}' "$TSV")
echo "- host 1-min load average just before the timed steps: $LOADS on $(nproc) cores (includes this script's own preceding steps; values well above ~1 mean other work shared the CPUs and timings are noisier)"
echo "- archive-push per 16 MiB segment (lz4), from the archive_command wrapper: pgBackRest median ${m1} s (max ${x1} s, max RSS $(mib "$r1") MiB, $n1 calls, $f1 failed); pgward median ${m2} s (max ${x2} s, max RSS $(mib "$r2") MiB, $n2 calls, $f2 failed)"
echo
echo "### Summary (medians of successful runs; ratio = pgward / pgBackRest)"
echo
echo "Stored bytes = data the backup added to its repository, manifests excluded (pgward info stored_size; pgBackRest info repository.delta)."
echo
echo "| measure | pgward | pgBackRest | ratio |"
echo "|---|---|---|---|"
echo "| full backup (1 run): wall s | $(col full pgward 6 | median) | $(col full pgbackrest 6 | median) | $(ratio "$(col full pgward 6 | median)" "$(col full pgbackrest 6 | median)") |"
echo "| full backup: stored MB | $(mb "$FULL_PW_STORED") | $(mb "$FULL_BR_STORED") | $(ratio "$FULL_PW_STORED" "$FULL_BR_STORED") |"
for op in incr1pct incr0; do
    case $op in incr1pct) name="incr after 1% UPDATE";; incr0) name="incr, no change";; esac
    wp=$(col $op pgward 6 | median); wb=$(col $op pgbackrest 6 | median)
    rp=$(col $op pgward 7 | median); rb=$(col $op pgbackrest 7 | median)
    cp_=$(cpu_col $op pgward | median); cb=$(cpu_col $op pgbackrest | median)
    bp=$(col $op pgward 11 | median); bb=$(col $op pgbackrest 11 | median)
    echo "| $name: runs ok | $(nok $op pgward "$RUNS") | $(nok $op pgbackrest "$RUNS") | |"
    echo "| $name: **wall s** | $wp | $wb | **$(ratio "$wp" "$wb")** |"
    echo "| $name: max RSS MiB | $(mib "$rp") | $(mib "$rb") | $(ratio "$rp" "$rb") |"
    echo "| $name: user+sys s | $cp_ | $cb | $(ratio "$cp_" "$cb") |"
    echo "| $name: **stored bytes** | $bp | $bb | **$(ratio "$bp" "$bb")** |"
    echo "| $name: stored as % of own full | $(pct "$bp" "$FULL_PW_STORED") | $(pct "$bb" "$FULL_BR_STORED") | |"
    echo "| $name: du -sb incl. manifests | $(col $op pgward 16 | median) | $(col $op pgbackrest 16 | median) | $(ratio "$(col $op pgward 16 | median)" "$(col $op pgbackrest 16 | median)") |"
done
wpf=$(col restore-full pgward 6 | median); wpi=$(col restore-incr pgward 6 | median); wbi=$(col restore-incr pgbackrest 6 | median)
echo "| restore latest incr: runs ok | $(nok restore-incr pgward "$RUNS") | $(nok restore-incr pgbackrest "$RUNS") | |"
echo "| restore latest incr: **wall s** | $wpi | $wbi | **$(ratio "$wpi" "$wbi")** |"
echo "| restore latest incr: max RSS MiB | $(mib "$(col restore-incr pgward 7 | median)") | $(mib "$(col restore-incr pgbackrest 7 | median)") | $(ratio "$(col restore-incr pgward 7 | median)" "$(col restore-incr pgbackrest 7 | median)") |"
echo "| restore latest incr: user+sys s | $(cpu_col restore-incr pgward | median) | $(cpu_col restore-incr pgbackrest | median) | $(ratio "$(cpu_col restore-incr pgward | median)" "$(cpu_col restore-incr pgbackrest | median)") |"
echo
echo "| pgward restore | runs ok | median wall s | median max RSS MiB | median user+sys s | restored bytes |"
echo "|---|---|---|---|---|---|"
echo "| latest full ($FULL_PW) | $(nok restore-full pgward "$RUNS") | $wpf | $(mib "$(col restore-full pgward 7 | median)") | $(cpu_col restore-full pgward | median) | $(col restore-full pgward 11 | median) |"
echo "| latest incr ($INCR_PW, chain of $(wc -w <<<"$CHAIN_PW")) | $(nok restore-incr pgward "$RUNS") | $wpi | $(mib "$(col restore-incr pgward 7 | median)") | $(cpu_col restore-incr pgward | median) | $(col restore-incr pgward 11 | median) |"
echo "| **ratio full+incr / full** | | **$(ratio "$wpi" "$wpf")** | $(ratio "$(col restore-incr pgward 7 | median)" "$(col restore-full pgward 7 | median)") | $(ratio "$(cpu_col restore-incr pgward | median)" "$(cpu_col restore-full pgward | median)") | |"
echo
echo "### Per run"
echo
echo "| step | tool | run | order | status | wall s | max RSS MiB | user s | sys s | (u+s)/wall | srv CPU s | stored/restored bytes | du bytes | vol/invol ctx sw | FS out blocks | host load before |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
awk -F'\t' '$1!="setup" {
    cpu = ($6 > 0) ? ($8 + $9) / $6 * 100 : 0;
    printf "| %s | %s | %s | %s | %s | %.2f | %.1f | %.2f | %.2f | %.0f%% | %s | %s | %s | %s/%s | %s | %s |\n",
        $1, $2, $3, $4, $5, $6, $7 / 1024, $8, $9, cpu, $10, $11, $16, $12, $13, $14, $18 }' "$TSV"
echo
echo "Notes per run (labels, types, phase breakdown from each tool's own log timestamps):"
echo
awk -F'\t' '$1!="setup" { printf "- %s %s run %s: %s\n", $1, $2, $3, $15 }' "$TSV"
echo
FAILS=$(awk -F'\t' '$5!="ok" || $15 ~ /TYPE MISMATCH/ {print $17}' "$TSV")
if [ -n "$FAILS" ]; then
    echo "### Failures and anomalies"
    echo
    for id in $FAILS; do
        echo "- $id: $(awk -F'\t' -v id="$id" '$17==id {print $5 "; " $15}' "$TSV") (\`$RES/$id.out\`, last lines):"
        echo
        echo '```'
        tail -20 "$RES/$id.out" 2>/dev/null || true
        echo '```'
    done
    echo
fi
echo "Commands (run as OS user postgres under \`/usr/bin/time -v\`):"
echo
echo "- pgward backup: \`$PGWARD --repo $PWREPO --stanza $STANZA backup --type full|incr --jobs 2 --compress lz4\` (PGHOST=$BASE PGPORT=$PORT PGUSER=postgres)"
echo "- pgBackRest backup: \`pgbackrest --config=$CONF --stanza=$STANZA backup --type=full|incr --compress-type=lz4 --process-max=2\`"
echo "- pgward restore: \`$PGWARD --repo $PWREPO --stanza $STANZA restore --set LABEL --pgdata DIR --archive-mode off --jobs 2\`"
echo "- pgBackRest restore: \`pgbackrest --config=$CONF --stanza=$STANZA --pg1-path=DIR restore --set=LABEL --archive-mode=off --process-max=2\`"
echo "- archive_command: \`$WRAPPER %p\` (pgbackrest archive-push, then pgward --compress lz4 archive-push)"
echo "- script wall time: $((SECONDS - T_START)) s"
} | tee "$RES/results.md"
