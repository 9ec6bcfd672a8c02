//! Expire never removes what a running restore reads; a killed restore holds nothing.

use std::process::Child;
use std::time::{Duration, Instant};

use super::harness::{chown_pg, work_dir, Cluster, RecoveryEnd};
use super::setup::{kill_pgward, Source};

/// Starts `restore --set label --target immediate` (the backup's own contents) into a
/// fresh directory, paused before it reads any
/// bundle (`PGWARD_TEST_RESTORE_PAUSE`); returns once it is paused there.
fn paused_restore(
    src: &Source,
    name: &str,
    label: &str,
) -> (Child, std::path::PathBuf, std::path::PathBuf) {
    let marker_dir = work_dir(&format!("{name}-pause"));
    chown_pg(&marker_dir);
    let marker = marker_dir.join("paused");
    let pgdata = work_dir(&format!("{name}-pgdata")).join("data");
    let pause = [(
        "PGWARD_TEST_RESTORE_PAUSE".to_string(),
        marker.display().to_string(),
    )];
    let pgdata_s = pgdata.display().to_string();
    let mut child = src.spawn(
        &[
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
        ],
        &pause,
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while !marker.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "restore ended before reading its bundles"
        );
        assert!(
            Instant::now() < deadline,
            "restore never reached its bundles"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, marker, pgdata)
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
    let (mut restore, marker, pgdata) = paused_restore(&src, "holds-live", &i1);
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
    std::fs::remove_file(&marker).unwrap();
    let status = restore.wait().unwrap();
    assert!(status.success(), "restore failed: {status}");
    let restored = Cluster::from_existing("holds-restored", 15, pgdata.clone());
    restored.start();
    assert_eq!(
        restored.wait_for_recovery_end(Duration::from_secs(120)),
        RecoveryEnd::Promoted,
        "{}",
        restored.log_tail(30)
    );
    assert_eq!(restored.psql("postgres", "SELECT count(*) FROM t"), "2000");
    drop(restored);

    // Once it has ended, nothing holds them.
    if local {
        assert!(hold_files(&src).is_empty(), "{:?}", hold_files(&src));
    }
    let plan = src.ok(&["expire", "--retain-full", "1"]);
    assert!(!plan.contains("while restore"), "{plan}");
    assert_eq!(src.labels(), std::slice::from_ref(&f2));
    if local {
        let bundles: Vec<String> = std::fs::read_dir(src.repo.join("main/bundles"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(bundles.iter().all(|b| b.starts_with(&f2)), "{bundles:?}");
    }
    src.ok(&["verify"]);
}
