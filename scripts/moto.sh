#!/usr/bin/env bash
# A local S3 (moto's server mode) for pgward's S3 storage tests.
#
#   scripts/moto.sh install         # venv with moto[server] (idempotent; fast when present)
#   scripts/moto.sh start PORT DIR  # installs if needed, runs moto_server on 127.0.0.1:PORT
#                                   # in the background (pid file and log in DIR), waits
#                                   # until it answers
#   scripts/moto.sh stop DIR        # stops the server started with that DIR
#
# With PGWARD_MOTO_PARENT=PID, `start` also leaves a watcher that stops the server once
# that process is gone (tests have no teardown hook; this keeps no server behind).
#
# The venv lives in $PGWARD_MOTO_VENV (default /var/cache/pgward/moto-venv). A marker
# naming the pinned version is written last, so an interrupted install is redone and
# bumping MOTO_VERSION rebuilds the venv. moto keeps its state in memory: every start is
# an empty S3 that accepts any credentials.
set -euo pipefail

MOTO_VERSION=5.2.5
VENV=${PGWARD_MOTO_VENV:-/var/cache/pgward/moto-venv}
MARKER="moto[server]==$MOTO_VERSION"

install() {
  if [ "$(cat "$VENV/.pgward-moto" 2>/dev/null)" = "$MARKER" ] && [ -x "$VENV/bin/moto_server" ]; then
    return
  fi
  local start=$SECONDS parent
  parent=$(dirname "$VENV")
  mkdir -p "$parent"
  # Concurrent test processes may all ask for the venv: one installs, the others wait.
  exec 9>"$parent/.moto-venv.lock"
  flock 9
  if [ "$(cat "$VENV/.pgward-moto" 2>/dev/null)" = "$MARKER" ] && [ -x "$VENV/bin/moto_server" ]; then
    exec 9>&-; return
  fi
  # A venv records its own path in its scripts, so it is built where it will live.
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "$MARKER" >&2
  echo "$MARKER" > "$VENV/.pgward-moto"
  exec 9>&-
  echo "moto.sh: installed $MARKER into $VENV in $((SECONDS - start))s" >&2
}

start() { # port, dir
  local port=$1 dir=$2 pid i
  install
  mkdir -p "$dir"
  if [ -f "$dir/moto.pid" ] && kill -0 "$(cat "$dir/moto.pid")" 2>/dev/null; then
    echo "moto.sh: already running (pid $(cat "$dir/moto.pid"))" >&2; exit 1
  fi
  # setsid: the server gets its own session, so a test's process group ending does not
  # take it down mid-test and `stop` can end exactly its group.
  setsid "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$dir/moto.log" 2>&1 < /dev/null &
  pid=$!
  echo "$pid" > "$dir/moto.pid"
  if [ -n "${PGWARD_MOTO_PARENT:-}" ]; then
    setsid bash -c 'while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 1; done
                    kill "$2" 2>/dev/null' moto-watch "$PGWARD_MOTO_PARENT" "$pid" \
      >/dev/null 2>&1 < /dev/null &
  fi
  for i in $(seq 1 300); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "moto.sh: moto_server exited; its log:" >&2; cat "$dir/moto.log" >&2; exit 1
    fi
    if python3 -c 'import sys, urllib.request
urllib.request.urlopen("http://127.0.0.1:%s/moto-api/" % sys.argv[1], timeout=1)' "$port" 2>/dev/null; then
      echo "moto.sh: moto_server $MOTO_VERSION on 127.0.0.1:$port (pid $pid)" >&2
      return
    fi
    sleep 0.1
  done
  echo "moto.sh: moto_server did not answer on port $port within 30s" >&2
  kill "$pid" 2>/dev/null || true
  exit 1
}

stop() { # dir
  local dir=$1 pid
  [ -f "$dir/moto.pid" ] || return 0
  pid=$(cat "$dir/moto.pid")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/moto.pid"
}

case "${1:-}" in
  install) install ;;
  start) [ $# = 3 ] || { echo "usage: $0 start PORT DIR" >&2; exit 2; }; start "$2" "$3" ;;
  stop) [ $# = 2 ] || { echo "usage: $0 stop DIR" >&2; exit 2; }; stop "$2" ;;
  *) echo "usage: $0 install | start PORT DIR | stop DIR" >&2; exit 2 ;;
esac
