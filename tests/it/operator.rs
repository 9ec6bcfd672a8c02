//! Operator commands against real clusters: pitr, check, wal, configuration, aliases.

use std::fs;
use std::time::Duration;

use super::harness::*;
use super::setup::{stderr, Source};

/// A cluster with archiving off and an empty repository with its stanza created.
fn unarchived(name: &str) -> (Cluster, String) {
    let repo = work_dir(&format!("{name}-repo")).display().to_string();
    let cluster = Cluster::init(name, ClusterOptions::default());
    cluster.start();
    let out = pgward(
        &["--repo", &repo, "--stanza", "main", "stanza-create"],
        &cluster.env(),
    );
    assert_success(&out, "stanza-create");
    (cluster, repo)
}

fn run(cluster: &Cluster, repo: &str, args: &[&str]) -> std::process::Output {
    let mut full = vec!["--repo", repo, "--stanza", "main"];
    full.extend_from_slice(args);
    pgward(&full, &cluster.env())
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", stderr(out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn pitr_enable_then_restart_archives_and_disable_restores_the_old_settings() {
    let (cluster, repo) = unarchived("pitr-on");
    let before = cluster.psql(
        "postgres",
        "SELECT current_setting('archive_mode') || '|' || current_setting('archive_command')",
    );

    // Archiving off: check says so.
    let out = run(&cluster, &repo, &["check"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("archiving is off"),
        "{}",
        stderr(&out)
    );

    let out = run(&cluster, &repo, &["pitr", "enable"]);
    let text = assert_success(&out, "pitr enable");
    assert!(text.contains("restart PostgreSQL"), "{text}");
    let copies: Vec<String> = fs::read_dir(&cluster.data)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".pgward-"))
        .collect();
    assert!(
        copies
            .iter()
            .any(|c| c.starts_with("postgresql.conf.pgward-")),
        "no copy of postgresql.conf kept: {copies:?}"
    );
    cluster.stop();
    cluster.start();

    // Archiving works now: check forces a switch and sees the segment arrive.
    let out = run(&cluster, &repo, &["check"]);
    assert!(assert_success(&out, "check").contains("check passed"));
    let status = json(&run(
        &cluster,
        &repo,
        &["--output", "json", "pitr", "status"],
    ));
    assert_eq!(status["working"], true, "{status}");
    assert_eq!(status["archive_mode"], "on");
    assert!(status["archived_count"].as_i64().unwrap() >= 1);
    assert!(status["archive_command_problem"].is_null());

    assert_success(&run(&cluster, &repo, &["pitr", "disable"]), "pitr disable");
    cluster.stop();
    cluster.start();
    let after = cluster.psql(
        "postgres",
        "SELECT current_setting('archive_mode') || '|' || current_setting('archive_command')",
    );
    assert_eq!(after, before, "pitr disable must restore the old settings");
    let status = json(&run(
        &cluster,
        &repo,
        &["--output", "json", "pitr", "status"],
    ));
    assert_eq!(status["working"], false);
}

