//! `restore --delta` into existing data directories, and `--type standby`: a diverged copy
//! comes back equal to a fresh restore while writing little; running and foreign clusters
//! are refused; a killed delta restore is finished by a rerun; a diverged old primary is
//! rebuilt as a standby of the new one.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::harness::*;
use super::setup::{kill_pgward, Source};

/// What a delta restore leaves while under way (`restore::delta::MARKER`).
const MARKER: &str = "pgward.delta-restore";

/// Every entry below `root`: its kind, mode and content. Tablespace links are followed
/// (where they point differs from restore to restore), other links are not.
fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy();
            let rel = format!("{prefix}{name}");
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_symlink() && prefix == "pg_tblspc/" {
                out.insert(rel.clone(), "tablespace link".into());
                walk(&path, &format!("{rel}/"), out);
            } else if meta.is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                out.insert(rel, format!("link {}", target.display()));
            } else if meta.is_dir() {
                out.insert(rel.clone(), format!("dir {mode:o}"));
                walk(&path, &format!("{rel}/"), out);
            } else {
                let content = std::fs::read(&path).unwrap();
                let hash = format!("{:x}", fnv1a(&content));
                out.insert(rel, format!("file {mode:o} {} {hash}", content.len()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, "", &mut out);
    // Names where each restore put its tablespaces.
    out.remove("tablespace_map");
    out
}

/// A 64-bit FNV-1a: enough to tell files apart in a comparison that also checks sizes.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

/// Panics naming every path where the two trees differ.
fn assert_same_tree(delta: &Path, fresh: &Path) {
    let (a, b) = (tree(delta), tree(fresh));
    let differing: Vec<String> = a
        .keys()
        .chain(b.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k}: delta {:?}, fresh {:?}", a.get(k), b.get(k)))
        .collect();
    assert!(
        differing.is_empty(),
        "the delta-restored directory differs from a fresh restore:\n{}",
        differing.join("\n")
    );
}

/// `restore --delta --archive-mode off` into `dir` with `extra`; the JSON report.
fn delta_restore(src: &Source, dir: &Path, extra: &[&str]) -> serde_json::Value {
    let dir_s = dir.display().to_string();
    let mut args = vec![
        "--output",
        "json",
        "restore",
        "--delta",
        "--pgdata",
        &dir_s,
        "--archive-mode",
        "off",
    ];
    args.extend_from_slice(extra);
    let out = src.ok(&args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("restore --output json: {e}: {out}"))
}

/// A fresh restore of `label` into a new directory, not started: what a delta restore
/// must equal.
fn fresh_restore(src: &Source, name: &str, label: &str, extra: &[&str]) -> PathBuf {
    let dir = work_dir(name).join("data");
    let dir_s = dir.display().to_string();
    let mut args = vec![
        "restore",
        "--pgdata",
        &dir_s,
        "--archive-mode",
        "off",
        "--set",
        label,
    ];
    args.extend_from_slice(extra);
    src.ok(&args);
    dir
}

/// A source with pgbench data at `scale`, a full backup (and with `incremental`, an
/// incremental after a change, whose files are then slices of the full's frames), and a
/// few rows written after it and archived; returns the source, the label of the last
/// backup and the content the restores must show.
fn backed_up_source(
    name: &str,
    scale: &str,
    incremental: bool,
    before_backup: &dyn Fn(&Source),
) -> (Source, String, String) {
    let src = Source::start(name, 15);
    assert!(src
        .cluster
        .pgbench(&["-i", "-s", scale, "-q"])
        .status
        .success());
    before_backup(&src);
    src.sql("CREATE TABLE kept (id int); INSERT INTO kept SELECT generate_series(1, 1000)");
    src.sql("CREATE TABLE dropped_later (id int); INSERT INTO dropped_later SELECT generate_series(1, 1000)");
    let mut label = src.backup(&[]);
    if incremental {
        src.sql("UPDATE pgbench_accounts SET abalance = abalance - 1 WHERE aid % 50 = 0");
        label = src.backup(&["--type", "incr"]);
    }
    src.sql("INSERT INTO kept SELECT generate_series(1001, 1100)");
    let expected = src.cluster.content_checksum("postgres");
    src.archive_current_wal();
    (src, label, expected)
}

/// Diverges a started copy: 1% of the accounts updated, a table dropped, a database
/// created (new directories and files), a checkpoint; then stops it cleanly.
fn diverge(copy: &Cluster, scale: u32) {
    let rows = scale * 1000;
    copy.psql(
        "postgres",
        &format!("UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid <= {rows}"),
    );
    copy.psql("postgres", "DROP TABLE dropped_later");
    copy.psql("postgres", "CREATE DATABASE appeared_later");
    copy.psql("postgres", "CHECKPOINT");
    copy.stop();
}

/// Starts a restored data directory as a cluster beside the source and waits until it
/// has recovered and promoted.
fn start_restored(name: &str, data: PathBuf) -> Cluster {
    let c = Cluster::from_existing(name, 15, data);
    c.start();
    assert_eq!(
        c.wait_for_recovery_end(Duration::from_secs(120)),
        RecoveryEnd::Promoted,
        "{}",
        c.log_tail(30)
    );
    c
}

#[test]
fn delta_restore_of_a_promoted_and_diverged_copy_equals_a_fresh_restore_and_writes_little() {
    let in_tablespace = |src: &Source| {
        let ts = work_dir("delta-div-ts");
        src.sql(&format!(
            "CREATE TABLESPACE ts1 LOCATION '{}'",
            ts.display()
        ));
        src.sql("CREATE TABLE in_ts TABLESPACE ts1 AS SELECT g, md5(g::text) v FROM generate_series(1, 20000) g");
    };
    let (src, label, expected) = backed_up_source("delta-div", "4", false, &in_tablespace);
    let ts_oid = src.sql("SELECT oid FROM pg_tablespace WHERE spcname = 'ts1'");
    let copy_ts = work_dir("delta-div-copy-ts");
    let copy_map = format!("{ts_oid}={}", copy_ts.display());
    // The copy recovers, promotes onto a timeline of its own, and then diverges.
    let copy = src.restore_and_start("delta-div-copy", &["--tablespace-map", &copy_map]);
    copy.psql("postgres", "UPDATE in_ts SET v = 'diverged' WHERE g <= 200");
    diverge(&copy, 4);
    let data = copy.data.clone();
    // Another cluster's directory in the same tablespace location is not this restore's.
    let neighbour = copy_ts.join("PG_99_199901011");
    mkdir_pg(&neighbour);
    std::fs::write(neighbour.join("keep"), b"not ours").unwrap();
    let database_size = src.info_json()["backups"][0]["database_size"]
        .as_u64()
        .unwrap();

    let report = delta_restore(
        &src,
        &data,
        &["--set", &label, "--tablespace-map", &copy_map],
    );
    let delta = &report["delta"];
    eprintln!("delta restore of a {database_size} B cluster: {delta}");
    let written = delta["written"].as_u64().unwrap();
    assert!(written > 0, "{delta}");
    assert!(
        written * 10 < database_size,
        "a 1% divergence rewrote {written} of {database_size} bytes"
    );
    assert!(
        delta["read"].as_u64().unwrap() > database_size / 2,
        "{delta}"
    );
    assert!(delta["files_kept"].as_u64().unwrap() > 0, "{delta}");
    assert!(
        delta["files_removed"].as_u64().unwrap() > 100,
        "the new database's files: {delta}"
    );
    assert!(!data.join(MARKER).exists());
    assert_eq!(std::fs::read(neighbour.join("keep")).unwrap(), b"not ours");
    std::fs::remove_dir_all(&neighbour).unwrap();

    let fresh_map = format!("{ts_oid}={}", work_dir("delta-div-fresh-ts").display());
    let fresh = fresh_restore(
        &src,
        "delta-div-fresh",
        &label,
        &["--tablespace-map", &fresh_map],
    );
    assert_same_tree(&data, &fresh);

    // Again over what is now an exact restore: every file is kept but
    // postgresql.auto.conf, which the recovery settings were appended to.
    let again = delta_restore(
        &src,
        &data,
        &["--set", &label, "--tablespace-map", &copy_map],
    );
    let delta = &again["delta"];
    assert_eq!(delta["files_rewritten"], 1, "{delta}");
    assert!(delta["written"].as_u64().unwrap() < 4096, "{delta}");
    drop(copy);
    let restored = start_restored("delta-div-restored", data);
    assert_eq!(restored.content_checksum("postgres"), expected);
    assert_eq!(
        restored.psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname = 'appeared_later'"
        ),
        "0"
    );
    assert_eq!(
        restored.psql(
            "postgres",
            "SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts1'"
        ),
        copy_ts.display().to_string()
    );
}

