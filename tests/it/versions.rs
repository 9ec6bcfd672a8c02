//! The backup start/stop calls differ by version: pg_start_backup/pg_stop_backup before
//! 15, pg_backup_start/pg_backup_stop from 15. Each is exercised on a real server.

use super::harness::pg_bin;
use super::setup::Source;

fn backup_and_restore_round_trip(major: u32) {
    if pg_bin(major).is_none() {
        let required = std::env::var("PGWARD_REQUIRE_VERSIONS").unwrap_or_default();
        assert!(
            !required.split(',').any(|v| v.trim() == major.to_string()),
            "PostgreSQL {major} is required but not installed: run scripts/install-test-deps.sh"
        );
        panic!("PostgreSQL {major} is not installed: run scripts/install-test-deps.sh {major}, or run this test with the second tier");
    }
    let src = Source::start(&format!("v{major}"), major);
    assert!(src
        .cluster
        .pgbench(&["-i", "-s", "1", "-q"])
        .status
        .success());
    src.sql("UPDATE pgbench_accounts SET abalance = aid % 97");
    let expected = src.cluster.content_checksum("postgres");
    let label = src.backup(&["--jobs", "2"]);
    let info = src.info_json();
    assert_eq!(info["pg_major"], major);
    assert_eq!(info["backups"][0]["label"], label.as_str());
    let restored = src.restore_and_start(
        &format!("v{major}-r"),
        &["--target", "immediate", "--target-action", "promote"],
    );
    assert_eq!(restored.content_checksum("postgres"), expected);
    src.ok(&["verify"]);
}

#[test]
fn start_stop_backup_api_of_postgres_14() {
    backup_and_restore_round_trip(14);
}

#[test]
fn backup_start_stop_api_of_postgres_17() {
    backup_and_restore_round_trip(17);
}

#[test]
#[ignore = "second tier: scripts/test.sh --all-versions"]
fn start_stop_backup_api_of_postgres_13() {
    backup_and_restore_round_trip(13);
}

#[test]
#[ignore = "second tier: scripts/test.sh --all-versions"]
fn backup_start_stop_api_of_postgres_16() {
    backup_and_restore_round_trip(16);
}

#[test]
#[ignore = "second tier: scripts/test.sh --all-versions"]
fn backup_start_stop_api_of_postgres_18() {
    backup_and_restore_round_trip(18);
}
