//! Backups taken from a streaming standby: restored, they equal the primary as of their
//! end; incrementals build on backups of either node; a missing WAL switch, a lagging
//! standby and a promotion during the backup end in clear errors and no manifest.

use std::path::Path;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use super::harness::*;
use super::setup::{stderr, Source};

/// A hot standby of `src`'s cluster, made with `pg_basebackup -R -X stream` and started on
/// its own port; returns once the primary reports it streaming.
fn start_standby(src: &Source, name: &str) -> Cluster {
    start_standby_of(&src.cluster, name)
}

/// A hot standby streaming from `primary` (itself a standby, for a cascade).
fn start_standby_of(primary: &Cluster, name: &str) -> Cluster {
    let data = work_dir(&format!("{name}-pgdata")).join("data");
    // pg_basebackup refuses servers newer than itself: the server's own when it has one.
    let own = primary.bin.join("pg_basebackup");
    let basebackup = if own.is_file() {
        own
    } else {
        client_bin("pg_basebackup")
    };
    let out = run_as_pg(
        &basebackup,
        &[
            "-D",
            &data.display().to_string(),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
        ],
        &primary.env(),
    );
    assert_success(&out, "pg_basebackup -R");
    // -R writes the options of pg_basebackup's libpq, which the server's walreceiver may
    // not know (17's writes sslnegotiation): the later, plainer setting wins.
    let auto_conf = data.join("postgresql.auto.conf");
    let mut conf = std::fs::read_to_string(&auto_conf).unwrap();
    conf.push_str(&format!(
        "primary_conninfo = 'host={} port={} user=postgres'\n",
        primary.socket_dir.display(),
        primary.port
    ));
    std::fs::write(&auto_conf, conf).unwrap();
    let standby = Cluster::from_existing(name, primary.major, data);
    standby.start();
    let deadline = Instant::now() + Duration::from_secs(60);
    let streaming = "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'";
    while primary.psql("postgres", streaming) != "1" {
        assert!(
            Instant::now() < deadline,
            "the standby never streamed:\n{}",
            standby.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    standby
}

/// Waits until the standby has replayed everything the primary has written so far.
fn wait_for_replay(src: &Source, standby: &Cluster) {
    let lsn = src.sql("SELECT pg_current_wal_lsn()");
    let deadline = Instant::now() + Duration::from_secs(60);
    while standby.psql(
        "postgres",
        &format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'"),
    ) != "t"
    {
        assert!(
            Instant::now() < deadline,
            "the standby did not replay up to {lsn}:\n{}",
            standby.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// pgward against the standby (its connection environment and PGDATA), with the
/// source's repository, stanza and options.
fn on_standby(src: &Source, standby: &Cluster, args: &[&str]) -> Output {
    let mut full: Vec<&str> = src.extra.iter().map(String::as_str).collect();
    full.extend(["--repo", &src.url, "--stanza", &src.stanza]);
    full.extend_from_slice(args);
    pgward(&full, &standby.env())
}

/// `--primary-host`/`--primary-port` naming the source's cluster.
fn primary_options(src: &Source) -> Vec<String> {
    vec![
        "--primary-host".into(),
        src.cluster.socket_dir.display().to_string(),
        "--primary-port".into(),
        src.cluster.port.to_string(),
    ]
}

/// A backup from the standby (switching WAL on the primary); returns its label.
fn standby_backup(src: &Source, standby: &Cluster, extra: &[&str]) -> String {
    let primary = primary_options(src);
    let mut args: Vec<&str> = vec!["--output", "json"];
    args.extend(primary.iter().map(String::as_str));
    args.push("backup");
    args.extend_from_slice(extra);
    let out = assert_success(&on_standby(src, standby, &args), "backup from the standby");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("backup --output json");
    assert_eq!(v["from_standby"], true, "{v}");
    v["label"].as_str().unwrap().to_string()
}

fn pgbench_load(src: &Source, seconds: u32) {
    let out = src
        .cluster
        .pgbench(&["-c", "2", "-T", &seconds.to_string(), "-n"]);
    assert_success(&out, "pgbench");
}

/// Restores `label` to its consistency point, checks its rows against `expected` and
/// runs pg_amcheck on it.
fn restore_and_compare(src: &Source, name: &str, label: &str, expected: &str) {
    let restored = src.restore_and_start(
        name,
        &[
            "--set",
            label,
            "--target",
            "immediate",
            "--target-action",
            "promote",
        ],
    );
    assert_eq!(
        restored.content_checksum("postgres"),
        expected,
        "backup {label} restored other contents than the primary had at its end"
    );
    // pg_amcheck needs amcheck's verify_heapam, which 14 added.
    if restored.major < 14 {
        return;
    }
    let out = run_as_pg(
        &client_bin("pg_amcheck"),
        &["--install-missing", "--heapallindexed", "-d", "postgres"],
        &restored.env(),
    );
    assert_success(&out, &format!("pg_amcheck of the restore of {label}"));
}

fn backup_json(src: &Source, label: &str) -> serde_json::Value {
    src.info_json()["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["label"] == label)
        .cloned()
        .unwrap_or_else(|| panic!("no backup {label} in info"))
}

/// Where each backup of a test is taken: (type, on the standby).
const ON_EITHER_NODE: [(&str, bool); 4] = [
    ("full", true),
    ("incr", true),
    // An incremental on the primary that builds on the standby's backup ...
    ("incr", false),
    // ... and one on the standby that builds on the primary's.
    ("incr", true),
];

/// Each step: load on the primary, pause, let the standby catch up, hash the primary, back
/// up; then each backup is restored and compared with its hash.
fn standby_backups_restore_the_primary_as_of_their_end(major: u32, steps: &[(&str, bool)]) {
    let name = format!("sb{major}-{}", steps.len());
    let src = Source::start(&name, major);
    assert_success(&src.cluster.pgbench(&["-i", "-s", "2", "-q"]), "pgbench -i");
    let standby = start_standby(&src, &format!("{name}-st"));

    let mut taken: Vec<(String, String)> = Vec::new();
    for (i, &(kind, on_standby)) in steps.iter().enumerate() {
        pgbench_load(&src, 3);
        src.sql(&format!(
            "CREATE TABLE step_{i} AS SELECT g FROM generate_series(1, 1000) g"
        ));
        wait_for_replay(&src, &standby);
        let expected = src.cluster.content_checksum("postgres");
        let label = if on_standby {
            standby_backup(&src, &standby, &["--type", kind])
        } else {
            src.backup(&["--type", kind])
        };
        taken.push((label, expected));
    }

    // Where each was taken, as info shows it (socket directory and port), and what each
    // builds on: the previous backup, whichever node it was taken on.
    let node = |c: &Cluster| format!("{}:{}", c.socket_dir.display(), c.port);
    let expected: Vec<(bool, String, Option<&str>)> = steps
        .iter()
        .enumerate()
        .map(|(i, &(_, on_standby))| {
            let on = if on_standby { &standby } else { &src.cluster };
            let reference = i.checked_sub(1).map(|p| taken[p].0.as_str());
            (on_standby, node(on), reference)
        })
        .collect();
    let info = src.info_json();
    let summary: Vec<(bool, String, Option<&str>)> = info["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["from_standby"].as_bool().unwrap(),
                b["node"].as_str().unwrap().to_string(),
                b["reference"].as_str(),
            )
        })
        .collect();
    assert_eq!(summary, expected, "{info:#}");
    let text = src.ok(&["info"]);
    assert!(
        text.contains(&format!("from standby {}", node(&standby))),
        "info text names the standby:\n{text}"
    );

    std::thread::scope(|scope| {
        for (i, (label, expected)) in taken.iter().enumerate() {
            let src = &src;
            let name = &name;
            scope.spawn(move || restore_and_compare(src, &format!("{name}-r{i}"), label, expected));
        }
    });
    src.ok(&["verify"]);
}

#[test]
fn standby_backups_full_and_incremental_on_either_node_restore_the_primary_as_of_their_end() {
    standby_backups_restore_the_primary_as_of_their_end(15, &ON_EITHER_NODE);
}

/// 13 and 14 start and stop backups with pg_start_backup/pg_stop_backup, in recovery too.
#[test]
fn standby_full_backup_on_postgres_14_restores_the_primary_as_of_its_end() {
    standby_backups_restore_the_primary_as_of_their_end(14, &[("full", true)]);
}

#[test]
fn standby_full_backup_on_postgres_17_restores_the_primary_as_of_its_end() {
    standby_backups_restore_the_primary_as_of_their_end(17, &[("full", true)]);
}

#[test]
#[ignore = "second tier: scripts/test.sh --all-versions"]
fn standby_backups_on_either_node_restore_the_primary_as_of_their_end_on_postgres_14() {
    standby_backups_restore_the_primary_as_of_their_end(14, &ON_EITHER_NODE);
}

#[test]
#[ignore = "second tier: scripts/test.sh --all-versions"]
fn standby_backups_on_either_node_restore_the_primary_as_of_their_end_on_postgres_17() {
    standby_backups_restore_the_primary_as_of_their_end(17, &ON_EITHER_NODE);
}

#[test]
#[ignore = "second tier: scripts/test.sh --all-versions"]
fn standby_backups_on_either_node_restore_the_primary_as_of_their_end_on_postgres_13() {
    standby_backups_restore_the_primary_as_of_their_end(13, &ON_EITHER_NODE);
}

#[test]
#[ignore = "second tier: scripts/test.sh --all-versions"]
fn standby_backups_on_either_node_restore_the_primary_as_of_their_end_on_postgres_18() {
    standby_backups_restore_the_primary_as_of_their_end(18, &ON_EITHER_NODE);
}

#[test]
fn standby_backup_without_the_primary_names_the_unarchived_segment_and_both_remedies() {
    let src = Source::start_with(
        "sbwait",
        ClusterOptions {
            // Nothing finishes the segment by itself within the test.
            extra_conf: vec!["archive_timeout = '1h'".into()],
            ..Default::default()
        },
    );
    let standby = start_standby(&src, "sbwait-st");
    src.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    wait_for_replay(&src, &standby);

    let out = on_standby(&src, &standby, &["backup", "--archive-timeout", "3"]);
    assert_eq!(out.status.code(), Some(9), "a timeout: {}", stderr(&out));
    let err = stderr(&out);
    let segment = src.sql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    for needed in [
        format!("WAL segment {segment} did not reach the archive within 3s"),
        format!(
            "taken from standby {}:{}",
            standby.socket_dir.display(),
            standby.port
        ),
        "--primary-host/--primary-port".to_string(),
        "archive_timeout on the primary".to_string(),
        "archive_mode = always".to_string(),
    ] {
        assert!(err.contains(&needed), "{needed:?} missing from:\n{err}");
    }
    assert!(src.labels().is_empty(), "the failed backup left a manifest");

    // A wrong primary fails before anything is copied: here the standby itself.
    let sock = standby.socket_dir.display().to_string();
    let port = standby.port.to_string();
    let wrong = ["--primary-host", &sock, "--primary-port", &port, "backup"];
    let out = on_standby(&src, &standby, &wrong);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is in recovery too: pgward cannot switch WAL there"),
        "{}",
        stderr(&out)
    );

    // The first remedy: with the primary's connection the same backup succeeds at once.
    let label = standby_backup(&src, &standby, &["--archive-timeout", "30"]);
    assert_eq!(backup_json(&src, &label)["from_standby"], true);
}

#[test]
fn standby_behind_its_reference_is_waited_for_and_a_lag_is_reported() {
    let src = Source::start("sblag", 15);
    assert_success(&src.cluster.pgbench(&["-i", "-s", "1", "-q"]), "pgbench -i");
    let standby = start_standby(&src, "sblag-st");
    wait_for_replay(&src, &standby);
    standby.psql("postgres", "SELECT pg_wal_replay_pause()");
    pgbench_load(&src, 2);

    // A paused standby is behind the primary: the backup says where it really ends.
    let mut args: Vec<String> = primary_options(&src);
    args.extend(["backup".into(), "--standby-lag-warning".into(), "0".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = on_standby(&src, &standby, &args);
    assert_success(&out, "backup of a lagging standby");
    let err = stderr(&out);
    assert!(
        err.contains("behind the primary when the backup stopped: the backup ends at the standby's replay position"),
        "{err}"
    );

    // A reference taken on the primary since is ahead of the paused standby.
    let reference = src.backup(&[]);
    let mut args: Vec<String> = primary_options(&src);
    args.extend(["backup", "--type", "incr", "--archive-timeout", "2"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = on_standby(&src, &standby, &args);
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "the backup it would build on, {reference}, ends at"
        )) && err.contains("replay is paused"),
        "{err}"
    );
    assert_eq!(
        src.labels().len(),
        2,
        "the refused incremental left a manifest"
    );

    // Once replay goes on, the same incremental builds on the primary's backup.
    standby.psql("postgres", "SELECT pg_wal_replay_resume()");
    wait_for_replay(&src, &standby);
    let expected = src.cluster.content_checksum("postgres");
    let label = standby_backup(&src, &standby, &["--type", "incr"]);
    assert_eq!(backup_json(&src, &label)["reference"], reference.as_str());
    restore_and_compare(&src, "sblag-r", &label, &expected);
}

/// Starts a backup of the standby that pauses after the start call, until `marker` is
/// removed.
fn spawn_paused_backup(src: &Source, standby: &Cluster, marker: &Path, extra: &[&str]) -> Child {
    let mut args: Vec<String> = src.extra.clone();
    args.extend(["--repo", &src.url, "--stanza", &src.stanza].map(String::from));
    args.extend(primary_options(src));
    args.push("backup".into());
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut env = standby.env();
    env.push((
        "PGWARD_TEST_BACKUP_PAUSE".into(),
        marker.display().to_string(),
    ));
    pg_command(&pgward_bin(), &args, &env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_for_start(marker: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the backup never started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn standby_backup_whose_primary_is_gone_at_the_end_warns_and_names_the_unarchived_segment() {
    let src = Source::start("sbgone", 15);
    let standby = start_standby(&src, "sbgone-st");
    src.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    wait_for_replay(&src, &standby);

    let marker = work_dir("sbgone-hook").join("started");
    let child = spawn_paused_backup(&src, &standby, &marker, &["--archive-timeout", "3"]);
    wait_for_start(&marker);
    // Immediate: a fast shutdown would finish the segment itself (archiving is on).
    src.cluster.stop_immediate();
    std::fs::remove_file(&marker).unwrap();

    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(9), "{err}");
    let primary = format!("{}:{}", src.cluster.socket_dir.display(), src.cluster.port);
    for needed in [
        format!("could not switch WAL on the primary {primary}"),
        "did not reach the archive within 3s; this backup was taken from standby".to_string(),
        format!("(switching WAL on the primary {primary} failed, see the warning above)"),
    ] {
        assert!(err.contains(&needed), "{needed:?} missing from:\n{err}");
    }
    src.cluster.start();
    assert!(src.labels().is_empty(), "the failed backup left a manifest");
}

#[test]
fn standby_promoted_during_the_backup_fails_clearly_and_records_nothing() {
    let src = Source::start("sbpromo", 15);
    assert_success(&src.cluster.pgbench(&["-i", "-s", "1", "-q"]), "pgbench -i");
    let standby = start_standby(&src, "sbpromo-st");
    wait_for_replay(&src, &standby);

    let marker = work_dir("sbpromo-hook").join("started");
    let child = spawn_paused_backup(&src, &standby, &marker, &[]);
    wait_for_start(&marker);
    standby.psql("postgres", "SELECT pg_promote(true, 60)");
    assert_eq!(standby.psql("postgres", "SELECT pg_is_in_recovery()"), "f");
    std::fs::remove_file(&marker).unwrap();

    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(
        err.contains(&format!(
            "standby {}:{} was promoted during the backup, which is therefore not usable",
            standby.socket_dir.display(),
            standby.port
        )) && err.contains("nothing was recorded; take the backup again"),
        "{err}"
    );
    assert!(src.labels().is_empty(), "the failed backup left a manifest");
    // What it copied is only bundles no manifest names, which the next backup removes.
    src.backup(&[]);
    src.ok(&["verify"]);
}

#[test]
fn standby_that_follows_a_new_timeline_during_the_backup_fails_clearly_and_records_nothing() {
    let src = Source::start("sbtli", 15);
    src.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    let upstream = start_standby(&src, "sbtli-up");
    let cascaded = start_standby_of(&upstream, "sbtli-cas");
    wait_for_replay(&src, &upstream);

    let marker = work_dir("sbtli-hook").join("started");
    let mut args: Vec<String> = src.extra.clone();
    args.extend(["--repo", &src.url, "--stanza", &src.stanza, "backup"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut env = cascaded.env();
    env.push((
        "PGWARD_TEST_BACKUP_PAUSE".into(),
        marker.display().to_string(),
    ));
    let child = pg_command(&pgward_bin(), &args, &env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_start(&marker);

    // A failover above the cascaded standby: it follows its upstream onto timeline 2, and
    // once a restartpoint on the new timeline has moved its minimum recovery point there,
    // the backup's stop lies on another timeline than its start.
    upstream.psql("postgres", "SELECT pg_promote(true, 60)");
    upstream.psql("postgres", "CHECKPOINT");
    let deadline = Instant::now() + Duration::from_secs(60);
    let on_new_timeline = "SELECT min_recovery_end_timeline FROM pg_control_recovery()";
    while cascaded.psql("postgres", &format!("CHECKPOINT; {on_new_timeline}")) != "2" {
        assert!(
            Instant::now() < deadline,
            "the cascaded standby did not follow timeline 2:\n{}",
            cascaded.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::remove_file(&marker).unwrap();

    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    assert!(
        err.contains(&format!(
            "standby {}:{} changed timelines during the backup (it started on timeline 1, and was on timeline 2 too)",
            cascaded.socket_dir.display(),
            cascaded.port
        )),
        "{err}"
    );
    assert!(src.labels().is_empty(), "the failed backup left a manifest");
}
