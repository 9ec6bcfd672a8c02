//! `pgward drill` proves a backup restores without touching the source: it restores into
//! scratch space, recovers, checks and removes the copy, and stores the outcome that
//! `info` shows. A damaged bundle or a false SQL check fails it with the problem named.

use std::path::Path;

use super::harness::*;
use super::setup::{stderr, Source};

fn lsn(s: &str) -> u64 {
    let (hi, lo) = s
        .split_once('/')
        .unwrap_or_else(|| panic!("not an LSN: {s:?}"));
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// Connections the source's log recorded (the source runs with log_connections).
fn connections(src: &Source) -> usize {
    std::fs::read_to_string(&src.cluster.log)
        .unwrap()
        .matches("connection received")
        .count()
}

fn source(name: &str) -> Source {
    let src = Source::start_with(
        name,
        ClusterOptions {
            extra_conf: vec!["log_connections = on".into()],
            ..Default::default()
        },
    );
    src.sql("CREATE TABLE t (id int PRIMARY KEY, note text)");
    src.sql("CREATE INDEX t_note ON t (note)");
    src.sql("INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 5000) g");
    src
}

fn drill(src: &Source, scratch: &Path, extra: &[&str]) -> std::process::Output {
    let scratch = scratch.display().to_string();
    let mut args = vec!["--output", "json", "drill", "--scratch", &scratch];
    args.extend_from_slice(extra);
    src.pgward(&args)
}

fn report(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "drill --output json: {e}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(out)
        )
    })
}

#[test]
fn drill_of_a_healthy_stanza_passes_reports_and_never_touches_the_source() {
    let src = source("drill-ok");
    let label = src.backup(&[]);
    src.sql("INSERT INTO t SELECT g, 'after backup' FROM generate_series(5001, 6000) g");
    src.archive_current_wal();
    let checks = work_dir("drill-ok-checks").join("checks.sql");
    std::fs::write(
        &checks,
        "-- the rows committed before the archived end are all there\n\
         SELECT count(*) = 6000 FROM t;\nSELECT count(*) = 1000 FROM t WHERE note = 'after backup';\n",
    )
    .unwrap();
    chown_pg(checks.parent().unwrap());
    let pid_before = std::fs::read_to_string(src.cluster.data.join("postmaster.pid")).unwrap();
    let rows_before = src.sql("SELECT count(*) FROM t");
    let scratch = work_dir("drill-ok-scratch").join("s");
    let connections_before = connections(&src);

    let out = drill(&src, &scratch, &["--check-sql", checks.to_str().unwrap()]);
    let r = report(&out);
    assert!(
        out.status.success(),
        "drill failed:\n{r:#}\n{}",
        stderr(&out)
    );
    assert_eq!(r["passed"], true, "{r:#}");
    assert_eq!(r["backup"], label.as_str());
    assert_eq!(r["target"], serde_json::Value::Null);
    for field in ["restore_seconds", "recovery_seconds", "wal_replayed_bytes"] {
        assert!(r[field].as_f64().is_some_and(|v| v > 0.0), "{field}: {r:#}");
    }
    let reached = lsn(r["reached_lsn"].as_str().unwrap());
    assert!(
        reached > lsn(r["backup_stop_lsn"].as_str().unwrap()),
        "{r:#}"
    );
    assert_eq!(
        r["wal_replayed_bytes"].as_u64().unwrap(),
        reached - lsn(r["backup_start_lsn"].as_str().unwrap())
    );
    assert!(r["reached_time"].is_string(), "the inserts' commit: {r:#}");
    let names: Vec<&str> = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["passed"], true, "{c}");
            c["name"].as_str().unwrap()
        })
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert_eq!(names[0], "pg_amcheck");
    assert!(
        names[1].starts_with("sql: -- the rows committed") && names[2].contains("'after backup'")
    );
    assert_eq!(names[3], "pg_checksums");

    // Nothing left behind; the source untouched: same postmaster, same rows, and no
    // connection from the drill in its log.
    assert!(!scratch.exists(), "scratch directory left behind");
    assert_eq!(
        connections(&src),
        connections_before,
        "the drill connected to the source"
    );
    assert_eq!(
        std::fs::read_to_string(src.cluster.data.join("postmaster.pid")).unwrap(),
        pid_before
    );
    assert_eq!(src.sql("SELECT count(*) FROM t"), rows_before);

    let info = src.info_json();
    assert_eq!(info["last_drill"]["passed"], true, "{info:#}");
    assert_eq!(info["last_drill"]["backup"], label.as_str());
    assert_eq!(info["last_drill"]["checks"].as_array().unwrap().len(), 4);
    let text = src.ok(&["info"]);
    assert!(
        text.contains(&format!("passed backup {label}, reached ")),
        "{text}"
    );
}

