//! The commands pgward writes for PostgreSQL run in the server's environment, not
//! pgward's: a passphrase pgward only had from its own environment must not end up
//! behind an archive_command or restore_command that cannot decrypt.

use std::fs;

use super::harness::*;
use super::setup::{stderr, Source};

/// An encrypted stanza whose archive_command carries `--cipher-pass-file`; returns the
/// source and the passphrase file.
fn encrypted(name: &str, pass: &str) -> (Source, String) {
    let dir = work_dir(&format!("{name}-secret"));
    let pass_file = dir.join("pass");
    fs::write(&pass_file, format!("{pass}\n")).unwrap();
    chown_pg(&dir);
    let pass_file = pass_file.display().to_string();
    let src = Source::start_full(
        name,
        ClusterOptions::default(),
        vec!["--cipher-pass-file".into(), pass_file.clone()],
        &["--cipher", "aes-256-gcm"],
    );
    (src, pass_file)
}

/// pgward with the source's repository and stanza but none of its `extra` options (no
/// passphrase file), and `env` added to the cluster's.
fn bare(src: &Source, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut full = vec!["--repo", &src.url, "--stanza", "main"];
    // An S3 run keeps the store's address in the configuration file.
    if let Some(i) = src.extra.iter().position(|e| e == "--config") {
        full.extend(["--config", &src.extra[i + 1]]);
    }
    full.extend_from_slice(args);
    let mut all = src.cluster.env();
    all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    pgward(&full, &all)
}

#[test]
fn pitr_enable_and_restore_refuse_a_passphrase_the_server_would_not_have() {
    let pass = "only in my shell";
    let (src, pass_file) = encrypted("srvenv", pass);
    src.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    src.backup(&[]);
    let before = src.sql("SHOW archive_command");

    // The passphrase only in pgward's environment: refused, nothing changed.
    let out = bare(&src, &["pitr", "enable"], &[("PGWARD_CIPHER_PASS", pass)]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("could not decrypt stanza \"main\"")
            && err.contains("PGWARD_CIPHER_PASS")
            && err.contains("--cipher-pass-file"),
        "{err}"
    );
    assert_eq!(src.sql("SHOW archive_command"), before);
    let copies = fs::read_dir(&src.cluster.data)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".pgward-"))
        .count();
    assert_eq!(copies, 0, "pitr enable touched the configuration");
    // And from a flag, the same.
    let out = bare(&src, &["--cipher-pass", pass, "pitr", "enable"], &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("--cipher-pass,"), "{}", stderr(&out));
    assert_eq!(src.sql("SHOW archive_command"), before);

    // restore refuses too, before writing anything.
    let dir = work_dir("srvenv-r").join("data");
    let dir_s = dir.display().to_string();
    let out = bare(
        &src,
        &["restore", "--pgdata", &dir_s],
        &[("PGWARD_CIPHER_PASS", pass)],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the restore_command pgward would write could not decrypt"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.join("PG_VERSION").exists(), "restore wrote files");

    // With the passphrase file, the command carries it: enabled, and archiving works.
    let out = bare(
        &src,
        &["--cipher-pass-file", &pass_file, "pitr", "enable"],
        &[],
    );
    assert_success(&out, "pitr enable --cipher-pass-file");
    let now = src.sql("SHOW archive_command");
    assert!(now.contains("--cipher-pass-file"), "{now}");
    src.archive_current_wal();
    assert!(src.ok(&["check"]).contains("check passed"));
}

#[test]
fn check_names_an_archive_command_that_cannot_decrypt() {
    let (src, _pass_file) = encrypted("srvcheck", "right passphrase");
    let wrong = work_dir("srvcheck-wrong").join("pass");
    fs::write(&wrong, "wrong passphrase\n").unwrap();
    chown_pg(wrong.parent().unwrap());
    let config = src
        .extra
        .iter()
        .position(|e| e == "--config")
        .map(|i| format!(" --config {}", src.extra[i + 1]))
        .unwrap_or_default();
    let command = |more: &str| {
        format!(
            "{}{config}{more} --repo {} --stanza main archive-push %p",
            pgward_bin().display(),
            src.url
        )
    };
    for (more, expected) in [
        ("", "names no passphrase"),
        (
            &*format!(" --cipher-pass-file {}", wrong.display()),
            "wrong passphrase",
        ),
    ] {
        src.sql(&format!(
            "ALTER SYSTEM SET archive_command = {}",
            sql_quote(&command(more))
        ));
        src.sql("SELECT pg_reload_conf()");
        let err = src.fails(&["check", "--archive-timeout", "20"], 3);
        assert!(
            err.contains("cannot decrypt stanza \"main\"") && err.contains(expected),
            "{err}"
        );
    }
}

#[test]
fn encryption_flags_on_an_unencrypted_stanza_and_a_missing_passphrase_file_exit_3() {
    let src = Source::start("srvflags", 15);
    let err = src.fails(&["--cipher-pass", "x", "info"], 3);
    assert!(err.contains("is not encrypted, but --cipher-pass"), "{err}");
    let out = bare(&src, &["info"], &[("PGWARD_CIPHER_PASS", "x")]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = src.fails(&["--cipher", "aes-256-gcm", "backup"], 3);
    assert!(err.contains("is not encrypted, but --cipher"), "{err}");
    // A new stanza with a passphrase but no --cipher: the forgotten option, not silence.
    let mut args: Vec<&str> = src.extra.iter().map(String::as_str).collect();
    args.extend([
        "--repo",
        &src.url,
        "--stanza",
        "other",
        "--cipher-pass",
        "x",
    ]);
    args.push("stanza-create");
    let out = pgward(&args, &src.cluster.env());
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = src.fails(&["--cipher-pass-file", "/nonexistent/pass", "info"], 3);
    assert!(
        err.contains("reading the passphrase file /nonexistent/pass"),
        "{err}"
    );
    // Without them, all is well.
    src.ok(&["info"]);
    // An archive_command written with a passphrase file for this unencrypted stanza
    // keeps archiving: PostgreSQL's commands warn, they do not stop archiving over it.
    let pass = work_dir("srvflags-secret").join("pass");
    fs::write(&pass, "x\n").unwrap();
    chown_pg(pass.parent().unwrap());
    let command = format!(
        "{} --cipher-pass-file {} {} --repo {} --stanza main archive-push %p",
        pgward_bin().display(),
        pass.display(),
        src.extra.join(" "),
        src.url
    );
    set_archive_command(&src, &command);
    src.archive_current_wal();
}

#[test]
fn check_reports_the_archivers_last_failure_instead_of_a_bare_timeout() {
    let src = Source::start("srvfail", 15);
    // Archives into this stanza, but every archive-push fails (a bad option).
    let command = format!(
        "{} --compress bogus {} --repo {} --stanza main archive-push %p",
        pgward_bin().display(),
        src.extra.join(" "),
        src.url
    );
    set_archive_command(&src, &command);
    let err = src.fails(&["check", "--archive-timeout", "15"], 9);
    assert!(
        err.contains("did not reach the archive: PostgreSQL's archive_command fails (last on"),
        "{err}"
    );
    assert!(err.contains("grep archive-push"), "{err}");
}

/// Sets the source's archive_command and reloads the configuration.
fn set_archive_command(src: &Source, command: &str) {
    src.sql(&format!(
        "ALTER SYSTEM SET archive_command = {}",
        sql_quote(command)
    ));
    src.sql("SELECT pg_reload_conf()");
}
