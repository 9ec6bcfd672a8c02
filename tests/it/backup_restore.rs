//! Full backups of running clusters and their restores.

use std::fs;
use std::process::Stdio;
use std::time::Duration;

use super::harness::*;
use super::setup::{kill_pgward, stderr, Source};

#[test]
fn full_backup_under_pgbench_load_restores_exact_contents_with_remapped_tablespace() {
    let src = Source::start("load", 15);
    let ts_dir = work_dir("load-ts");
    src.sql(&format!(
        "CREATE TABLESPACE ts1 LOCATION '{}'",
        ts_dir.display()
    ));
    src.sql("CREATE TABLE in_ts (id int, v text) TABLESPACE ts1; INSERT INTO in_ts SELECT g, md5(g::text) FROM generate_series(1, 5000) g");
    src.sql("CREATE UNLOGGED TABLE scratch AS SELECT g FROM generate_series(1, 1000) g");
    assert!(src
        .cluster
        .pgbench(&["-i", "-s", "3", "-q"])
        .status
        .success());

    // pgbench writes throughout the backup.
    let mut load = pg_command(
        &client_bin("pgbench"),
        &["-c", "2", "-T", "60", "-n"],
        &src.cluster.env(),
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let label = src.backup(&["--jobs", "2", "--compress", "lz4"]);
    terminate(&mut load, Duration::from_secs(10));

    // The restored cluster must match the source at a point after the backup's end.
    src.sql("SELECT pg_create_restore_point('after_load')");
    let expected = src.cluster.content_checksum("postgres");
    src.archive_current_wal();

    let info = src.info_json();
    let backup = &info["backups"][0];
    assert_eq!(backup["label"], label.as_str());
    assert_eq!(backup["type"], "full");
    assert!(backup["database_size"].as_u64().unwrap() > 40_000_000);
    assert!(backup["stored_size"].as_u64().unwrap() < backup["database_size"].as_u64().unwrap());
    assert_eq!(backup["checksum_failures"], 0);
    assert!(info["recoverable_window"]["earliest_backup"] == label.as_str());

    let ts_oid = src.sql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts1'");
    let new_ts = work_dir("load-ts-restored");
    let map = format!("{ts_oid}={}", new_ts.display());
    let restored = src.restore_and_start(
        "load-restored",
        &[
            "--tablespace-map",
            &map,
            "--target-name",
            "after_load",
            "--target-action",
            "promote",
        ],
    );
    assert_eq!(restored.content_checksum("postgres"), expected);
    assert_eq!(
        restored.psql("postgres", "SELECT count(*) FROM in_ts"),
        "5000"
    );
    assert_eq!(
        restored.psql(
            "postgres",
            "SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts1'"
        ),
        new_ts.display().to_string()
    );
    // Unlogged tables come back empty (their init fork only), as after a crash.
    assert_eq!(
        restored.psql("postgres", "SELECT count(*) FROM scratch"),
        "0"
    );

    src.ok(&["verify"]);
}

#[test]
fn killed_backup_is_never_listed_and_the_next_backup_cleans_up_and_succeeds() {
    let src = Source::start("kill", 15);
    assert!(src
        .cluster
        .pgbench(&["-i", "-s", "4", "-q"])
        .status
        .success());
    let first = src.backup(&[]);

    // Slow settings so that the kill lands while bundles are being written.
    let mut child = src.spawn_slow_backup(&[]);
    src.wait_for_bundle_in_flight();
    kill_pgward(&mut child);

    let info = src.info_json();
    let labels: Vec<&str> = info["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        vec![first.as_str()],
        "an interrupted backup must not be listed"
    );
    src.ok(&["verify"]);

    let second = src.backup(&[]);
    let left: Vec<String> = fs::read_dir(src.repo.join("main/bundles"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        left.iter()
            .all(|b| b.starts_with(&first) || b.starts_with(&second)),
        "orphans left: {left:?}"
    );
    src.ok(&["verify"]);
}

#[test]
fn stanza_belongs_to_one_cluster_and_restore_refuses_a_non_empty_directory() {
    let src = Source::start("stanza", 15);
    // Again on the same cluster: fine.
    assert!(src.ok(&["stanza-create"]).contains("already exists"));

    // Another cluster pointed at the same stanza: refused, for stanza-create and backup.
    let other = Cluster::init("stanza-other", ClusterOptions::default());
    other.start();
    let repo = src.repo.display().to_string();
    for cmd in ["stanza-create", "backup"] {
        let out = pgward(&["--repo", &repo, "--stanza", "main", cmd], &other.env());
        assert_eq!(out.status.code(), Some(4), "{cmd}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("belongs to cluster"),
            "{}",
            stderr(&out)
        );
    }

    src.backup(&[]);
    let target = work_dir("stanza-restore");
    fs::write(target.join("something"), "x").unwrap();
    chown_pg(&target);
    let err = src.fails(&["restore", "--pgdata", target.to_str().unwrap()], 4);
    assert!(err.contains("is not empty"), "{err}");
}

#[test]
fn page_checksum_failure_is_recorded_without_failing_the_backup() {
    let src = Source::start("pagesum", 15);
    src.sql(
        "CREATE TABLE victim AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 2000) g",
    );
    src.sql("CHECKPOINT");
    let path = src.sql("SELECT pg_relation_filepath('victim')");
    src.cluster.stop();
    // Damage the middle of page 1's tuple data; its header (and LSN) stays intact.
    let file = src.cluster.data.join(&path);
    let mut bytes = fs::read(&file).unwrap();
    bytes[8192 + 4000] ^= 0xff;
    fs::write(&file, &bytes).unwrap();
    src.cluster.start();

    let label = src.backup(&[]);
    let info = src.info_json();
    assert_eq!(info["backups"][0]["checksum_failures"], 1);
    // Format 4: a 48-byte envelope header, then the manifest's JSON.
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(src.repo.join(format!("main/backups/{label}.manifest"))).unwrap()[48..],
    )
    .unwrap();
    assert_eq!(manifest["checksum_failures"][0]["path"], path.as_str());
    assert_eq!(manifest["checksum_failures"][0]["blocks"][0], 1);
}

#[test]
fn restore_as_root_gives_the_files_to_the_data_directory_owner_or_refuses() {
    assert!(
        is_root(),
        "this test runs restore as root, as the test suite does"
    );
    let src = Source::start("rootrestore", 15);
    src.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    let label = src.backup(&[]);
    let expected = src.cluster.content_checksum("postgres");
    src.archive_current_wal();
    let as_root = |pgdata: &std::path::Path| {
        std::process::Command::new(pgward_bin())
            .args(&src.extra)
            .args(["--repo", &src.url, "--stanza", &src.stanza, "restore"])
            .args(["--set", &label, "--archive-mode", "off", "--pgdata"])
            .arg(pgdata)
            .envs(src.cluster.env())
            .output()
            .unwrap()
    };

    // Into a directory root owns: refused before anything is written.
    let root_owned = work_dir("rootrestore-rootdir");
    std::os::unix::fs::lchown(&root_owned, Some(0), Some(0)).unwrap();
    let refused = root_owned.join("data");
    let out = as_root(&refused);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("owned by root"), "{}", stderr(&out));
    assert!(
        !refused.exists(),
        "a refused restore must leave nothing behind"
    );

    // Into a directory the cluster's user owns: every file restored is that user's, and
    // the cluster starts.
    let data = work_dir("rootrestore-r-pgdata").join("data");
    fs::create_dir(&data).unwrap();
    chown_pg(&data);
    let out = as_root(&data);
    assert!(out.status.success(), "{}", stderr(&out));
    let (uid, _) = pg_owner().unwrap();
    fn owners(path: &std::path::Path, out: &mut Vec<(std::path::PathBuf, u32)>) {
        use std::os::unix::fs::MetadataExt;
        let meta = fs::symlink_metadata(path).unwrap();
        out.push((path.to_path_buf(), meta.uid()));
        if meta.is_dir() {
            for e in fs::read_dir(path).unwrap() {
                owners(&e.unwrap().path(), out);
            }
        }
    }
    let mut seen = Vec::new();
    owners(&data, &mut seen);
    assert!(seen.len() > 100);
    let wrong: Vec<_> = seen.iter().filter(|(_, u)| *u != uid).collect();
    assert!(
        wrong.is_empty(),
        "not owned by the cluster's user: {wrong:?}"
    );
    let restored = Cluster::from_existing("rootrestore-r", 15, data);
    restored.start();
    assert_eq!(
        restored.wait_for_recovery_end(Duration::from_secs(120)),
        RecoveryEnd::Promoted
    );
    assert_eq!(restored.content_checksum("postgres"), expected);
}