#[test]
fn delta_restore_refuses_a_running_cluster_a_foreign_one_and_a_stranger_directory() {
    let (src, label, expected) = backed_up_source("delta-refuse", "1", false, &|_| {});
    let data_s = src.cluster.data.display().to_string();
    let err = src.fails(
        &["restore", "--delta", "--pgdata", &data_s, "--set", &label],
        4,
    );
    assert!(err.contains("belongs to a running server"), "{err}");
    assert!(src.cluster.data.join("global/pg_control").is_file());

    let foreign = Cluster::init("delta-refuse-foreign", ClusterOptions::default());
    let foreign_s = foreign.data.display().to_string();
    let err = src.fails(
        &[
            "restore", "--delta", "--pgdata", &foreign_s, "--set", &label,
        ],
        4,
    );
    assert!(err.contains("is a data directory of cluster"), "{err}");
    assert!(err.contains("--force"), "the hint names --force: {err}");
    assert!(
        foreign.data.join("global/pg_control").is_file(),
        "a refused delta restore changes nothing"
    );

    let err = src.fails(
        &[
            "restore", "--delta", "--pgdata", &foreign_s, "--type", "standby",
        ],
        3,
    );
    assert!(err.contains("--primary-conninfo"), "{err}");

    let stranger = work_dir("delta-refuse-stranger");
    std::fs::write(stranger.join("notes.txt"), b"mine").unwrap();
    chown_pg(&stranger);
    let stranger_s = stranger.display().to_string();
    let err = src.fails(
        &["restore", "--delta", "--force", "--pgdata", &stranger_s],
        4,
    );
    assert!(err.contains("not a PostgreSQL data directory"), "{err}");
    assert_eq!(std::fs::read(stranger.join("notes.txt")).unwrap(), b"mine");

    let report = delta_restore(&src, &foreign.data, &["--set", &label, "--force"]);
    assert!(report["delta"]["written"].as_u64().unwrap() > 0);
    assert_same_tree(
        &foreign.data,
        &fresh_restore(&src, "delta-refuse-fresh", &label, &[]),
    );
    // Now of the backup's cluster: no --force needed, and the text report says what it did.
    let text = src.ok(&[
        "restore",
        "--delta",
        "--pgdata",
        &foreign_s,
        "--archive-mode",
        "off",
        "--set",
        &label,
    ]);
    assert!(
        text.contains(" by delta; start the cluster to recover"),
        "{text}"
    );
    // postgresql.auto.conf loses the recovery settings appended to it (a truncation,
    // nothing to write); backup_label and recovery.signal go, to be written again.
    assert!(
        text.contains(" files kept, 1 rewritten, 2 removed; read ") && text.contains("wrote 0 B"),
        "{text}"
    );
    // `foreign` keeps its directory (which holds the data directory) until the end.
    let restored = start_restored("delta-refuse-restored", foreign.data.clone());
    assert_eq!(restored.content_checksum("postgres"), expected);
}

