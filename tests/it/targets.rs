//! Recovery targets are checked before anything is written (issue 11): a time or LSN the
//! archive cannot reach, a time without an offset, a restore point name PostgreSQL could
//! not have written are refused, with the recoverable window in the hint, and leave no
//! directory behind. `--target-unchecked` skips the reach check.

use std::path::PathBuf;
use std::process::Output;

use super::harness::work_dir;
use super::setup::{stderr, Source};

#[test]
fn restore_refuses_unreachable_or_malformed_targets_before_creating_anything() {
    let src = Source::start("targets", 15);
    let ts_dir = work_dir("targets-ts");
    src.sql(&format!(
        "CREATE TABLESPACE ts1 LOCATION '{}'",
        ts_dir.display()
    ));
    src.sql("CREATE TABLE t (id int) TABLESPACE ts1");
    src.sql("INSERT INTO t SELECT generate_series(1, 100)");
    let before_backup = src.sql("SELECT now()");
    let label = src.backup(&[]);
    src.sql("INSERT INTO t SELECT generate_series(101, 200)");
    let inside = src.sql("SELECT now()");
    src.archive_current_wal();

    let info = src.info_json();
    let stop_lsn = info["backups"][0]["stop_lsn"].as_str().unwrap().to_string();
    // One definition of what the archive can reach: the hint's end is info's.
    let end_lsn = info["recoverable_window"]["latest_lsn"]
        .as_str()
        .unwrap()
        .to_string();
    let oid = src.sql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts1'");

    // Restores into a fresh data directory and tablespace location (neither exists yet).
    let restore = |name: &str, ts: Option<&PathBuf>, args: &[&str]| -> (PathBuf, PathBuf, Output) {
        let dir = work_dir(name).join("data");
        let ts = ts
            .cloned()
            .unwrap_or_else(|| work_dir(&format!("{name}-ts")).join("ts"));
        let map = format!("{oid}={}", ts.display());
        let dir_s = dir.display().to_string();
        let mut full = vec![
            "restore",
            "--pgdata",
            &dir_s,
            "--archive-mode",
            "off",
            "--tablespace-map",
            &map,
        ];
        full.extend_from_slice(args);
        let out = src.pgward(&full);
        (dir, ts, out)
    };
    let refused = |name: &str, args: &[&str], code: i32, says: &[&str]| {
        let (dir, ts, out) = restore(name, None, args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        for s in says {
            assert!(err.contains(s), "{args:?}: {s:?} not in:\n{err}");
        }
        assert!(!dir.exists(), "{args:?} left {} behind", dir.display());
        assert!(!ts.exists(), "{args:?} left {} behind", ts.display());
    };
    let window = format!("along timeline 1 is from {stop_lsn} (");
    let window_end = format!("to {end_lsn} on timeline 1 (archived ");

    // Today's demo of the bug: a time years ahead restored with exit 0.
    refused(
        "tg-future",
        &["--target-time", "2030-01-01 00:00:00+00"],
        1,
        &[
            "after the last reachable WAL was archived",
            "HINT:",
            &window,
            &window_end,
            "--target-unchecked",
        ],
    );
    refused(
        "tg-early",
        &["--set", &label, "--target-time", &before_backup],
        1,
        &["is before the end of backup", &window, &window_end],
    );
    refused(
        "tg-lsn-late",
        &["--target-lsn", "FF/0"],
        1,
        &[
            &format!("past the end of the archived WAL ({end_lsn})"),
            &window,
        ],
    );
    refused(
        "tg-lsn-early",
        &["--set", &label, "--target-lsn", "0/1"],
        1,
        &["is before the end of backup", &window],
    );
    refused(
        "tg-timeline",
        &["--target-time", &inside, "--target-timeline", "7"],
        1,
        &["timeline 7 has no history file (00000007.history)"],
    );
    refused(
        "tg-naive",
        &["--target-time", "2026-11-21 12:00:00"],
        3,
        &[
            "has no UTC offset",
            "HINT: use PostgreSQL's format with an offset",
        ],
    );
    refused(
        "tg-newline",
        &["--target-name", "before\nmigration"],
        3,
        &["control character '\\n'"],
    );
    refused(
        "tg-quote",
        &["--target-name", "it's"],
        3,
        &["holds a quote (')"],
    );

    // A failure after the data directory was made (a tablespace location in use) takes
    // the directory away again.
    let busy = work_dir("tg-busy-ts");
    std::fs::write(busy.join("someone-elses"), "x").unwrap();
    let (dir, _, out) = restore("tg-busy", Some(&busy), &[]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("is not empty"));
    assert!(!dir.exists(), "left {} behind", dir.display());
    assert!(busy.join("someone-elses").exists());

    // --target-unchecked: the operator knows more WAL will arrive.
    let (dir, _, out) = restore(
        "tg-unchecked",
        None,
        &[
            "--target-time",
            "2030-01-01 00:00:00+00",
            "--target-unchecked",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let conf = std::fs::read_to_string(dir.join("postgresql.auto.conf")).unwrap();
    assert!(
        conf.contains("recovery_target_time = '2030-01-01 00:00:00.000000+00:00'"),
        "{conf}"
    );
    let (_, _, out) = restore(
        "tg-unchecked-lsn",
        None,
        &["--target-lsn", "FF/0", "--target-unchecked"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // The syntax is still checked.
    refused(
        "tg-unchecked-naive",
        &["--target-time", "2030-01-01 00:00:00", "--target-unchecked"],
        3,
        &["has no UTC offset"],
    );

    // A time inside the window (PostgreSQL's own format, as `SELECT now()` prints it).
    let (_, _, out) = restore("tg-inside", None, &["--target-time", &inside]);
    assert!(out.status.success(), "{}", stderr(&out));
}
