#!/usr/bin/env bash
# A local Azure Blob Storage (Azurite, from npm) for pgward's Azure storage tests.
#
#   scripts/azurite.sh install         # npm install of azurite (idempotent; fast when present)
#   scripts/azurite.sh start PORT DIR  # installs if needed, runs azurite-blob on 127.0.0.1:PORT
#                                      # in the background (pid file and log in DIR), waits
#                                      # until it answers
#   scripts/azurite.sh stop DIR        # stops the server started with that DIR
#
# With PGWARD_AZURITE_PARENT=PID, `start` also leaves a watcher that stops the server once
# that process is gone (tests have no teardown hook; this keeps no server behind).
#
# The package lives in $PGWARD_AZURITE_DIR (default /var/cache/pgward/azurite-VERSION).
# A marker naming the pinned version is written last, so an interrupted install is
# redone. Azurite keeps its state in memory: every start is
# an empty account devstoreaccount1 with Azurite's well-known key.
set -euo pipefail

AZURITE_VERSION=3.35.0 # the newest whose declared engines take Node 20 (3.36 on wants 21+)
# One directory per version: checkouts that pin different versions (branches, main) may
# run tests on one machine at once, and must not reinstall over each other's server.
PREFIX=${PGWARD_AZURITE_DIR:-/var/cache/pgward/azurite-$AZURITE_VERSION}
MARKER="azurite@$AZURITE_VERSION"
BIN=$PREFIX/node_modules/.bin/azurite-blob

install() {
  if [ "$(cat "$PREFIX/.pgward-azurite" 2>/dev/null)" = "$MARKER" ] && [ -x "$BIN" ]; then
    return
  fi
  local start=$SECONDS parent
  parent=$(dirname "$PREFIX")
  mkdir -p "$parent"
  # Concurrent test processes may all ask for it: one installs, the others wait.
  exec 9>"$PREFIX.lock"
  flock 9
  if [ "$(cat "$PREFIX/.pgward-azurite" 2>/dev/null)" = "$MARKER" ] && [ -x "$BIN" ]; then
    exec 9>&-; return
  fi
  command -v npm >/dev/null || { echo "azurite.sh: npm is missing (apt-get install npm)" >&2; exit 1; }
  rm -rf "$PREFIX"
  mkdir -p "$PREFIX"
  # --ignore-scripts: nothing of the package runs as root at install time. Node 20
  # draws engine warnings from some of its dependencies; the blob service runs on it.
  npm install --prefix "$PREFIX" --no-audit --no-fund --ignore-scripts --loglevel=error \
    "$MARKER" >&2
  echo "$MARKER" > "$PREFIX/.pgward-azurite"
  exec 9>&-
  echo "azurite.sh: installed $MARKER into $PREFIX in $((SECONDS - start))s" >&2
}

start() { # port, dir
  local port=$1 dir=$2 pid i
  install
  mkdir -p "$dir"
  if [ -f "$dir/azurite.pid" ] && kill -0 "$(cat "$dir/azurite.pid")" 2>/dev/null; then
    echo "azurite.sh: already running (pid $(cat "$dir/azurite.pid"))" >&2; exit 1
  fi
  # setsid: the server gets its own session, so a test's process group ending does not
  # take it down mid-test and `stop` can end exactly its group.
  # In memory, run from DIR so that nothing it might write lands elsewhere.
  (cd "$dir" && exec setsid "$BIN" --inMemoryPersistence --blobHost 127.0.0.1 \
    --blobPort "$port" --skipApiVersionCheck --loose >"$dir/azurite.log" 2>&1 < /dev/null) &
  pid=$!
  echo "$pid" > "$dir/azurite.pid"
  if [ -n "${PGWARD_AZURITE_PARENT:-}" ]; then
    setsid bash -c 'while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 1; done
                    kill "$2" 2>/dev/null' azurite-watch "$PGWARD_AZURITE_PARENT" "$pid" \
      >/dev/null 2>&1 < /dev/null &
  fi
  for i in $(seq 1 600); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "azurite.sh: azurite-blob exited; its log:" >&2; cat "$dir/azurite.log" >&2; exit 1
    fi
    # Any HTTP answer will do (an unsigned request gets 403).
    if python3 -c 'import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen("http://127.0.0.1:%s/devstoreaccount1?comp=list" % sys.argv[1], timeout=1)
except urllib.error.HTTPError:
    pass' "$port" 2>/dev/null; then
      echo "azurite.sh: azurite-blob $AZURITE_VERSION on 127.0.0.1:$port (pid $pid)" >&2
      return
    fi
    sleep 0.1
  done
  echo "azurite.sh: azurite-blob did not answer on port $port within 60s" >&2
  kill "$pid" 2>/dev/null || true
  exit 1
}

stop() { # dir
  local dir=$1 pid
  [ -f "$dir/azurite.pid" ] || return 0
  pid=$(cat "$dir/azurite.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/azurite.pid"
}

case "${1:-}" in
  install) install ;;
  start) [ $# = 3 ] || { echo "usage: $0 start PORT DIR" >&2; exit 2; }; start "$2" "$3" ;;
  stop) [ $# = 2 ] || { echo "usage: $0 stop DIR" >&2; exit 2; }; stop "$2" ;;
  *) echo "usage: $0 install | start PORT DIR | stop DIR" >&2; exit 2 ;;
esac