#[test]
fn drill_fails_naming_a_false_sql_check_an_unreached_target_and_a_flipped_bundle_byte() {
    let src = source("drill-bad");
    let label = src.backup(&[]);
    src.archive_current_wal();
    let dir = work_dir("drill-bad-checks");
    let checks = dir.join("checks.sql");
    std::fs::write(&checks, "SELECT true;\nSELECT count(*) = 0 FROM t;\n").unwrap();
    chown_pg(&dir);
    let scratch = work_dir("drill-bad-scratch").join("s");

    let out = drill(
        &src,
        &scratch,
        &[
            "--check-sql",
            checks.to_str().unwrap(),
            "--target",
            "immediate",
        ],
    );
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("pgward: error [corrupt]: drill of backup")
            && err.contains("sql: SELECT count(*) = 0 FROM t: returned f, not true"),
        "{err}"
    );
    let r = report(&out);
    assert_eq!(r["passed"], false);
    assert_eq!(r["target"], "--target immediate");
    let failed: Vec<&str> = r["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["passed"] == false)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["sql: SELECT count(*) = 0 FROM t"]);
    assert!(!scratch.exists());
    assert_eq!(src.info_json()["last_drill"]["passed"], false);

    // A target the archive never reaches: the scratch server stops, in its own words.
    let out = drill(
        &src,
        &scratch,
        &[
            "--target-time",
            "2999-01-01 00:00:00+00",
            "--target-unchecked",
        ],
    );
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("recovery ended before configured recovery target was reached"),
        "{err}"
    );
    assert_eq!(report(&out)["passed"], false);
    assert!(!scratch.exists());

    if src.url.contains("://") {
        return; // flips a byte in the local repository
    }

    // One byte flipped in the middle of a bundle of the backup.
    let bundles = src.repo.join("main/bundles");
    let bundle = std::fs::read_dir(&bundles)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&label))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("a bundle of the backup");
    let mut bytes = std::fs::read(&bundle).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&bundle, &bytes).unwrap();

    let out = drill(&src, &scratch, &[]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let err = stderr(&out);
    let name = bundle.file_name().unwrap().to_string_lossy().into_owned();
    assert!(err.contains("[corrupt]") && err.contains(&name), "{err}");
    let r = report(&out);
    assert_eq!(r["passed"], false);
    assert!(r["error"].as_str().unwrap().contains(&name), "{r:#}");
    assert!(!scratch.exists(), "scratch directory left behind");
    let last = &src.info_json()["last_drill"];
    assert_eq!(last["passed"], false);
    assert!(last["error"].as_str().unwrap().contains(&name), "{last}");
}

#[test]
fn drill_to_a_random_target_stops_inside_the_backup_window() {
    let src = source("drill-random");
    let label = src.backup(&[]);
    for round in 0..3 {
        src.sql(&format!("INSERT INTO t SELECT g, 'round {round}' FROM generate_series(1, 2000) g ON CONFLICT (id) DO UPDATE SET note = excluded.note"));
        src.archive_current_wal();
    }
    let info = src.info_json();
    let window_end = lsn(info["recoverable_window"]["latest_lsn"].as_str().unwrap());
    let backup_end = lsn(info["backups"][0]["stop_lsn"].as_str().unwrap());
    let scratch = work_dir("drill-random-scratch").join("s");

    let out = drill(&src, &scratch, &["--target", "random"]);
    let r = report(&out);
    assert!(out.status.success(), "{r:#}\n{}", stderr(&out));
    assert_eq!(r["backup"], label.as_str());
    let random = &r["random"];
    let seed = random["seed"].as_u64().unwrap();
    let point = lsn(random["lsn"].as_str().unwrap());
    assert_eq!(
        lsn(random["window_start_lsn"].as_str().unwrap()),
        backup_end
    );
    assert_eq!(lsn(random["window_end_lsn"].as_str().unwrap()), window_end);
    assert!(backup_end <= point && point < window_end, "{r:#}");
    // Recovery stopped right after the record drawn: inside the window, not at its end.
    let reached = lsn(r["reached_lsn"].as_str().unwrap());
    assert!(point < reached && reached <= window_end, "{r:#}");
    assert_eq!(
        r["target"],
        format!(
            "--target random --seed {seed} (--target-lsn {})",
            random["lsn"].as_str().unwrap()
        )
    );
    assert!(!scratch.exists());

    // The same seed draws the same point.
    let again = report(&drill(
        &src,
        &scratch,
        &["--target", "random", "--seed", &seed.to_string()],
    ));
    assert_eq!(again["random"]["lsn"], random["lsn"]);
    assert_eq!(again["reached_lsn"], r["reached_lsn"]);
}

