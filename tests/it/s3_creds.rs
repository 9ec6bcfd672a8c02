//! Credentials that change under a running backup (issue 13): the shared profile's keys
//! are rotated while a backup runs, and the store stops accepting the old ones. moto takes
//! any keys, so a proxy in front of it plays IAM: it passes only requests signed with the
//! access key it currently accepts, and answers the others as S3 does (403 ExpiredToken
//! for a key it accepted before, InvalidAccessKeyId for one it never knew).

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::harness::*;
use super::s3::read_request;
use super::setup::{create_bucket, moto, stderr, Source};

#[derive(Default)]
struct Keys {
    accepted: String,
    expired: Vec<String>,
    /// Every request: its access key and whether it was passed on.
    seen: Vec<(String, bool)>,
}

struct KeyGate {
    port: u16,
    keys: Arc<Mutex<Keys>>,
}

impl KeyGate {
    fn start(target: u16, accepted: &str) -> KeyGate {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let keys = Arc::new(Mutex::new(Keys {
            accepted: accepted.into(),
            ..Default::default()
        }));
        let shared = keys.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let keys = shared.clone();
                std::thread::spawn(move || serve(client, target, &keys));
            }
        });
        KeyGate { port, keys }
    }

    /// From now on only `key` passes; the one accepted so far has expired.
    fn rotate_to(&self, key: &str) {
        let mut keys = self.keys.lock().unwrap();
        let old = std::mem::replace(&mut keys.accepted, key.into());
        keys.expired.push(old);
    }

    /// What the requests seen so far were signed with, and whether each passed.
    fn seen(&self) -> Vec<(String, bool)> {
        self.keys.lock().unwrap().seen.clone()
    }
}

fn serve(client: TcpStream, target: u16, keys: &Mutex<Keys>) {
    let mut reader = std::io::BufReader::new(client.try_clone().unwrap());
    let mut client = client;
    while let Some(request) = read_request(&mut reader) {
        let head = String::from_utf8_lossy(&request).into_owned();
        let key = head
            .split("Credential=")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_default()
            .to_string();
        let code = {
            let mut keys = keys.lock().unwrap();
            let code = if key == keys.accepted {
                None
            } else if keys.expired.contains(&key) {
                Some("ExpiredToken")
            } else {
                Some("InvalidAccessKeyId")
            };
            keys.seen.push((key, code.is_none()));
            code
        };
        match code {
            None => {
                use std::io::Read;
                let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)) else {
                    return;
                };
                if server.write_all(&request).is_err() {
                    return;
                }
                let mut answer = Vec::new();
                let _ = server.read_to_end(&mut answer);
                let _ = client.write_all(&answer);
                return; // read_request made it Connection: close
            }
            Some(code) => {
                let body = match head.starts_with("HEAD ") {
                    true => String::new(),
                    false => format!(
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code>\
                         <Message>refused by the test's key gate</Message></Error>"
                    ),
                };
                let answer = format!(
                    "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if client.write_all(answer.as_bytes()).is_err() {
                    return;
                }
            }
        }
    }
}

/// A profile file with one key pair; every key and secret the tests use has the same
/// length, so that a rotation can leave the file's size alone.
fn profile(key: &str) -> String {
    format!("[default]\naws_access_key_id = {key}\naws_secret_access_key = secret-{key}\n")
}

struct Setup {
    src: Source,
    gate: KeyGate,
    /// The shared credentials file the backups read.
    credentials: PathBuf,
    /// Repository through the gate, with no keys: credentials from the profile.
    gated_config: String,
    dir: PathBuf,
}

/// A cluster archiving into a moto bucket directly (static keys: its archive_command has
/// no profile), and a configuration that reaches the same bucket through a key gate that
/// accepts `key-one`, which the profile holds.
fn setup(name: &str) -> Setup {
    let port = moto();
    let bucket = name.replace('_', "-");
    create_bucket(port, &bucket);
    let dir = work_dir(&format!("{name}-conf"));
    let direct = dir.join("direct.toml");
    let common = "s3-region = \"us-east-1\"\ns3-uri-style = \"path\"\n";
    std::fs::write(
        &direct,
        format!("[global]\ns3-endpoint = \"http://127.0.0.1:{port}\"\n{common}s3-key = \"test\"\ns3-key-secret = \"test\"\n"),
    )
    .unwrap();
    let gate = KeyGate::start(port, "key-one");
    let gated = dir.join("gated.toml");
    std::fs::write(
        &gated,
        format!(
            "[global]\ns3-endpoint = \"http://127.0.0.1:{}\"\n{common}",
            gate.port
        ),
    )
    .unwrap();
    let credentials = dir.join("credentials");
    std::fs::write(&credentials, profile("key-one")).unwrap();
    chown_pg(&dir);
    let src = Source::start_at(
        name,
        ClusterOptions::default(),
        format!("s3://{bucket}/repo"),
        vec!["--config".into(), direct.display().to_string()],
        &[],
    );
    Setup {
        src,
        gate,
        credentials,
        gated_config: gated.display().to_string(),
        dir,
    }
}

