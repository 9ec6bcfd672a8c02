//! Proves the harness itself on real servers.
use super::harness::*;
use std::collections::HashSet;
use std::time::Duration;

/// pg_bin(major), or None after a notice. Fails instead when PGWARD_REQUIRE_VERSIONS
/// (e.g. "14,17") lists `major`, so CI can't silently skip a tier.
fn require(major: u32) -> Option<std::path::PathBuf> {
    let bin = pg_bin(major);
    if bin.is_none() {
        let required = std::env::var("PGWARD_REQUIRE_VERSIONS").unwrap_or_default();
        if required.split(',').any(|v| v.trim() == major.to_string()) {
            panic!("PostgreSQL {major} required by PGWARD_REQUIRE_VERSIONS but not installed: run scripts/install-test-deps.sh");
        }
        eprintln!("NOTICE: PostgreSQL {major} not installed, test does nothing (scripts/install-test-deps.sh {major})");
    }
    bin
}

/// init (with archiving) + start + psql + WAL switch archived + pgbench + stop on `major`.
fn smoke(major: u32) {
    if require(major).is_none() {
        return;
    }
    let archive = work_dir(&format!("smoke{major}-archive"));
    let c = Cluster::init(
        &format!("smoke{major}"),
        ClusterOptions {
            major,
            archive_command: Some(format!(
                "test ! -f {0}/%f && cp %p {0}/%f",
                archive.display()
            )),
            extra_conf: vec!["log_min_messages = info".into()],
            ..Default::default()
        },
    );
    c.start();
    assert!(c.is_running());
    let num: u32 = c
        .psql("postgres", "show server_version_num")
        .parse()
        .unwrap();
    assert_eq!(num / 10000, major);
    assert_eq!(c.psql("postgres", "show data_checksums"), "on");
    assert_eq!(
        c.psql(
            "postgres",
            "create table t(i int); insert into t select generate_series(1, 10);\n\
        select sum(i) from t; select 'two'"
        ),
        "55\ntwo"
    );
    // CREATE DATABASE can't run in a multi-statement string: proves statements are split.
    c.psql("postgres", "create database other; select 1");
    let seg = c.psql(
        "postgres",
        "select pg_walfile_name(pg_current_wal_lsn()); checkpoint; select pg_switch_wal()",
    );
    let seg = seg.lines().next().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !archive.join(&seg).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{seg} not archived:\n{}",
            c.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_success(&c.pgbench(&["-i", "-q", "-s", "1", "other"]), "pgbench -i");
    assert_success(&c.pgbench(&["-T", "1", "-c", "2", "other"]), "pgbench run");
    assert_eq!(
        c.psql("other", "select count(*) from pgbench_accounts"),
        "100000"
    );
    let e = c.try_psql("postgres", "select 1/0").unwrap_err();
    assert!(e.contains("division by zero"), "{e}");
    c.stop();
    assert!(!c.is_running());
    c.stop(); // no-op when stopped
}

#[test]
fn smoke_15() {
    smoke(15)
}
#[test]
#[ignore = "second tier: scripts/test.sh --all-versions"]
fn smoke_13() {
    smoke(13)
}
#[test]
fn smoke_14() {
    smoke(14)
}
#[test]
#[ignore = "second tier: scripts/test.sh --all-versions"]
fn smoke_16() {
    smoke(16)
}
#[test]
fn smoke_17() {
    smoke(17)
}
#[test]
#[ignore = "second tier: scripts/test.sh --all-versions"]
fn smoke_18() {
    smoke(18)
}

#[test]
fn no_checksums_and_failed_start() {
    let major = if require(18).is_some() { 18 } else { 15 }; // 18 defaults to checksums on
    let c = Cluster::init(
        "nocsum",
        ClusterOptions {
            major,
            checksums: false,
            ..Default::default()
        },
    );
    c.start();
    assert_eq!(c.psql("postgres", "show data_checksums"), "off");
    c.stop();
    c.append_conf(&["shared_buffers = 'bogus'"]);
    let err = c.try_start().unwrap_err();
    assert!(err.contains("shared_buffers"), "{err}");
}

#[test]
fn content_checksum_detects_one_changed_value() {
    let c = Cluster::init("checksum", ClusterOptions::default());
    c.start();
    let empty = c.content_checksum("postgres");
    c.psql(
        "postgres",
        "create table a(id int primary key, v text, n numeric);
        insert into a select g, 'v' || g, g / 7.0 from generate_series(1, 1000) g;
        create table \"B b\"(x jsonb); insert into \"B b\" values ('{\"k\": 1}'), (null);
        create unlogged table u(i int); insert into u values (1);",
    );
    let before = c.content_checksum("postgres");
    assert_ne!(before, empty);
    assert_eq!(before, c.content_checksum("postgres"), "deterministic");
    c.psql("postgres", "vacuum full a; cluster a using a_pkey"); // physical order changes nothing
    assert_eq!(before, c.content_checksum("postgres"));
    c.psql("postgres", "insert into u values (2)"); // unlogged: ignored
    assert_eq!(before, c.content_checksum("postgres"));
    c.psql("postgres", "update a set n = n + 0.0000001 where id = 500");
    let after = c.content_checksum("postgres");
    assert_ne!(before, after);
    c.psql("postgres", "update a set n = n - 0.0000001 where id = 500");
    assert_eq!(
        before,
        c.content_checksum("postgres"),
        "restored value, same checksum"
    );
    c.psql(
        "postgres",
        "update \"B b\" set x = '{\"k\": 2}' where x is not null",
    );
    assert_ne!(before, c.content_checksum("postgres"));
}

