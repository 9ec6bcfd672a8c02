#!/usr/bin/env bash
# Regenerates tests/fixtures/wal/pg<major>/: WAL segments that real servers wrote, and
# pg_waldump's reading of them, for the WAL reader's tests (src/pg/wal/).
#
#   scripts/make-wal-fixtures.sh              # every major 13-18
#   scripts/make-wal-fixtures.sh 15 17        # only these
#
# Run as root after `scripts/install-test-deps.sh all`. Each cluster uses 1 MB segments
# (initdb --wal-segsize=1) and archives every segment it completes, so the fixture is
# the archived copies (recycling in pg_wal cannot touch them). The workload emits every
# record kind the block-map needs: heap/btree changes with and without full-page images,
# a VACUUM that truncates, TRUNCATE, DROP TABLE in a transaction, rollback and prepared
# transactions that drop relations, a commit dropping hundreds of relations (a record
# across pages), CREATE DATABASE (FILE_COPY on 15+), ALTER DATABASE SET TABLESPACE,
# DROP DATABASE, a wal_level change (XLOG_PARAMETER_CHANGE), a logical message longer
# than a segment (a record across two segment boundaries), an overwrite-contrecord made
# the way PostgreSQL's own test 026_overwrite_contrecord.pl makes it (the segment holding
# the end of a record is deleted before crash recovery), and on 15+ CREATE DATABASE
# STRATEGY WAL_LOG near the end of a segment that ends the fixture (the template copy that
# follows is megabytes of page images and is left out).
#
# Output per major: seg/<name>.zst (zstd -19) for a contiguous run of segments,
# waldump.txt.zst (`pg_waldump --bkp-details` over that run, stdout; it ends with an
# error on the incomplete last record, kept in waldump.err) and workload.txt with the
# LSNs the tests look for. PG 13's build (npm) has no pg_waldump: no waldump.txt.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/tmp/pgward-walfix}
PSQL=/usr/lib/postgresql/15/bin/psql
majors=("$@")
[ ${#majors[@]} -gt 0 ] || majors=(13 14 15 16 17 18)
[ "$(id -u)" = 0 ] || { echo "make-wal-fixtures: run as root (servers run as postgres)" >&2; exit 1; }

bindir() { if [ "$1" = 15 ]; then echo /usr/lib/postgresql/15/bin; else echo "/opt/pgward-pg/$1/bin"; fi; }
as_pg() { runuser -u postgres -- "$@"; }

make_one() {
  local m=$1 bin d out port=5432
  bin=$(bindir "$m")
  d=$WORK/pg$m
  out=$ROOT/tests/fixtures/wal/pg$m
  [ -x "$bin/initdb" ] || { echo "make-wal-fixtures: no PostgreSQL $m at $bin" >&2; exit 1; }
  [ ! -f "$d/data/postmaster.pid" ] || as_pg "$bin/pg_ctl" -D "$d/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$d"
  mkdir -p "$d/archive" "$d/ts"
  chown -R postgres "$d"
  as_pg "$bin/initdb" -D "$d/data" --wal-segsize=1 -U postgres -A trust --no-sync >"$d/initdb.log"
  cat >>"$d/data/postgresql.conf" <<EOF
port = $port
listen_addresses = ''
unix_socket_directories = '$d'
max_prepared_transactions = 5
autovacuum = off
checkpoint_timeout = 1h
archive_mode = on
archive_command = 'cp %p $d/archive/%f'
EOF
  start() { as_pg "$bin/pg_ctl" -D "$d/data" -l "$d/server.log" -w start >/dev/null; }
  q() { as_pg "$PSQL" -h "$d" -p $port -U postgres -X -q -At -v ON_ERROR_STOP=1 -d "${DB:-postgres}" -c "$1"; }
  walname() { q "SELECT pg_walfile_name(pg_current_wal_insert_lsn())"; }
  note() { echo "$1 $(q "SELECT pg_current_wal_insert_lsn()")" >>"$d/workload.txt"; }
  start
  : >"$d/workload.txt"

  q "CREATE TABLE filler (a int, b text)"
  q "SELECT pg_switch_wal()" >/dev/null
  local first; first=$(walname)
  note start
  q "CREATE TABLE t (id int PRIMARY KEY, v text)"
  q "INSERT INTO t SELECT g, repeat('v', 50) FROM generate_series(1, 300) g"
  q "UPDATE t SET v = 'u' WHERE id % 10 = 0"
  q "DELETE FROM t WHERE id > 200"
  q "CHECKPOINT"
  q "UPDATE t SET v = 'w' WHERE id < 5"
  # Compressed full-page images (pglz), whose header layout differs from plain ones.
  q "SET wal_compression = on; UPDATE t SET v = 'c' WHERE id > 150"
  q "CREATE TABLE tr AS SELECT g FROM generate_series(1, 3000) g"
  q "DELETE FROM tr WHERE g > 100"
  note vacuum
  q "VACUUM t"
  q "VACUUM tr"
  note truncate
  q "CREATE TABLE tt (a int); INSERT INTO tt VALUES (1)"
  q "TRUNCATE tt"
  q "BEGIN; CREATE TABLE gone (a int); INSERT INTO gone VALUES (1); DROP TABLE gone; COMMIT"
  q "DROP TABLE tt"
  q "BEGIN; CREATE TABLE rolled (a int); ROLLBACK"
  q "BEGIN; CREATE TABLE prep (a int); PREPARE TRANSACTION 'p1'"
  q "ROLLBACK PREPARED 'p1'"
  q "CREATE TABLE prep2 (a int)"
  q "BEGIN; DROP TABLE prep2; PREPARE TRANSACTION 'p2'"
  q "COMMIT PREPARED 'p2'"
  note many_rels
  q "DO \$\$ BEGIN FOR i IN 1..60 LOOP EXECUTE format('CREATE TABLE many_%s (a int)', i); END LOOP; END \$\$"
  q "DO \$\$ BEGIN FOR i IN 1..60 LOOP EXECUTE format('DROP TABLE many_%s', i); END LOOP; END \$\$"
  note dbase
  if [ "$m" -ge 15 ]; then
    q "CREATE DATABASE fc TEMPLATE template0 STRATEGY FILE_COPY"
  else
    q "CREATE DATABASE fc TEMPLATE template0"
  fi
  q "CREATE TABLESPACE ts LOCATION '$d/ts'"
  q "ALTER DATABASE fc SET TABLESPACE ts"
  q "DROP DATABASE fc"
  note message
  q "SELECT pg_logical_emit_message(false, 'pgward', repeat('m', 1200000))" >/dev/null
  note wal_level
  q "ALTER SYSTEM SET wal_level = logical"
  as_pg "$bin/pg_ctl" -D "$d/data" -m fast -w restart -l "$d/server.log" >/dev/null

  # Overwrite-contrecord: fill the current segment to 800-850 KB, start a 300 KB record
  # that ends in the next segment, crash, delete that segment, recover.
  seg_offset() { q "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint % 1048576"; }
  local off; off=$(seg_offset)
  while [ "$off" -lt 819200 ] || [ "$off" -gt 870400 ]; do
    q "INSERT INTO filler SELECT g, repeat('f', 100) FROM generate_series(1, 100) g"
    off=$(seg_offset)
  done
  note aborted_record
  q "SELECT pg_logical_emit_message(true, 'pgward', repeat('o', 300000))" >/dev/null
  local endfile; endfile=$(walname)
  as_pg "$bin/pg_ctl" -D "$d/data" -m immediate -w stop >/dev/null
  rm "$d/data/pg_wal/$endfile"
  start
  note after_recovery
  q "INSERT INTO t VALUES (5000, 'after recovery')"

  local last
  if [ "$m" -ge 15 ]; then
    q "SELECT pg_switch_wal()" >/dev/null
    last=$(walname)
    # Most of this segment is a compressible message, so the fixture stays small.
    q "SELECT pg_logical_emit_message(false, 'pgward', repeat('w', 900000))" >/dev/null
    note wal_log
    q "CREATE DATABASE wl TEMPLATE template0 STRATEGY WAL_LOG"
  else
    last=$(walname)
  fi
  q "SELECT pg_switch_wal()" >/dev/null
  note end
  # Wait until the archiver has copied `last`.
  for _ in $(seq 1 100); do [ -f "$d/archive/$last" ] && break; sleep 0.2; done
  [ -f "$d/archive/$last" ] || { echo "make-wal-fixtures: $last was not archived" >&2; exit 1; }
  as_pg "$bin/pg_ctl" -D "$d/data" -m fast -w stop >/dev/null

  rm -rf "$out"
  mkdir -p "$out/seg" "$d/run"
  local f n
  for f in "$d"/archive/*; do
    n=$(basename "$f")
    [[ "$n" =~ ^[0-9A-F]{24}$ ]] || continue
    [[ "$n" < "$first" || "$n" > "$last" ]] && continue
    cp "$f" "$d/run/$n"
    zstd -q -19 "$f" -o "$out/seg/$n.zst"
  done
  chmod 644 "$out"/seg/*.zst
  cp "$d/workload.txt" "$out/workload.txt"
  if [ -x "$bin/pg_waldump" ]; then
    "$bin/pg_waldump" --bkp-details -p "$d/run" "$first" "$last" >"$d/waldump.txt" 2>"$out/waldump.err" || true
    zstd -q -19 "$d/waldump.txt" -o "$out/waldump.txt.zst"
  fi
  echo "pg$m: $(ls "$out/seg" | wc -l) segments $first..$last, $(du -sk "$out" | cut -f1) KiB"
}

for m in "${majors[@]}"; do make_one "$m"; done
