# shellcheck shell=bash
# garage-lib.sh -- Garage (a real S3 server, in Rust) for the scripts that run pgward
# against it: test-garage.sh (3 nodes, replication factor 3) and bench-s3.sh
# (S3_SERVER=garage: 1 node).  Sourced, never run.  Functions return non-zero with the
# reason on stderr; the caller decides whether that ends its run.
#
# Environment: GARAGE_VERSION (2.5.0), GARAGE_ROOT (/var/cache/pgward/garage: installed
# there once with `cargo install garage --locked`, 9-12 minutes on 2 cores).

GARAGE_VERSION=${GARAGE_VERSION:-2.5.0}
GARAGE_ROOT=${GARAGE_ROOT:-/var/cache/pgward/garage}
GARAGE=$GARAGE_ROOT/bin/garage
GARAGE_REGION=garage   # s3_region in the configuration garage_write_config writes

# `garage --version` of a crates.io build: "garage cargo:2.5.0 [features: ...]"
garage_installed() {
    [ -x "$GARAGE" ] && "$GARAGE" --version 2>/dev/null | head -1 | grep -qE "[:v ]${GARAGE_VERSION//./\\.}( |$)"
}
# garage_install: the pinned version into $GARAGE_ROOT unless it is there (one install at
# a time: a lock in $GARAGE_ROOT)
garage_install() {
    if garage_installed; then
        echo "present: $("$GARAGE" --version | head -1)"
        return 0
    fi
    mkdir -p "$GARAGE_ROOT"
    (
        flock 9
        garage_installed && exit 0
        echo "cargo install garage --locked --version $GARAGE_VERSION (takes ~9 minutes)"
        t=$SECONDS
        cargo install garage --locked --version "$GARAGE_VERSION" --root "$GARAGE_ROOT" \
            > "$GARAGE_ROOT/install.log" 2>&1 \
            || { tail -30 "$GARAGE_ROOT/install.log" >&2; echo "cargo install garage failed" >&2; exit 1; }
        echo "built in $((SECONDS - t))s"
    ) 9> "$GARAGE_ROOT/.install.lock" || return 1
    garage_installed || { echo "garage $GARAGE_VERSION is not in $GARAGE_ROOT/bin" >&2; return 1; }
}

garage_secret() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }   # BYTES -> hex

# garage_write_config FILE DIR RF RPC_SECRET S3_PORT RPC_PORT ADMIN_PORT ADMIN_TOKEN
#   [EXTRA_LINE...]: a node's configuration (metadata and data under DIR, all on
#   127.0.0.1, S3 region "garage", path-style requests); extra top-level lines appended
#   before the sections (e.g. 'compression_level = "none"')
garage_write_config() {
    local file=$1 dir=$2 rf=$3 secret=$4 s3=$5 rpc=$6 admin=$7 token=$8
    shift 8
    install -d -m 700 "$dir/meta" "$dir/data"
    {
        cat <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "lmdb"
replication_factor = $rf
consistency_mode = "consistent"
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$secret"
EOF
        [ $# -eq 0 ] || printf '%s\n' "$@"
        cat <<EOF

[s3_api]
s3_region = "$GARAGE_REGION"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin"
admin_token = "$token"
EOF
    } > "$file"
    chmod 600 "$file"
}

# garage_wait_up PID CONF LOG FROM S3_PORT: until the node started as PID (logging to LOG,
# this start's part from byte FROM) listens for S3 and answers on RPC (30 s)
garage_wait_up() {
    local pid=$1 conf=$2 log=$3 from=$4 s3=$5
    for _ in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || { tail -20 "$log" >&2; echo "garage ($conf) exited" >&2; return 1; }
        # Garage keeps running when one of its API servers cannot bind: look at its log.
        if tail -c +"$from" "$log" | grep -q "exited with error"; then
            tail -c +"$from" "$log" | grep "ERROR" >&2
            echo "garage ($conf): an API server failed" >&2; return 1
        fi
        if tail -c +"$from" "$log" | grep -qF "S3 API server listening on http://127.0.0.1:$s3" \
            && "$GARAGE" -c "$conf" node id -q > /dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    echo "garage ($conf) did not answer within 30s" >&2
    return 1
}

# garage_health CONF FIELD: a field of `garage status`'s health ("Cluster health", ...)
garage_health() { "$GARAGE" -c "$1" health 2>/dev/null | sed -n "s/^$2:[[:space:]]*//p"; }
# garage_wait_health CONF STATUS(HEALTHY/DEGRADED/UNAVAILABLE) SECONDS
garage_wait_health() {
    local conf=$1 want=$2 secs=$3
    for _ in $(seq 1 $((secs * 2))); do
        [ "$(garage_health "$conf" 'Cluster health')" = "$want" ] && return 0
        sleep 0.5
    done
    "$GARAGE" -c "$conf" health >&2 || true
    return 1
}

# garage_layout CONF CAPACITY NODE_ID...: all nodes in zone dc1 with CAPACITY each (what
# Garage balances partitions by, not a quota), applied as layout version 1; until healthy
garage_layout() {
    local conf=$1 cap=$2 ids=() id
    shift 2
    for id in "$@"; do ids+=("${id%@*}"); done
    "$GARAGE" -c "$conf" layout assign -z dc1 -c "$cap" "${ids[@]}" > /dev/null \
        || { echo "garage layout assign failed" >&2; return 1; }
    "$GARAGE" -c "$conf" layout apply --version 1 > /dev/null \
        || { echo "garage layout apply failed" >&2; return 1; }
    garage_wait_health "$conf" HEALTHY 60 || { echo "garage cluster not healthy after the layout" >&2; return 1; }
}

# garage_key_bucket CONF BUCKET KEY_NAME KEY_FILE: a key and a bucket it owns (read, write);
# sets GARAGE_KEY_ID and GARAGE_KEY_SECRET (Garage's answer kept in KEY_FILE, mode 600)
garage_key_bucket() {
    local conf=$1 bucket=$2 name=$3 file=$4
    (umask 077; "$GARAGE" -c "$conf" key create "$name" > "$file") || { echo "garage key create failed" >&2; return 1; }
    GARAGE_KEY_ID=$(sed -n 's/^Key ID:[[:space:]]*//p' "$file")
    GARAGE_KEY_SECRET=$(sed -n 's/^Secret key:[[:space:]]*//p' "$file")
    [[ $GARAGE_KEY_ID == GK* && -n $GARAGE_KEY_SECRET ]] || { cat "$file" >&2; echo "no key in garage's answer" >&2; return 1; }
    "$GARAGE" -c "$conf" bucket create "$bucket" > /dev/null || { echo "garage bucket create failed" >&2; return 1; }
    "$GARAGE" -c "$conf" bucket allow --read --write --owner "$bucket" --key "$name" > /dev/null \
        || { echo "garage bucket allow failed" >&2; return 1; }
}