#[test]
fn drill_run_as_root_gives_the_copy_to_an_unprivileged_user() {
    if !is_root() {
        return; // the root path needs root; the other drill tests cover the rest
    }
    let src = source("drill-root");
    src.backup(&[]);
    src.archive_current_wal();
    let scratch = work_dir("drill-root-scratch").join("s");
    let as_root = |extra: &[&str]| {
        let mut args = src.extra.clone();
        args.extend(
            [
                "--repo",
                &src.url,
                "--stanza",
                &src.stanza,
                "--output",
                "json",
                "drill",
            ]
            .map(String::from),
        );
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut cmd = std::process::Command::new(pgward_bin());
        cmd.args(&args).current_dir("/tmp");
        for v in ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGDATA"] {
            cmd.env_remove(v);
        }
        cmd.output().unwrap()
    };
    // No user to run the copy as: refused before anything is written.
    let out = as_root(&["--scratch", scratch.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("--run-as USER"), "{}", stderr(&out));
    assert!(!scratch.exists());

    let out = as_root(&[
        "--scratch",
        scratch.to_str().unwrap(),
        "--run-as",
        RUN_AS_USER,
        "--keep",
    ]);
    let r = report(&out);
    assert!(
        out.status.success() && r["passed"] == true,
        "{r:#}\n{}",
        stderr(&out)
    );
    assert_eq!(r["kept"], true);
    // Kept, stopped, and the copy's files are the user's, not root's.
    use std::os::unix::fs::MetadataExt;
    let (uid, _) = pg_owner().unwrap();
    for path in [
        "data",
        "data/global/pg_control",
        "data/postgresql.auto.conf",
        "sock",
        "server.log",
    ] {
        let meta = std::fs::metadata(scratch.join(path)).unwrap();
        assert_eq!(meta.uid(), uid, "{path} belongs to uid {}", meta.uid());
    }
    assert!(
        !scratch.join("data/postmaster.pid").exists(),
        "the scratch server still runs"
    );
    std::fs::remove_dir_all(&scratch).unwrap();

    // The record root wrote belongs to the repository's owner, like its directory: the
    // repository's user reads it and writes beside it afterwards.
    for path in ["main/records", "main/records/last-drill.json"] {
        let meta = std::fs::metadata(src.repo.join(path)).unwrap();
        assert_eq!(meta.uid(), uid, "{path} belongs to uid {}", meta.uid());
        assert_eq!(meta.mode() & 0o077, 0, "{path} is open to others");
    }
    assert_eq!(src.info_json()["last_drill"]["passed"], true);
    src.ok(&["verify"]);
    src.ok(&["metrics"]);
}

#[test]
fn drill_of_an_encrypted_stanza_gives_the_copy_a_passphrase_from_the_command_line() {
    // The passphrase only on pgward's command line: the copy's restore_command cannot
    // repeat it, so the drill hands it to the scratch server in its environment.
    let src = Source::start_full(
        "drill-enc",
        ClusterOptions::default(),
        vec!["--cipher-pass".into(), "drill-secret".into()],
        &["--cipher", "aes-256-gcm"],
    );
    src.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    src.backup(&[]);
    src.sql("INSERT INTO t SELECT g FROM generate_series(1001, 2000) g");
    src.archive_current_wal();
    let scratch = work_dir("drill-enc-scratch").join("s");
    let out = drill(&src, &scratch, &[]);
    let r = report(&out);
    assert!(
        out.status.success() && r["passed"] == true,
        "{r:#}\n{}",
        stderr(&out)
    );
    assert!(lsn(r["reached_lsn"].as_str().unwrap()) > lsn(r["backup_stop_lsn"].as_str().unwrap()));
    assert!(!scratch.exists());
}