/// Base backup + WAL archive -> from_existing -> archive recovery beside the running source.
#[test]
fn from_existing_recovers_beside_source() {
    let archive = work_dir("fe-archive");
    let src = Cluster::init(
        "fe-src",
        ClusterOptions {
            archive_command: Some(format!("cp %p {}/%f", archive.display())),
            ..Default::default()
        },
    );
    src.start();
    src.psql(
        "postgres",
        "create table t as select g from generate_series(1, 1000) g",
    );
    let backup = work_dir("fe-backup").join("data");
    let out = run_as_pg(
        &client_bin("pg_basebackup"),
        &["-D", backup.to_str().unwrap(), "-X", "none", "-c", "fast"],
        &src.env(),
    );
    assert_success(&out, "pg_basebackup");
    let wanted_seg = src.psql(
        "postgres",
        "insert into t select generate_series(1001, 2000);
        select pg_walfile_name(pg_switch_wal())",
    );
    let want = src.content_checksum("postgres");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !archive.join(&wanted_seg).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "not archived: {wanted_seg}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let dst = Cluster::from_existing("fe-dst", 15, backup);
    assert_ne!(dst.port, src.port);
    dst.append_conf(&[
        "archive_mode = off".to_string(),
        format!("restore_command = 'cp {}/%f %p'", archive.display()),
    ]);
    std::fs::write(dst.data.join("recovery.signal"), "").unwrap();
    chown_pg(&dst.data.join("recovery.signal"));
    dst.start();
    assert_eq!(
        dst.wait_for_recovery_end(Duration::from_secs(60)),
        RecoveryEnd::Promoted
    );
    assert_eq!(dst.content_checksum("postgres"), want);
    assert!(src.is_running() && dst.is_running());
    drop(dst);
    assert_eq!(src.psql("postgres", "select count(*) from t"), "2000");
}

#[test]
fn recovery_target_shutdown_reports_stopped() {
    let archive = work_dir("rs-archive");
    let src = Cluster::init(
        "rs-src",
        ClusterOptions {
            archive_command: Some(format!("cp %p {}/%f", archive.display())),
            ..Default::default()
        },
    );
    src.start();
    let backup = work_dir("rs-backup").join("data");
    assert_success(
        &run_as_pg(
            &client_bin("pg_basebackup"),
            &["-D", backup.to_str().unwrap(), "-c", "fast"],
            &src.env(),
        ),
        "pg_basebackup",
    );
    let dst = Cluster::from_existing("rs-dst", 15, backup);
    dst.append_conf(&[
        "archive_mode = off".to_string(),
        format!("restore_command = 'cp {}/%f %p'", archive.display()),
        "recovery_target = 'immediate'".into(),
        "recovery_target_action = 'shutdown'".into(),
    ]);
    std::fs::write(dst.data.join("recovery.signal"), "").unwrap();
    chown_pg(&dst.data);
    let _ = dst.try_start(); // may fail: the server can exit before it accepts connections
    assert_eq!(
        dst.wait_for_recovery_end(Duration::from_secs(60)),
        RecoveryEnd::Stopped
    );
    assert!(
        dst.log_tail(50).contains("shutdown"),
        "{}",
        dst.log_tail(50)
    );
}

#[test]
fn ports_are_unique_across_threads() {
    let threads: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(|| (0..25).map(|_| next_port()).collect::<Vec<_>>()))
        .collect();
    let all: Vec<u16> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), all.len());
}

#[test]
fn pgward_runs_as_pg_user() {
    let bin = pgward_bin();
    assert!(bin.starts_with(IT_ROOT));
    assert_eq!(bin, pgward_bin());
    assert_success(&pgward(&["--help"], &[]), "pgward --help");
    let who = assert_success(
        &run_as_pg(std::path::Path::new("/usr/bin/id"), &["-un"], &[]),
        "id",
    );
    if is_root() {
        assert_eq!(who.trim(), RUN_AS_USER);
    }
    let d = work_dir("owner");
    let out = run_as_pg(
        std::path::Path::new("/usr/bin/touch"),
        &[d.join("f").to_str().unwrap()],
        &[],
    );
    assert_success(&out, "touch in work_dir as run-as user");
}
