#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs every PostgreSQL version the tests
# need, then runs unit and integration tests (servers run as the 'postgres' user when
# started as root).
#   scripts/test.sh                  default tier: PostgreSQL 14, 15 and 17 (what CI runs)
#   scripts/test.sh --all-versions   second tier: also 13, 16 and 18
set -euo pipefail
cd "$(dirname "$0")/.."

# Local object stores for the object-storage tests (moto for S3, Azurite for Azure, a
# GCS emulator); started by the tests themselves.
bash scripts/moto.sh install
bash scripts/azurite.sh install
bash scripts/gcs-emulator.sh install

if [ "${1:-}" = "--all-versions" ]; then
    bash scripts/install-test-deps.sh all
    export PGWARD_REQUIRE_VERSIONS=13,14,15,16,17,18
    cargo test --all-targets -- --include-ignored
else
    bash scripts/install-test-deps.sh 14 17
    export PGWARD_REQUIRE_VERSIONS=14,15,17
    cargo test --all-targets
fi
# The doctests (not in --all-targets) hold the compile_fail proofs that nothing writes to
# an encrypted stanza without unlocking it.
cargo test --doc

# The tests listed in tests/it/s3-pass.txt run again with the repository in a bucket
# of each object store's local server: moto (S3), Azurite (Azure), fake-gcs-server
# (GCS). A listed test that no longer exists is an error.
mapfile -t store_pass < <(grep -v '^#' tests/it/s3-pass.txt | grep .)
existing=$(cargo test --test it -- --list 2>/dev/null | sed -n 's/: test$//p')
for t in "${store_pass[@]}"; do
    if ! grep -qxF "$t" <<<"$existing"; then
        echo "test.sh: tests/it/s3-pass.txt names $t, which is not a test" >&2
        exit 1
    fi
done
for store in s3 azure gcs; do
    PGWARD_IT_STORE=$store cargo test --test it -- --exact "${store_pass[@]}"
done