#[test]
fn drill_of_a_backup_holding_a_damaged_page_fails_with_the_checkers_words() {
    let src = source("drill-page");
    src.sql(
        "CREATE TABLE victim AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 2000) g",
    );
    src.sql("CHECKPOINT");
    let path = src.sql("SELECT pg_relation_filepath('victim')");
    src.cluster.stop();
    // Damage the middle of page 1's tuple data: the backup stores it as it is (and says so).
    let file = src.cluster.data.join(&path);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[8192 + 4000] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    src.cluster.start();
    src.backup(&[]);
    src.archive_current_wal();
    let scratch = work_dir("drill-page-scratch").join("s");

    let out = drill(&src, &scratch, &["--target", "immediate"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let r = report(&out);
    let check = |name: &str| {
        r["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} check: {r:#}"))
            .clone()
    };
    let checksums = check("pg_checksums");
    assert_eq!(checksums["passed"], false);
    let words = checksums["detail"].as_str().unwrap();
    assert!(
        words.contains("checksum verification failed")
            && words.contains(&format!("{path}\", block 1")),
        "{words}"
    );
    let amcheck = check("pg_amcheck");
    assert_eq!(amcheck["passed"], false, "{amcheck}");
    assert!(
        amcheck["detail"].as_str().unwrap().contains("victim"),
        "{amcheck}"
    );
    assert!(stderr(&out).contains("drill of backup"), "{}", stderr(&out));
    assert!(!scratch.exists());
}

#[test]
fn an_interrupted_drill_stops_its_scratch_server_and_removes_the_copy() {
    let src = source("drill-int");
    src.backup(&[]);
    src.archive_current_wal();
    let dir = work_dir("drill-int-checks");
    let checks = dir.join("checks.sql");
    // Holds the drill with its server running for long after the server is up.
    std::fs::write(&checks, "SELECT pg_sleep(60) IS NOT NULL;\n").unwrap();
    chown_pg(&dir);
    let scratch = work_dir("drill-int-scratch").join("s");
    let scratch_s = scratch.display().to_string();
    let mut child = src.spawn(
        &[
            "drill",
            "--scratch",
            &scratch_s,
            "--target",
            "immediate",
            "--check-sql",
            checks.to_str().unwrap(),
        ],
        &[],
    );
    let pid_file = scratch.join("data/postmaster.pid");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let postmaster = loop {
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u32>().ok()));
        if let Some(pid) = pid {
            break pid;
        }
        assert!(
            std::time::Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "the scratch server never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    // SIGTERM to pgward itself: runuser (as root) would SIGKILL it 2 s after forwarding.
    let pgward_pid = if is_root() {
        let out = std::process::Command::new("pgrep")
            .args(["-P", &child.id().to_string(), "-f", "pgward"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    } else {
        child.id().to_string()
    };
    assert!(
        !pgward_pid.is_empty(),
        "no pgward process under {}",
        child.id()
    );
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pgward_pid])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert!(!status.success(), "the drill ended normally: {status}");
    assert!(
        !Path::new(&format!("/proc/{postmaster}")).exists()
            || std::fs::read_to_string(format!("/proc/{postmaster}/stat")).is_ok_and(|s| s
                .rsplit(')')
                .next()
                .unwrap()
                .trim_start()
                .starts_with('Z')),
        "the scratch server (pid {postmaster}) outlived the drill"
    );
    assert!(!scratch.exists(), "scratch directory left behind");
    let last = &src.info_json()["last_drill"];
    assert_eq!(last["passed"], false);
    assert!(
        last["error"].as_str().unwrap().contains("interrupted"),
        "{last}"
    );
}

/// 13 has no pg_amcheck (nor verify_heapam): the drill checks every btree index against
/// its heap through amcheck's SQL, says in the record what 13 cannot check, and a
/// damaged index still fails it. 13's build here has no pg_checksums: checksums off.
#[test]
#[ignore = "second tier: scripts/test.sh --all-versions"]
fn drill_of_postgres_13_checks_btree_indexes_through_sql_and_names_what_13_lacks() {
    let bin = pg_bin(13).expect("PostgreSQL 13: run scripts/install-test-deps.sh 13");
    let src = Source::start_with(
        "drill-13",
        ClusterOptions {
            major: 13,
            checksums: false,
            ..Default::default()
        },
    );
    src.sql("CREATE TABLE t (id int PRIMARY KEY, note text)");
    src.sql("CREATE INDEX t_note ON t (note)");
    src.sql("INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 5000) g");
    src.backup(&[]);
    src.archive_current_wal();
    let bin = bin.display().to_string();
    let scratch = work_dir("drill-13-scratch").join("s");

    let out = drill(&src, &scratch, &["--pg-bin", &bin]);
    let r = report(&out);
    assert!(out.status.success(), "{r:#}\n{}", stderr(&out));
    let checks = r["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 1, "no pg_checksums without checksums: {r:#}");
    assert_eq!(checks[0]["name"], "amcheck");
    assert_eq!(checks[0]["passed"], true);
    let detail = checks[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("not available on 13: pg_amcheck") && detail.contains("btree indexes in"),
        "{detail}"
    );
    assert!(!detail.starts_with("no corruption found: 0 "), "{detail}");

    // A flipped byte in a leaf of t_note: its heap tuple no longer finds its entry.
    let path = src.sql("SELECT pg_relation_filepath('t_note')");
    src.sql("CHECKPOINT");
    src.cluster.stop();
    let file = src.cluster.data.join(&path);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[8192 + 6000] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    src.cluster.start();
    src.backup(&[]);
    src.archive_current_wal();
    let out = drill(&src, &scratch, &["--pg-bin", &bin, "--target", "immediate"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let r = report(&out);
    let check = &r["checks"][0];
    assert_eq!(check["passed"], false, "{r:#}");
    let detail = check["detail"].as_str().unwrap();
    assert!(
        detail.contains("index public.t_note") && detail.contains("not available on 13"),
        "{detail}"
    );
    assert!(!scratch.exists());
}
