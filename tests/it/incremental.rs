//! Differential and page-level incremental backups, chains and single-pass restore.

use std::process::Stdio;
use std::time::Duration;

use super::harness::*;
use super::setup::{kill_pgward, stderr, Source};

/// Lets the next backup see files as older than its reference's start (pgward treats
/// files created or modified within 2 s of a reference's start as changed).
fn settle() {
    std::thread::sleep(Duration::from_millis(2500));
}

fn backup_json(src: &Source, label: &str) -> serde_json::Value {
    src.info_json()["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["label"] == label)
        .cloned()
        .unwrap()
}

#[test]
fn chain_full_incr_incr_diff_incr_under_load_restores_every_backup_exactly() {
    let src = Source::start("chain", 15);
    assert!(src
        .cluster
        .pgbench(&["-i", "-s", "2", "-q"])
        .status
        .success());
    settle();

    let mut taken = Vec::new();
    for (i, kind) in ["full", "incr", "incr", "diff", "incr"].iter().enumerate() {
        let mut load = pg_command(
            &client_bin("pgbench"),
            &["-c", "2", "-T", "60", "-n"],
            &src.cluster.env(),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        std::thread::sleep(Duration::from_millis(700));
        let label = src.backup(&["--type", kind]);
        terminate(&mut load, Duration::from_secs(10));
        let point = format!("after_{i}");
        src.sql(&format!("SELECT pg_create_restore_point('{point}')"));
        taken.push((label, point, src.cluster.content_checksum("postgres")));
    }
    src.archive_current_wal();

    let types: Vec<String> = taken
        .iter()
        .map(|(l, _, _)| backup_json(&src, l)["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(types, ["full", "incr", "incr", "diff", "incr"]);
    let reference = |i: usize| {
        backup_json(&src, &taken[i].0)["reference"]
            .as_str()
            .map(str::to_string)
    };
    assert_eq!(reference(1).as_deref(), Some(taken[0].0.as_str()));
    assert_eq!(reference(2).as_deref(), Some(taken[1].0.as_str()));
    assert_eq!(
        reference(3).as_deref(),
        Some(taken[0].0.as_str()),
        "a diff builds on the last full"
    );
    assert_eq!(reference(4).as_deref(), Some(taken[3].0.as_str()));
    let chain: Vec<String> =
        serde_json::from_value(backup_json(&src, &taken[4].0)["chain"].clone()).unwrap();
    assert_eq!(
        chain,
        [taken[0].0.clone(), taken[3].0.clone(), taken[4].0.clone()]
    );

    std::thread::scope(|scope| {
        for (i, (label, point, expected)) in taken.iter().enumerate() {
            let src = &src;
            scope.spawn(move || {
                let restored = src.restore_and_start(
                    &format!("chain-r{i}"),
                    &[
                        "--set",
                        label,
                        "--target-name",
                        point,
                        "--target-action",
                        "promote",
                    ],
                );
                assert_eq!(
                    &restored.content_checksum("postgres"),
                    expected,
                    "backup {label} ({i}) restored other contents"
                );
            });
        }
    });
    src.ok(&["verify"]);
}

#[test]
fn incremental_after_contiguous_one_percent_update_stores_under_four_percent_of_the_full() {
    let src = Source::start("onepct", 15);
    assert!(src
        .cluster
        .pgbench(&["-i", "-s", "10", "-q"])
        .status
        .success());
    src.sql("CHECKPOINT");
    settle();
    let full = src.backup(&[]);
    let full_stored = backup_json(&src, &full)["stored_size"].as_u64().unwrap();
    settle();

    // 1% of pgbench_accounts, contiguous.
    src.sql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= 10000");
    let incr = src.backup(&["--type", "incr"]);
    let incr_stored = backup_json(&src, &incr)["stored_size"].as_u64().unwrap();
    let ratio = incr_stored as f64 / full_stored as f64;
    eprintln!(
        "full stored {full_stored} B, incremental after a 1% update {incr_stored} B ({:.2}%)",
        ratio * 100.0
    );
    assert!(
        ratio <= 0.04,
        "incremental stored {:.2}% of the full",
        ratio * 100.0
    );
    settle();

    // Nothing changed (not even hint bits: nothing reads the table in between).
    let idle = src.backup(&["--type", "incr"]);
    let idle_stored = backup_json(&src, &idle)["stored_size"].as_u64().unwrap();
    eprintln!("incremental with no change {idle_stored} B");
    assert!(
        idle_stored * 200 < full_stored,
        "an incremental with no change stored {idle_stored} B"
    );
    let expected = src.cluster.content_checksum("postgres");

    let restored = src.restore_and_start(
        "onepct-r",
        &[
            "--set",
            &incr,
            "--target",
            "immediate",
            "--target-action",
            "promote",
        ],
    );
    assert_eq!(restored.content_checksum("postgres"), expected);
}

#[test]
fn growing_shrinking_rewritten_files_and_databases_and_tablespaces_restore_exactly() {
    let src = Source::start("shapes", 15);
    let ts_old = work_dir("shapes-ts-old");
    let ts_new = work_dir("shapes-ts-new");
    src.sql(&format!(
        "CREATE TABLESPACE ts_old LOCATION '{}'",
        ts_old.display()
    ));
    src.sql("CREATE DATABASE keep_db; CREATE DATABASE drop_db");
    src.sql(
        "CREATE TABLE grows AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g;
         CREATE TABLE shrinks AS SELECT g AS id, repeat('s', 200) AS v FROM generate_series(1, 40000) g;
         ALTER TABLE shrinks SET (autovacuum_enabled = off);
         CREATE TABLE truncated AS SELECT g AS id FROM generate_series(1, 20000) g;
         CREATE TABLE vacfull AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g;
         CREATE TABLE clustered AS SELECT (random() * 100000)::int AS id, md5(g::text) AS v FROM generate_series(1, 20000) g;
         CREATE INDEX clustered_id ON clustered (id);
         CREATE TABLE in_old_ts TABLESPACE ts_old AS SELECT g AS id FROM generate_series(1, 5000) g;",
    );
    src.cluster.psql(
        "keep_db",
        "CREATE TABLE k AS SELECT g AS id FROM generate_series(1, 1000) g",
    );
    src.sql("CHECKPOINT");
    settle();
    src.backup(&[]);
    settle();

    src.sql(
        "INSERT INTO grows SELECT g, md5(g::text) FROM generate_series(20001, 60000) g;
         DELETE FROM shrinks WHERE id > 5000;
         VACUUM shrinks;
         TRUNCATE truncated; INSERT INTO truncated SELECT g FROM generate_series(1, 10) g;
         DELETE FROM vacfull WHERE id % 2 = 0; VACUUM FULL vacfull;
         CLUSTER clustered USING clustered_id;
         DROP TABLE in_old_ts; DROP TABLESPACE ts_old;",
    );
    src.sql(&format!(
        "CREATE TABLESPACE ts_new LOCATION '{}'",
        ts_new.display()
    ));
    src.sql("CREATE TABLE in_new_ts TABLESPACE ts_new AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 3000) g");
    src.sql("DROP DATABASE drop_db; CREATE DATABASE copied_db TEMPLATE keep_db STRATEGY FILE_COPY");
    src.cluster
        .psql("keep_db", "UPDATE k SET id = id + 1 WHERE id <= 10");
    let shrunk_pages: i64 = src
        .sql("SELECT pg_relation_size('shrinks') / 8192")
        .parse()
        .unwrap();
    assert!(
        shrunk_pages < 300,
        "VACUUM did not truncate shrinks ({shrunk_pages} pages)"
    );
    let incr = src.backup(&["--type", "incr"]);
    src.sql("SELECT pg_create_restore_point('shapes_done')");
    let expected: Vec<(String, String)> = ["postgres", "keep_db", "copied_db"]
        .iter()
        .map(|db| (db.to_string(), src.cluster.content_checksum(db)))
        .collect();
    src.archive_current_wal();

    let oid = src.sql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts_new'");
    let moved = work_dir("shapes-ts-moved");
    let map = format!("{oid}={}", moved.display());
    let restored = src.restore_and_start(
        "shapes-r",
        &[
            "--set",
            &incr,
            "--tablespace-map",
            &map,
            "--target-name",
            "shapes_done",
            "--target-action",
            "promote",
        ],
    );
    for (db, checksum) in &expected {
        assert_eq!(&restored.content_checksum(db), checksum, "database {db}");
    }
    assert_eq!(
        restored.psql(
            "postgres",
            "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database"
        ),
        "copied_db,keep_db,postgres,template0,template1"
    );
    assert_eq!(
        restored.psql(
            "postgres",
            "SELECT string_agg(spcname, ',' ORDER BY spcname) FROM pg_tablespace"
        ),
        "pg_default,pg_global,ts_new"
    );
    assert_eq!(
        restored
            .psql("postgres", "SELECT pg_relation_size('shrinks') / 8192")
            .parse::<i64>()
            .unwrap(),
        shrunk_pages
    );
    src.ok(&["verify"]);
}

#[test]
fn incremental_or_diff_without_a_full_becomes_a_full_and_max_chain_forces_one() {
    let src = Source::start("fallback", 15);
    let out = src.pgward(&["--output", "json", "backup", "--type", "incr"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("taking a full backup instead of incr"),
        "{}",
        stderr(&out)
    );
    let first: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(first["type"], "full");
    let second = src.backup(&["--type", "incr", "--max-chain", "2"]);
    let third = src.backup(&["--type", "incr", "--max-chain", "2"]);
    let fourth = src.backup(&["--type", "incr", "--max-chain", "2"]);
    let kinds: Vec<String> = [&second, &third, &fourth]
        .iter()
        .map(|l| backup_json(&src, l)["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds,
        ["incr", "incr", "full"],
        "--max-chain 2 allows two dependent backups"
    );
}

#[test]
fn a_second_backup_or_expire_while_one_runs_fails_at_once_naming_the_holder() {
    let src = Source::start("lock", 15);
    assert!(src
        .cluster
        .pgbench(&["-i", "-s", "4", "-q"])
        .status
        .success());
    let mut first = src.spawn_slow_backup(&[]);
    src.wait_for_bundle_in_flight();
    for args in [&["backup"][..], &["expire", "--retain-full", "1"][..]] {
        let started = std::time::Instant::now();
        let err = src.fails(args, 8);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the lock must fail at once"
        );
        assert!(
            err.contains("is locked") && err.contains("pid ") && err.contains("on host"),
            "{err}"
        );
    }
    assert!(
        first.wait().unwrap().success(),
        "the first backup must finish"
    );

    // A lock left by a killed process is taken over.
    let mut killed = src.spawn_slow_backup(&[]);
    src.wait_for_bundle_in_flight();
    kill_pgward(&mut killed);
    src.backup(&[]);
}

#[test]
fn killed_incremental_leaves_a_valid_repository_and_the_next_one_succeeds() {
    let src = Source::start("killincr", 15);
    assert!(src
        .cluster
        .pgbench(&["-i", "-s", "4", "-q"])
        .status
        .success());
    settle();
    let full = src.backup(&[]);
    settle();
    src.sql("UPDATE pgbench_accounts SET abalance = abalance + 1");
    let mut child = src.spawn_slow_backup(&["--type", "incr"]);
    src.wait_for_bundle_in_flight();
    kill_pgward(&mut child);
    assert_eq!(src.labels(), std::slice::from_ref(&full));
    src.ok(&["verify"]);
    let incr = src.backup(&["--type", "incr"]);
    assert_eq!(backup_json(&src, &incr)["reference"], full.as_str());
    src.ok(&["verify"]);
}

#[test]
fn verify_names_every_backup_a_missing_bundle_breaks() {
    let src = Source::start("broken", 15);
    src.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 50000) g");
    settle();
    let full = src.backup(&["--jobs", "1"]);
    settle();
    src.sql("UPDATE t SET g = g + 1 WHERE g < 100");
    let incr = src.backup(&["--type", "incr"]);
    src.ok(&["verify"]);
    // Remove the full's bundle: both backups lose bytes they need.
    let bundles = src.repo.join("main/bundles");
    for e in std::fs::read_dir(&bundles).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with(&full) {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    let out = src.pgward(&["verify"]);
    assert_eq!(out.status.code(), Some(5));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains(&format!("backups {full}, {incr} cannot be restored")),
        "{report}"
    );
    // Restore: corrupt (5), naming the bundle, never "not found" (1: no such backup).
    let dir = work_dir("broken-r");
    let err = src.fails(
        &["restore", "--set", &incr, "--pgdata", dir.to_str().unwrap()],
        5,
    );
    assert!(
        err.contains("pgward: error [corrupt]: ")
            && err.contains(&format!("named by backup {full} is missing")),
        "{err}"
    );
}

#[test]
fn info_marks_an_incremental_whose_reference_backup_is_gone() {
    let src = Source::start("incrorphan", 15);
    if src.url.contains("://") {
        return; // removes a manifest from the local repository
    }
    let full = src.backup(&[]);
    let incr = src.backup(&["--type", "incr"]);
    std::fs::remove_file(
        src.repo
            .join(&src.stanza)
            .join("backups")
            .join(format!("{full}.manifest")),
    )
    .unwrap();

    let problems = backup_json(&src, &incr)["problems"].clone();
    let problems: Vec<&str> = problems
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(
        problems,
        [format!(
            "builds on backup {full}, which is damaged or missing"
        )],
    );
    let text = src.ok(&["info"]);
    let incr_line = text
        .lines()
        .position(|l| l.contains(&incr))
        .expect("the incremental is listed");
    assert!(
        text.lines()
            .nth(incr_line + 1)
            .is_some_and(|l| l.contains(&format!("PROBLEM: builds on backup {full}"))),
        "{text}"
    );
}