#[test]
fn check_names_a_command_that_archives_elsewhere_and_a_stanza_of_another_cluster() {
    let src = Source::start("check", 15);
    assert!(src.ok(&["check"]).contains("check passed"));
    let report: serde_json::Value =
        serde_json::from_str(&src.ok(&["--output", "json", "check"])).unwrap();
    assert_eq!(report["stanza"], "main");
    assert_eq!(report["segment"].as_str().unwrap().len(), 24);

    // The same cluster, checked against a stanza its archive_command does not feed.
    let repo = src.repo.display().to_string();
    assert_success(
        &pgward(
            &["--repo", &repo, "--stanza", "other", "stanza-create"],
            &src.cluster.env(),
        ),
        "stanza-create",
    );
    let out = pgward(
        &["--repo", &repo, "--stanza", "other", "check"],
        &src.cluster.env(),
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("archives into stanza \"main\", not \"other\""),
        "{}",
        stderr(&out)
    );

    // Another cluster against this stanza.
    let other = Cluster::init("check-other", ClusterOptions::default());
    other.start();
    let out = pgward(
        &["--repo", &repo, "--stanza", "main", "check"],
        &other.env(),
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("belongs to cluster"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn json_reports_parse_and_carry_their_documented_fields() {
    let src = Source::start("json", 15);
    let label = src.backup(&[]);
    src.archive_current_wal();
    let info = src.info_json();
    for field in [
        "stanza",
        "system_identifier",
        "pg_major",
        "backups",
        "archive",
        "recoverable_window",
    ] {
        assert!(!info[field].is_null(), "info lacks {field}: {info}");
    }
    for field in [
        "label",
        "type",
        "reference",
        "chain",
        "timeline",
        "start_time",
        "stop_time",
        "start_lsn",
        "stop_lsn",
        "database_size",
        "stored_size",
    ] {
        assert!(
            info["backups"][0].get(field).is_some(),
            "backup lacks {field}"
        );
    }
    let list: serde_json::Value =
        serde_json::from_str(&src.ok(&["--output", "json", "wal", "list"])).unwrap();
    let first = &list[0];
    for field in [
        "name",
        "kind",
        "timeline",
        "original_size",
        "stored_size",
        "compression",
        "archived_at",
    ] {
        assert!(
            first.get(field).is_some(),
            "wal list entry lacks {field}: {first}"
        );
    }
    let stats: serde_json::Value =
        serde_json::from_str(&src.ok(&["--output", "json", "wal", "stats"])).unwrap();
    assert!(stats["segments"].as_u64().unwrap() >= 2);
    assert!(stats["compression_ratio"].as_f64().unwrap() > 1.0);
    assert_eq!(stats["timelines"][0]["gaps"].as_array().unwrap().len(), 0);
    let plan: serde_json::Value = serde_json::from_str(&src.ok(&[
        "--output",
        "json",
        "expire",
        "--retain-full",
        "1",
        "--dry-run",
    ]))
    .unwrap();
    assert_eq!(plan["backups"].as_array().unwrap().len(), 0);
    let verify: serde_json::Value =
        serde_json::from_str(&src.ok(&["--output", "json", "verify"])).unwrap();
    assert_eq!(verify["problems"].as_array().unwrap().len(), 0);
    assert!(src.ok(&["wal", "list"]).contains("segment"));
    assert!(src.ok(&["info"]).contains(&label));
}

#[test]
fn configuration_precedence_is_flag_then_environment_then_file_and_bad_keys_are_named() {
    let src = Source::start("config", 15);
    let dir = work_dir("config-files");
    let config = dir.join("pgward.toml");
    fs::write(
        &config,
        format!(
            "[global]\nrepo = \"{}\"\ncompress = \"gzip\"\n\n[stanza.main]\ncompress-level = 1\n",
            src.repo.display()
        ),
    )
    .unwrap();
    let history = |n: u32| {
        let path = dir.join(format!("{n:08X}.history"));
        fs::write(&path, format!("1\t0/{n}000000\ttest\n")).unwrap();
        chown_pg(&dir);
        path.display().to_string()
    };
    let cfg = config.display().to_string();
    let push = |file: String, extra_env: &[(&str, &str)], flags: &[&str]| {
        let mut env = src.cluster.env();
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let mut args = vec!["--config", cfg.as_str(), "--stanza", "main"];
        args.extend_from_slice(flags);
        args.extend(["archive-push", file.as_str()]);
        assert_success(&pgward(&args, &env), "archive-push");
    };
    push(history(0x11), &[], &[]); // file: gzip
    push(history(0x12), &[("PGWARD_COMPRESS", "lz4")], &[]); // environment beats file
    push(
        history(0x13),
        &[("PGWARD_COMPRESS", "lz4")],
        &["--compress", "none"],
    ); // flag beats environment
    let stored: Vec<String> = fs::read_dir(src.repo.join("main/archive/history"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let ext = |tl: &str| {
        stored
            .iter()
            .find(|n| n.starts_with(tl) && !n.ends_with(".claim"))
            .map(|n| n.rsplit_once('.').map(|(_, e)| e.to_string()).unwrap())
            .unwrap()
    };
    assert_eq!(ext("00000011"), "gz");
    assert_eq!(ext("00000012"), "lz4");
    assert!(
        stored
            .iter()
            .find(|n| n.starts_with("00000013") && !n.ends_with(".claim"))
            .unwrap()
            .ends_with(|c: char| c.is_ascii_hexdigit()),
        "{stored:?}"
    );

    fs::write(&config, "[global]\ncompresion = \"zstd\"\n").unwrap();
    let out = pgward(
        &["--config", &cfg, "--stanza", "main", "info"],
        &src.cluster.env(),
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("unknown key \"compresion\"") && stderr(&out).contains(&cfg),
        "{}",
        stderr(&out)
    );
    fs::write(
        &config,
        format!(
            "[global]\nrepo = \"{}\"\njobs = \"many\"\n",
            src.repo.display()
        ),
    )
    .unwrap();
    let out = pgward(
        &["--config", &cfg, "--stanza", "main", "info"],
        &src.cluster.env(),
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("jobs must be a number") && stderr(&out).contains(&cfg),
        "{}",
        stderr(&out)
    );
}

#[test]
fn wal_g_style_aliases_work_as_archive_and_restore_commands_and_for_backups() {
    let repo = work_dir("alias-repo");
    let cmd = format!(
        "{} --repo {} --stanza main wal-push %p",
        pgward_bin().display(),
        repo.display()
    );
    let cluster = Cluster::init(
        "alias",
        ClusterOptions {
            archive_command: Some(cmd),
            ..Default::default()
        },
    );
    cluster.start();
    let r = repo.display().to_string();
    let run = |args: &[&str]| {
        let mut full = vec!["--repo", r.as_str(), "--stanza", "main"];
        full.extend_from_slice(args);
        pgward(&full, &cluster.env())
    };
    assert_success(&run(&["stanza-create"]), "stanza-create");
    cluster.psql(
        "postgres",
        "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g",
    );
    assert_success(&run(&["backup-push"]), "backup-push");
    let listed = assert_success(&run(&["backup-list"]), "backup-list");
    assert!(listed.contains("full"), "{listed}");
    cluster.psql(
        "postgres",
        "INSERT INTO t SELECT g FROM generate_series(1001, 1500) g",
    );
    let expected = cluster.content_checksum("postgres");
    let segment = cluster.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while cluster.psql(
        "postgres",
        "SELECT coalesce(left(last_archived_wal, 24), '') FROM pg_stat_archiver",
    ) < segment
    {
        assert!(
            std::time::Instant::now() < deadline,
            "wal-push did not archive"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let fetched = work_dir("alias-fetched").join(&segment);
    assert_success(
        &run(&["wal-fetch", &segment, fetched.to_str().unwrap()]),
        "wal-fetch",
    );
    assert_eq!(fs::metadata(&fetched).unwrap().len(), 16 << 20);

    // backup-fetch DIR LATEST restores; the restored cluster's restore_command brings the rest.
    let dir = work_dir("alias-restored-data").join("data");
    assert_success(
        &run(&["backup-fetch", dir.to_str().unwrap(), "LATEST"]),
        "backup-fetch",
    );
    let conf = dir.join("postgresql.auto.conf");
    let text = fs::read_to_string(&conf).unwrap();
    fs::write(&conf, text + "archive_mode = off\n").unwrap();
    let restored = Cluster::from_existing("alias-restored", 15, dir);
    restored.start();
    assert_eq!(
        restored.wait_for_recovery_end(Duration::from_secs(60)),
        RecoveryEnd::Promoted
    );
    assert_eq!(restored.content_checksum("postgres"), expected);
}

#[test]
fn failed_connections_name_their_cause_and_the_parameters_used() {
    let src = Source::start("conncause", 15);
    let with = |extra: &[(&str, &str)]| {
        let mut env = src.cluster.env();
        for (k, v) in extra {
            env.retain(|(name, _)| name != k);
            env.push((k.to_string(), v.to_string()));
        }
        let mut args: Vec<&str> = src.extra.iter().map(String::as_str).collect();
        args.extend(["--repo", &src.url, "--stanza", &src.stanza, "check"]);
        pgward(&args, &env)
    };
    let expect = |out: std::process::Output, code: i32, words: &[&str]| {
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{err}");
        for w in words {
            assert!(err.contains(w), "expected {w:?} in:\n{err}");
        }
    };
    let no_socket = work_dir("conncause-nosock");
    expect(
        with(&[("PGHOST", no_socket.to_str().unwrap())]),
        6,
        &["no server socket", ".s.PGSQL.", "host=", "port="],
    );
    // A TCP port on loopback that nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port().to_string();
    drop(closed);
    expect(
        with(&[("PGHOST", "127.0.0.1"), ("PGPORT", &closed_port)]),
        6,
        &["connection refused", &format!("port={closed_port}")],
    );
    expect(
        with(&[("PGUSER", "no_such_role")]),
        6,
        &[
            "authentication failed for user \"no_such_role\"",
            "user=no_such_role",
        ],
    );
    expect(
        with(&[("PGDATABASE", "no_such_db")]),
        6,
        &[
            "database \"no_such_db\" does not exist",
            "dbname=no_such_db",
        ],
    );
    // A listener that accepts and never answers: bounded by PGCONNECT_TIMEOUT.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port().to_string();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let held = std::thread::spawn(move || {
        let conn = silent.accept();
        let _ = finished.recv(); // hold the connection until pgward has given up
        drop(conn);
    });
    expect(
        with(&[
            ("PGHOST", "127.0.0.1"),
            ("PGPORT", &silent_port),
            ("PGCONNECT_TIMEOUT", "2"),
        ]),
        9,
        &["no answer from 127.0.0.1", "within 2 s"],
    );
    done.send(()).unwrap();
    held.join().unwrap();
}

/// Every entry below `dir` (itself included) that group or others can use, with its mode.
fn open_to_others(dir: &std::path::Path, found: &mut Vec<String>, names: &mut Vec<String>) {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::symlink_metadata(dir).unwrap();
    if meta.mode() & 0o077 != 0 {
        found.push(format!("{} {:o}", dir.display(), meta.mode() & 0o7777));
    }
    names.push(dir.file_name().unwrap().to_string_lossy().into_owned());
    if meta.is_dir() {
        for e in fs::read_dir(dir).unwrap().flatten() {
            open_to_others(&e.path(), found, names);
        }
    }
}

#[test]
fn a_repository_written_under_umask_022_is_closed_to_other_users() {
    let secret = work_dir("umask-secret");
    let pass = secret.join("pass");
    fs::write(&pass, "correct horse\n").unwrap();
    chown_pg(&secret);
    // A new path: pgward creates the repository directory itself.
    let repo = work_dir("umask-repo").join("repository");
    let options = [
        "--repo",
        repo.to_str().unwrap(),
        "--stanza",
        "main",
        "--cipher-pass-file",
        pass.to_str().unwrap(),
    ];
    let cluster = Cluster::init(
        "umask",
        ClusterOptions {
            archive_command: Some(format!(
                "{} {} archive-push %p",
                pgward_bin().display(),
                options.join(" ")
            )),
            ..Default::default()
        },
    );
    cluster.start();
    // As an operator's shell would run it (PostgreSQL's archiver runs with umask 077).
    let under_umask_022 = |args: &[&str]| {
        let bin = pgward_bin();
        let mut full = vec!["-c", "umask 022; exec \"$@\"", "sh", bin.to_str().unwrap()];
        full.extend_from_slice(&options);
        full.extend_from_slice(args);
        run_as_pg(std::path::Path::new("/bin/sh"), &full, &cluster.env())
    };
    assert_success(
        &under_umask_022(&["stanza-create", "--cipher", "aes-256-gcm"]),
        "stanza-create",
    );
    assert_success(&under_umask_022(&["backup"]), "backup");
    let files = work_dir("umask-files");
    fs::write(
        files.join("00000002.history"),
        "1\t0/5000000\tno recovery target specified\n",
    )
    .unwrap();
    chown_pg(&files);
    let history = files.join("00000002.history");
    assert_success(
        &under_umask_022(&["archive-push", history.to_str().unwrap()]),
        "archive-push",
    );

    let (mut open, mut names) = (Vec::new(), Vec::new());
    open_to_others(&repo, &mut open, &mut names);
    assert!(
        open.is_empty(),
        "open to group or others:\n{}",
        open.join("\n")
    );
    for kind in [
        "stanza.json",
        "keyfile.json",
        ".manifest",
        ".bundle",
        ".history-",
        "backup.lock",
    ] {
        assert!(
            names.iter().any(|n| n.contains(kind)),
            "no {kind} among {names:?}"
        );
    }

    // A repository left open (an operator's chmod, or an earlier version): check says so.
    use std::os::unix::fs::PermissionsExt;
    for dir in [repo.clone(), repo.join("main")] {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = under_umask_022(&["check"]);
    assert_success(&out, "check");
    assert!(
        stderr(&out).contains("open to other users"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_panic_in_a_backup_worker_exits_with_the_internal_code_and_leaves_no_backup() {
    let src = Source::start("backup-panic", 15);
    let mut args: Vec<&str> = src.extra.iter().map(String::as_str).collect();
    args.extend(["--repo", &src.url, "--stanza", &src.stanza, "backup"]);
    let mut env = src.cluster.env();
    env.push(("PGWARD_TEST_PANIC".into(), "backup".into()));
    let out = pgward(&args, &env);
    assert_eq!(out.status.code(), Some(10), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("pgward: error [internal]: PGWARD_TEST_PANIC=backup at src/backup/"),
        "{}",
        stderr(&out)
    );
    assert!(src.labels().is_empty(), "a backup that panicked is listed");
    // The process is gone with its lock: the next backup runs and verifies.
    src.backup(&[]);
    src.ok(&["verify"]);
}

/// Where `needle` starts in `text`, or a panic showing the text.
fn position(text: &str, needle: &str) -> usize {
    text.find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in:\n{text}"))
}

#[test]
fn command_line_mistakes_are_config_errors_in_pgwards_form_and_stop_recovery_in_archive_get() {
    let dir = work_dir("cli-mistakes");
    let config = dir.join("pgward.toml");
    fs::write(&config, "[global]\nlog-level = \"loud\"\n").unwrap();
    chown_pg(&dir);
    let config = config.display().to_string();
    // Fails with `code` and clap's `message` in pgward's form, with a hint; returns stderr.
    let rejects = |args: &[&str], env: &[(String, String)], code: i32, message: &str| {
        let mut full = vec!["--repo", "/nonexistent-repo", "--stanza", "main"];
        full.extend_from_slice(args);
        let out = pgward(&full, env);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(
            err.starts_with("pgward: error [config]: ")
                && err.lines().next().unwrap().contains(message),
            "{args:?}: {err}"
        );
        assert!(err.contains("\nHINT: "), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
        err
    };
    let err = rejects(
        &["restore", "--bogus"],
        &[],
        3,
        "unexpected argument '--bogus' found",
    );
    assert!(err.contains("`pgward restore --help`"), "{err}");
    let err = rejects(&["bakup"], &[], 3, "unrecognized subcommand 'bakup'");
    assert!(err.contains("'backup'"), "{err}");
    rejects(
        &["--log-level", "loud", "info"],
        &[],
        3,
        "invalid value 'loud' for '--log-level <LOG_LEVEL>' \
         [possible values: error, warn, info, debug, trace]",
    );
    let loud = [("PGWARD_LOG_LEVEL".to_string(), "loud".to_string())];
    rejects(&["info"], &loud, 3, "invalid value 'loud' for '--log-level");
    rejects(
        &["--config", &config, "info"],
        &[],
        3,
        "log-level must be one of error, warn, info, debug, trace, found \"loud\"",
    );
    // restore_command with a bad flag: above 125, recovery stops.
    rejects(
        &[
            "archive-get",
            "--bogus",
            "000000010000000000000001",
            "pg_wal/RECOVERYXLOG",
        ],
        &[],
        126,
        "unexpected argument '--bogus' found",
    );
    rejects(
        &["wal-fetch"],
        &[],
        126,
        "the following required arguments were not provided",
    );

    // Asking for help or the version is no mistake.
    for args in [
        &["--help"][..],
        &["--version"],
        &["restore", "--help"],
        &["archive-get", "--help"],
    ] {
        let text = assert_success(&pgward(args, &[]), &format!("pgward {args:?}"));
        assert!(text.contains("pgward"), "{text}");
    }
}

#[test]
fn restore_help_lists_its_own_options_first_and_pgdata_as_the_destination() {
    let help = assert_success(&pgward(&["restore", "--help"], &[]), "restore --help");
    let pgdata = position(&help, "--pgdata <DIR>");
    let set = position(&help, "--set <SET>");
    let archive_mode = position(&help, "--archive-mode");
    let repository = position(&help, "\nRepository:\n");
    let repo = position(&help, "--repo <REPO>");
    let log_level = position(&help, "--log-level");
    assert!(
        pgdata < set
            && set < archive_mode
            && archive_mode < repository
            && repository < repo
            && repo < log_level,
        "{help}"
    );
    assert!(help.contains("Where to restore to"), "{help}");
    assert!(!help.contains("asked from the server"), "{help}");
    // backup's --pgdata is the running cluster's, under the global options.
    let help = assert_success(&pgward(&["backup", "--help"], &[]), "backup --help");
    assert!(
        position(&help, "--type") < position(&help, "\nCluster:\n"),
        "{help}"
    );
    assert!(help.contains("asked from the server"), "{help}");
}

#[test]
fn completions_do_not_offer_internal_commands() {
    for shell in ["bash", "zsh", "fish"] {
        let script = assert_success(&pgward(&["completions", shell], &[]), shell);
        for internal in ["archive-push-worker", "archive-get-prefetch"] {
            assert!(!script.contains(internal), "{shell} offers {internal}");
        }
        assert!(script.contains("stanza-create"), "{shell}: {script}");
    }
    // They still run: pgward starts them itself.
    let out = pgward(&["archive-push-worker", "--help"], &[]);
    assert_success(&out, "archive-push-worker --help");
}

#[test]
fn backup_of_a_missing_or_unreadable_pgdata_says_which_with_its_documented_code() {
    use std::os::unix::fs::PermissionsExt;
    let src = Source::start("bad-pgdata", 15);
    let missing = work_dir("bad-pgdata-x").join("nothing-here");
    let err = src.fails(&["backup", "--pgdata", missing.to_str().unwrap()], 3);
    assert!(err.contains("does not exist"), "{err}");

    let empty = work_dir("bad-pgdata-empty");
    let err = src.fails(&["backup", "--pgdata", empty.to_str().unwrap()], 3);
    assert!(err.contains("is not a PostgreSQL data directory"), "{err}");

    // A directory this user may not read (as when run as another user than the owner).
    fs::set_permissions(&empty, fs::Permissions::from_mode(0o000)).unwrap();
    let err = src.fails(&["backup", "--pgdata", empty.to_str().unwrap()], 7);
    fs::set_permissions(&empty, fs::Permissions::from_mode(0o700)).unwrap();
    assert!(err.contains("pgward: error [io]: reading "), "{err}");
    assert!(err.contains("run pgward as the cluster's owner"), "{err}");
    assert!(src.labels().is_empty(), "{:?}", src.labels());
}

/// A damaged record of the last verify or drill is named (a warning, `damaged_records` in
/// JSON, a gauge) but fails neither `info` nor `metrics`: they go on as if it were absent.
#[test]
fn damaged_verify_and_drill_records_are_reported_and_fail_neither_info_nor_metrics() {
    let src = Source::start("damaged-records", 15);
    src.backup(&[]);
    src.ok(&["verify"]);
    let records = src.repo.join("main/records");
    let verify = records.join("last-verify.json");
    let mut bytes = fs::read(&verify).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    fs::write(&verify, bytes).unwrap();
    fs::write(records.join("last-drill.json"), b"{\"passed\": tru").unwrap();
    chown_pg(&records);

    let out = src.pgward(&["--output", "json", "info"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["last_drill"], serde_json::Value::Null, "{info:#}");
    assert_eq!(info["last_verify"], serde_json::Value::Null, "{info:#}");
    let damaged: Vec<&str> = info["damaged_records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["record"].as_str().unwrap())
        .collect();
    assert_eq!(damaged.len(), 2, "{info:#}");
    assert!(
        damaged
            .iter()
            .any(|r| r.ends_with("records/last-drill.json"))
            && damaged
                .iter()
                .any(|r| r.ends_with("records/last-verify.json")),
        "{info:#}"
    );
    assert!(stderr(&out).contains("last-drill.json"), "{}", stderr(&out));
    let text = src.ok(&["info"]);
    assert!(
        text.contains("DAMAGED record")
            && text.contains("last-drill.json")
            && text.contains("last-verify.json"),
        "{text}"
    );

    let out = src.pgward(&["metrics"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("pgward_records_damaged{stanza=\"main\"} 2\n"),
        "{text}"
    );
    assert!(text.contains("pgward_up{stanza=\"main\"} 1\n"), "{text}");
    assert!(!text.contains("pgward_verify_last_success"), "{text}");
    let warned = stderr(&out);
    assert!(
        warned.contains("last-verify.json") && warned.contains("last-drill.json"),
        "{warned}"
    );

    // The next verify replaces its record.
    src.ok(&["verify"]);
    let text = src.ok(&["metrics"]);
    assert!(
        text.contains("pgward_records_damaged{stanza=\"main\"} 1\n")
            && text.contains("pgward_verify_last_success{stanza=\"main\"} 1\n"),
        "{text}"
    );
    let info = src.info_json();
    assert_eq!(info["last_verify"]["passed"], true, "{info:#}");
    let text = src.ok(&["info"]);
    assert!(
        text.contains("last verify: ") && text.contains(" passed, "),
        "{text}"
    );
}
