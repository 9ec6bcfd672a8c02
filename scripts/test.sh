#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs every PostgreSQL version the tests
# need, then runs unit and integration tests (servers run as the 'postgres' user when
# started as root).
#   scripts/test.sh                  default tier: PostgreSQL 14, 15 and 17 (what CI runs)
#   scripts/test.sh --all-versions   second tier: also 13, 16 and 18
set -euo pipefail
cd "$(dirname "$0")/.."

# A local S3 (moto) for the object-storage tests; started by the tests themselves.
bash scripts/moto.sh install

if [ "${1:-}" = "--all-versions" ]; then
    bash scripts/install-test-deps.sh all
    export PGWARD_REQUIRE_VERSIONS=13,14,15,16,17,18
    cargo test --all-targets -- --include-ignored
else
    bash scripts/install-test-deps.sh 14 17
    export PGWARD_REQUIRE_VERSIONS=14,15,17
    cargo test --all-targets
fi

# The backup/archive/restore/PITR tests that do not look inside the repository run a
# second time with the repository in a bucket of a local S3 server (moto).
PGWARD_IT_S3=1 cargo test --test it -- \
    pitr:: incremental::chain_full incremental::incremental_after incremental::growing \
    incremental::incremental_or_diff expire::killed_expire backup_restore::full_backup_under \
    operator::json_reports archive::archive_get_prefetches