impl Setup {
    /// pgward through the gate, with the profile's credentials only.
    fn gated(&self, args: &[&str], more_env: &[(&str, String)]) -> std::process::Command {
        let mut full = vec![
            "--config",
            &self.gated_config,
            "--repo",
            &self.src.url,
            "--stanza",
            "main",
        ];
        full.extend_from_slice(args);
        let mut env = self.src.cluster.env();
        env.push((
            "AWS_SHARED_CREDENTIALS_FILE".into(),
            self.credentials.display().to_string(),
        ));
        env.push((
            "AWS_CONFIG_FILE".into(),
            self.dir.join("no-config").display().to_string(),
        ));
        env.push(("PGWARD_TEST_PIECE_BYTES".into(), (2 << 20).to_string()));
        env.extend(more_env.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let mut cmd = pg_command(&pgward_bin(), &full, &env);
        for var in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
        ] {
            cmd.env_remove(var);
        }
        cmd
    }

    /// A backup through the gate that pauses once started; while it waits, the profile is
    /// rewritten to `new_key` and the gate told to accept `accept` only. The rewrite keeps
    /// the file's inode, size and modification time, so that pgward's periodic look at
    /// the file sees nothing: only S3's refusal can make it read the file again.
    fn backup_across_rotation(&self, new_key: &str, accept: &str) -> (Output, usize) {
        let marker = self.dir.join("paused");
        let child = self
            .gated(
                &["backup", "--jobs", "2"],
                &[("PGWARD_TEST_BACKUP_PAUSE", marker.display().to_string())],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !marker.exists() {
            assert!(Instant::now() < deadline, "the backup never started");
            std::thread::sleep(Duration::from_millis(20));
        }
        let before = self.gate.seen().len();
        assert!(
            before > 0,
            "the backup read the repository before its pause"
        );
        rewrite_keeping_stamp(&self.credentials, &profile(new_key));
        self.gate.rotate_to(accept);
        std::fs::remove_file(&marker).unwrap();
        (child.wait_with_output().unwrap(), before)
    }
}

/// Rewrites `path` in place with `text` of the same length and puts its modification
/// time back.
fn rewrite_keeping_stamp(path: &Path, text: &str) {
    let old = std::fs::metadata(path).unwrap();
    assert_eq!(old.len(), text.len() as u64, "same size");
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file.set_modified(old.modified().unwrap()).unwrap();
}

#[test]
fn s3_profile_keys_rotated_during_a_backup_are_read_again_when_refused_and_it_completes() {
    let s = setup("s3rotate");
    assert!(s
        .src
        .cluster
        .pgbench(&["-i", "-s", "2", "-q"])
        .status
        .success());
    let (out, before) = s.backup_across_rotation("key-two", "key-two");
    assert!(out.status.success(), "backup failed: {}", stderr(&out));
    let after = &s.gate.seen()[before..];
    let refused_old = after.iter().filter(|(k, ok)| k == "key-one" && !ok).count();
    let passed_new = after.iter().filter(|(k, ok)| k == "key-two" && *ok).count();
    eprintln!(
        "after the rotation: {} requests, {refused_old} refused with the old key, {passed_new} passed with the new",
        after.len()
    );
    assert!(
        refused_old >= 1,
        "no request was refused: the rotation was not tested"
    );
    assert!(
        passed_new >= 5,
        "the backup went on with the new key: {after:?}"
    );
    // Once renewed, the old key is not used again (requests signed before may trail).
    let first_new = after.iter().position(|(k, _)| k == "key-two").unwrap();
    let old_later = after[first_new..]
        .iter()
        .filter(|(k, _)| k == "key-one")
        .count();
    assert!(old_later <= 4, "the old key kept being used: {after:?}");
    assert!(after[after.len() - 3..]
        .iter()
        .all(|(k, ok)| k == "key-two" && *ok));

    let info = s.gated(&["info"], &[]).output().unwrap();
    assert!(info.status.success(), "{}", stderr(&info));
    s.src.ok(&["verify"]);
    assert_eq!(s.src.labels().len(), 1);
}

#[test]
fn s3_profile_rotated_to_a_key_the_store_refuses_fails_naming_the_profile_with_a_hint() {
    let s = setup("s3badkey");
    s.src
        .sql("CREATE TABLE t AS SELECT g, md5(g::text) FROM generate_series(1, 20000) g");
    // The store moves on to key-two; the profile gets key-thr, which it never knew.
    let (out, _) = s.backup_across_rotation("key-thr", "key-two");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    let credentials = s.credentials.display().to_string();
    assert!(
        err.contains("S3 rejected the credentials from AWS profile default")
            && err.contains(&credentials)
            && err.contains("InvalidAccessKeyId"),
        "{err}"
    );
    assert!(
        err.contains("HINT:") && err.contains("aws_access_key_id"),
        "{err}"
    );
    let seen = s.gate.seen();
    assert!(
        seen.iter().any(|(k, _)| k == "key-thr"),
        "the new key was tried: {seen:?}"
    );
    assert!(s.src.labels().is_empty(), "no backup listed");
}