#[test]
fn killed_delta_restore_cannot_start_and_a_rerun_finishes_it_exactly() {
    let (src, label, expected) = backed_up_source("delta-kill", "2", true, &|_| {});
    let copy = src.restore_and_start("delta-kill-copy", &[]);
    diverge(&copy, 2);
    let data = copy.data.clone();
    let data_s = data.display().to_string();

    let halt = work_dir("delta-kill-halt").join("halted");
    let mut child = src.spawn(
        &[
            "restore",
            "--delta",
            "--pgdata",
            &data_s,
            "--archive-mode",
            "off",
            "--set",
            &label,
            "--jobs",
            "1",
        ],
        &[(
            "PGWARD_TEST_DELTA_HALT".to_string(),
            halt.display().to_string(),
        )],
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while !halt.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the delta restore ended before its halt point"
        );
        assert!(Instant::now() < deadline, "the delta restore never halted");
        std::thread::sleep(Duration::from_millis(20));
    }
    kill_pgward(&mut child);
    assert!(
        !data.join("global/pg_control").exists(),
        "half restored, the directory must not be startable"
    );
    assert!(data.join(MARKER).is_file());
    let refused = copy
        .try_start()
        .expect_err("a half-restored directory started");
    assert!(refused.contains("pg_control"), "{refused}");

    let report = delta_restore(&src, &data, &["--set", &label]);
    assert!(report["delta"]["files_kept"].as_u64().unwrap() > 0);
    assert_same_tree(&data, &fresh_restore(&src, "delta-kill-fresh", &label, &[]));
    drop(copy);
    let restored = start_restored("delta-kill-restored", data);
    assert_eq!(restored.content_checksum("postgres"), expected);
}

