//! Expire never removes what a running restore reads; a killed restore holds nothing.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use super::harness::{chown_pg, work_dir, Cluster, RecoveryEnd};
use super::setup::{kill_pgward, Source};

/// Starts pgward with `args` and the test pause point `hook` (an environment variable
/// naming a file the command creates, then waits until it is removed); returns once
/// it waits there, with that file.
fn spawn_paused(src: &Source, name: &str, args: &[&str], hook: &str) -> (Child, PathBuf) {
    let marker_dir = work_dir(&format!("{name}-pause"));
    chown_pg(&marker_dir);
    let marker = marker_dir.join("paused");
    let mut child = src.spawn(args, &[(hook.to_string(), marker.display().to_string())]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !marker.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "pgward {} ended before its pause point",
            args.join(" ")
        );
        assert!(
            Instant::now() < deadline,
            "pgward {} never reached its pause point",
            args.join(" ")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, marker)
}

/// Starts `restore --set label --target immediate` (the backup's own contents) into a
/// fresh directory, paused before it reads any bundle (`PGWARD_TEST_RESTORE_PAUSE`).
fn paused_restore(src: &Source, name: &str, label: &str) -> (Child, PathBuf, PathBuf) {
    let pgdata = work_dir(&format!("{name}-pgdata")).join("data");
    let pgdata_s = pgdata.display().to_string();
    let args = [
        "restore",
        "--set",
        label,
        "--target",
        "immediate",
        "--target-action",
        "promote",
        "--pgdata",
        &pgdata_s,
        "--archive-mode",
        "off",
    ];
    let (child, marker) = spawn_paused(src, name, &args, "PGWARD_TEST_RESTORE_PAUSE");
    (child, marker, pgdata)
}

/// Lets a paused command go on and waits for it to succeed.
fn resume(mut child: Child, marker: &Path, what: &str) {
    std::fs::remove_file(marker).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{what} failed: {status}");
}

/// Starts a restored copy and returns its row count of `t`.
fn start_and_count(name: &str, pgdata: PathBuf) -> String {
    let restored = Cluster::from_existing(name, 15, pgdata);
    restored.start();
    assert_eq!(
        restored.wait_for_recovery_end(Duration::from_secs(120)),
        RecoveryEnd::Promoted,
        "{}",
        restored.log_tail(30)
    );
    restored.psql("postgres", "SELECT count(*) FROM t")
}