#[test]
fn diverged_old_primary_rebuilt_by_delta_as_a_standby_streams_from_the_new_primary() {
    let (src, _, _) = backed_up_source("delta-standby", "1", false, &|_| {});
    // Failover: a copy becomes the new primary (archiving into the same stanza, on a
    // timeline of its own), and is backed up; the old primary writes on, diverging.
    let primary = src.restore_and_start_archiving("delta-standby-new", &[], true);
    primary.psql("postgres", "CREATE TABLE after_failover (v text)");
    let repo_args = ["--repo", src.url.as_str(), "--stanza", "main"];
    let mut backup = repo_args.to_vec();
    backup.extend(["--output", "json", "backup"]);
    let out = assert_success(
        &pgward(&backup, &primary.env()),
        "backup of the new primary",
    );
    let label = serde_json::from_str::<serde_json::Value>(&out).unwrap()["label"]
        .as_str()
        .unwrap()
        .to_string();
    src.sql("CREATE TABLE only_on_the_old_primary AS SELECT generate_series(1, 10000) g");
    src.sql("UPDATE pgbench_accounts SET abalance = 1 WHERE aid <= 1000");
    src.cluster.stop();

    let conninfo = format!(
        "host={} port={} user=postgres application_name=rebuilt",
        primary.socket_dir.display(),
        primary.port
    );
    let report = delta_restore(
        &src,
        &src.cluster.data,
        &[
            "--set",
            &label,
            "--type",
            "standby",
            "--primary-conninfo",
            &conninfo,
        ],
    );
    assert_eq!(report["type"], "standby");
    let data = src.cluster.data.clone();
    assert!(data.join("standby.signal").is_file());
    assert!(!data.join("recovery.signal").exists());
    let auto = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains("primary_conninfo = '"), "{auto}");
    assert!(auto.contains("restore_command = '"), "{auto}");

    let standby = Cluster::from_existing("delta-standby-rebuilt", 15, data);
    standby.start();
    primary.psql(
        "postgres",
        "INSERT INTO after_failover VALUES ('written after the rebuild')",
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let seen = standby.try_psql(
            "postgres",
            "SELECT count(*) FROM after_failover WHERE v = 'written after the rebuild'",
        );
        if seen.as_deref() == Ok("1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rebuilt standby never showed the row ({seen:?}):\n{}",
            standby.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(standby.psql("postgres", "SELECT pg_is_in_recovery()"), "t");
    assert_eq!(
        primary.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'rebuilt'"
        ),
        "1",
        "the standby streams from the new primary"
    );
    assert_eq!(
        standby.psql(
            "postgres",
            "SELECT count(*) FROM pg_class WHERE relname = 'only_on_the_old_primary'"
        ),
        "0"
    );
}

/// Lines of postgresql.auto.conf that set something (comments left out).
fn active_settings(data: &Path) -> Vec<String> {
    std::fs::read_to_string(data.join("postgresql.auto.conf"))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// A restore to a target leaves its settings in postgresql.auto.conf after recovery (as
/// pgBackRest's do: PostgreSQL reads them only with a signal file); a delta restore over
/// that directory without a target must not stop at the old one.
#[test]
fn delta_restore_over_a_restore_to_a_target_keeps_no_stale_target() {
    let src = Source::start("delta-target", 15);
    src.sql("CREATE TABLE t (step text)");
    src.sql("INSERT INTO t VALUES ('1 before the backup')");
    let label = src.backup(&[]);
    src.sql("INSERT INTO t VALUES ('2 before p1')");
    src.sql("SELECT pg_create_restore_point('p1')");
    src.sql("INSERT INTO t VALUES ('3 after p1')");
    src.archive_current_wal();
    let rows = "SELECT string_agg(step, ',' ORDER BY step) FROM t";

    let copy = src.restore_and_start(
        "delta-target-copy",
        &["--target-name", "p1", "--target-action", "promote"],
    );
    assert_eq!(
        copy.psql("postgres", rows),
        "1 before the backup,2 before p1"
    );
    let settings = active_settings(&copy.data);
    assert!(
        settings.contains(&"recovery_target_name = 'p1'".to_string()),
        "{settings:?}"
    );
    copy.stop();
    let data = copy.data.clone();

    delta_restore(&src, &data, &["--set", &label]);
    let settings = active_settings(&data);
    assert!(
        settings.iter().all(|l| !l.starts_with("recovery_target")),
        "{settings:?}"
    );
    assert_eq!(
        settings
            .iter()
            .filter(|l| l.starts_with("restore_command"))
            .count(),
        1,
        "{settings:?}"
    );
    drop(copy);
    let restored = start_restored("delta-target-restored", data);
    assert_eq!(
        restored.psql("postgres", rows),
        "1 before the backup,2 before p1,3 after p1"
    );
}