fn bundles(src: &Source) -> Vec<String> {
    std::fs::read_dir(src.repo.join("main/bundles"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn hold_files(src: &Source) -> Vec<String> {
    std::fs::read_dir(src.repo.join("main/lock/holds"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn expire_keeps_the_chain_a_running_restore_reads_and_ignores_a_killed_ones_hold() {
    let src = Source::start("holds", 15);
    let local = !src.url.contains("://");
    src.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    let f1 = src.backup(&[]);
    src.sql("INSERT INTO t SELECT g FROM generate_series(1001, 2000) g");
    let i1 = src.backup(&["--type", "incr"]);
    src.sql("INSERT INTO t SELECT g FROM generate_series(2001, 3000) g");
    let f2 = src.backup(&[]);
    src.archive_current_wal();

    // A restore killed mid-way leaves a hold no one keeps: expire would remove its chain.
    let (mut killed, _, _) = paused_restore(&src, "holds-killed", &i1);
    kill_pgward(&mut killed);
    let plan = src.ok(&["expire", "--retain-full", "1", "--dry-run"]);
    assert!(
        plan.contains(&format!("would expire backup {i1}"))
            && plan.contains(&format!("would expire backup {f1}"))
            && !plan.contains("while restore"),
        "{plan}"
    );

    // A restore under way keeps its whole chain, and expire names it.
    let (restore, marker, pgdata) = paused_restore(&src, "holds-live", &i1);
    let plan = src.ok(&["expire", "--retain-full", "1", "--dry-run"]);
    for label in [&i1, &f1] {
        assert!(
            plan.contains(&format!("keep backup {label} while restore (pid ")),
            "{plan}"
        );
    }
    let info = src.ok(&["info"]);
    assert!(
        info.contains("held by restore (pid ") && info.contains(&format!(": {f1}, {i1}\n")),
        "{info}"
    );
    let out = src.ok(&["--output", "json", "expire", "--retain-full", "1"]);
    let json: serde_json::Value = serde_json::from_str(&out).expect("expire json");
    let held: Vec<&str> = json["held_backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["label"].as_str().unwrap())
        .collect();
    assert_eq!(held, [i1.as_str(), f1.as_str()], "{json}");
    let holder = &json["held_backups"][0]["held_by"][0];
    assert_eq!(holder["command"], "restore", "{json}");
    assert!(
        holder["pid"].as_u64().is_some()
            && holder["host"].is_string()
            && holder["started"].is_string()
    );
    assert!(json["backups"].as_array().unwrap().is_empty(), "{json}");
    assert_eq!(src.labels(), [f1.clone(), i1.clone(), f2.clone()]);
    if local {
        // The killed restore's hold went with that expire; the live one stays.
        assert_eq!(hold_files(&src).len(), 1, "{:?}", hold_files(&src));
    }

    // The restore goes on, completes, and the copy starts with i1's rows.
    resume(restore, &marker, "restore");
    assert_eq!(start_and_count("holds-restored", pgdata), "2000");

    // Once it has ended, nothing holds them.
    if local {
        assert!(hold_files(&src).is_empty(), "{:?}", hold_files(&src));
    }
    let plan = src.ok(&["expire", "--retain-full", "1"]);
    assert!(!plan.contains("while restore"), "{plan}");
    assert_eq!(src.labels(), std::slice::from_ref(&f2));
    if local {
        let bundles = bundles(&src);
        assert!(bundles.iter().all(|b| b.starts_with(&f2)), "{bundles:?}");
    }
    src.ok(&["verify"]);
}

#[test]
fn expire_that_planned_before_a_restore_began_keeps_the_bundles_and_wal_it_reads() {
    let src = Source::start("holdrace", 15);
    let local = !src.url.contains("://");
    src.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    let f1 = src.backup(&[]);
    src.sql("INSERT INTO t SELECT g FROM generate_series(1001, 2000) g");
    let f2 = src.backup(&[]);
    src.archive_current_wal();

    // Expire plans f1's removal with no hold in sight, then waits; a restore of f1 then
    // writes its hold and reads f1's manifest before expire removes it.
    let (expire, expire_marker) = spawn_paused(
        &src,
        "holdrace-expire",
        &["expire", "--retain-full", "1"],
        "PGWARD_TEST_EXPIRE_PAUSE",
    );
    let (restore, restore_marker, pgdata) = paused_restore(&src, "holdrace-restore", &f1);
    resume(expire, &expire_marker, "expire");
    assert_eq!(
        src.labels(),
        std::slice::from_ref(&f2),
        "f1's manifest is gone"
    );

    // Backups keep running beside the restore, and leave the bundles it reads alone
    // (orphans now, but held).
    let i2 = src.backup(&["--type", "incr"]);
    if local {
        let bundles = bundles(&src);
        assert!(bundles.iter().any(|b| b.starts_with(&f1)), "{bundles:?}");
    }

    // The restore finishes from the bundles and WAL that expire kept for it.
    resume(restore, &restore_marker, "restore");
    assert_eq!(start_and_count("holdrace-restored", pgdata), "1000");

    // Once it has ended, f1's bundles are orphans like any: the next backup removes them.
    let i3 = src.backup(&["--type", "incr"]);
    if local {
        let bundles = bundles(&src);
        assert!(
            bundles
                .iter()
                .all(|b| [&f2, &i2, &i3].iter().any(|l| b.starts_with(l.as_str()))),
            "{bundles:?}"
        );
    }
    src.ok(&["verify"]);
}
